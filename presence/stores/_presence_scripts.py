"""Lua scripts of the Redis presence store: each one is atomic in one slot.

A user's tabs live in one hash in the user's slot (see :mod:`presence.keys`), so every
change to a tab is one script there, which also computes the user's status and their
member row in each room it touches, the way :mod:`presence.rooms` does. Rooms live in
their own slots: the rows a user script computes are applied to each room by
``APPLY`` (versioned, so that rows applied out of order never undo newer ones), and a
room's changes are turned into one numbered diff and published by ``FLUSH``.

The user hash's fields:

- ``t:<sid>``: a tab, ``<holder>|<gen>|<state o|a>|<leave reason>|<leave ms>``;
- ``r:<sid>:<room>``: its membership, ``<joined ms>|<meta order>|<leave reason>|<leave
  ms>|<meta JSON>``, the meta order from ``~m`` (the most recent meta of a user is the
  one with the highest, even within a millisecond);
- ``s:<room>``: since when the user is a member of the room (ms);
- ``e:<room>``: the row last sent to the room, so that only rows that changed are;
- ``~v``, ``~g``, ``~m``: the version of the rows, the generation of holds, the order
  of metas;
- ``~seen``: when the user was last present (ms), kept after they go offline.

A member row, as rooms keep it: ``<status>|<sessions>|<since ms>|<meta JSON>``.
"""

from __future__ import annotations

import re

from .. import keys
from ._webhook_scripts import WEBHOOK


def _with_keys(script: str) -> str:
    """``script`` with each ``@NAME@`` replaced by :mod:`presence.keys`'s ``NAME``:
    the TTLs a script sets live in keys.py with why, like every other."""
    return re.sub(r"@([A-Z_]+)@", lambda m: str(int(getattr(keys, m.group(1)))), script)


# ARGV[1] is the operation, ARGV[#ARGV] the user; KEYS[1] the user's hash, KEYS[2..]
# the webhook streams (none without webhooks), to which user.online and user.offline
# are added. Every operation returns
# {result, extra, version, room, row, reason, seen, room, row, reason, seen, ...}: the
# rooms whose row changed ('' row: the user is no longer a member), to be APPLYed.
USER = _with_keys(
    """
local key = KEYS[1]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
    + WEBHOOK
    + """
local keep_ms = tonumber(ARGV[2])
local user = ARGV[#ARGV]
local streams = {}
for i = 2, #KEYS do table.insert(streams, KEYS[i]) end
-- A user's status changes only here, once: they came (no tab before) or went (no tab
-- after, which a departure makes only after the grace), so a refresh or a blip inside
-- the grace tells nothing.
local function user_event(kind, fields)
  if #streams == 0 then return end
  local seq = webhook_seq(key, '~w', now)
  webhook_add(streams, webhook_event(kind, 'u:' .. user, seq, now,
    ',"user":' .. cjson.encode(user) .. fields))
end

local tabs, rooms, since, emitted, replay = {}, {}, {}, {}, {}
local flat = redis.call('HGETALL', key)
for i = 1, #flat, 2 do
  local f, v = flat[i], flat[i + 1]
  local kind = string.sub(f, 1, 2)
  if kind == 't:' then
    local holder, gen, state, lr, lt = string.match(v, '^([^|]*)|(%d+)|(%a)|([%a_]*)|(%d*)$')
    tabs[string.sub(f, 3)] = {holder = holder, gen = tonumber(gen), state = state, lr = lr, lt = lt}
  elseif kind == 'r:' then
    local sid, room = string.match(f, '^r:([^:]+):(.+)$')
    local joined, order, lr, lt, meta = string.match(v, '^(%d+)|(%d+)|([%a_]*)|(%d*)|(.*)$')
    rooms[sid] = rooms[sid] or {}
    rooms[sid][room] = {joined = joined, order = tonumber(order), lr = lr, lt = lt, meta = meta}
  elseif kind == 's:' then
    since[string.sub(f, 3)] = v
  elseif kind == 'e:' then
    emitted[string.sub(f, 3)] = v
  elseif kind == 'x:' then
    -- A reap's rows kept for its retry, forgotten once no retry can come.
    local at = tonumber(string.match(v, '^(%d+)|'))
    if now - at > @REAP_REPLAY_MS@ then
      redis.call('HDEL', key, f)
    else
      replay[string.sub(f, 3)] = v
    end
  end
end

local function went_offline(reason)
  if next(tabs) ~= nil then return end
  user_event('user.offline', ',"last_seen":' .. (redis.call('HGET', key, '~seen') or now)
    .. ',"reason":' .. cjson.encode(reason))
end

local function tab_value(tab)
  return tab.holder .. '|' .. tab.gen .. '|' .. tab.state .. '|' .. tab.lr .. '|' .. tab.lt
end
local function room_value(r)
  return r.joined .. '|' .. r.order .. '|' .. r.lr .. '|' .. r.lt .. '|' .. r.meta
end
local function status()
  local s = 'offline'
  for _, tab in pairs(tabs) do
    if tab.state == 'o' then return 'online' end
    s = 'away'
  end
  return s
end
local function user_rooms()
  local set = {}
  for sid, _ in pairs(tabs) do
    for room, _ in pairs(rooms[sid] or {}) do set[room] = true end
  end
  return set
end
local function seen(ms)
  local old = tonumber(redis.call('HGET', key, '~seen') or '0')
  if ms > old then redis.call('HSET', key, '~seen', ms) end
end

-- Recomputes the user's row in each room of `touched` (a set), sending those that
-- changed (all of them when `force`); `why` gives a removed member's reason and time.
local function emit(touched, why, force)
  local st = status()
  local out = {}
  for room, _ in pairs(touched) do
    local count, latest = 0, nil
    for sid, _ in pairs(tabs) do
      local r = rooms[sid] and rooms[sid][room]
      if r then
        count = count + 1
        if latest == nil or r.order > latest.order then latest = r end
      end
    end
    local row = ''
    if count > 0 then
      local s = since[room]
      if not s then
        s = tostring(now)
        since[room] = s
        redis.call('HSET', key, 's:' .. room, s)
      end
      row = st .. '|' .. count .. '|' .. s .. '|' .. latest.meta
    elseif since[room] then
      since[room] = nil
      redis.call('HDEL', key, 's:' .. room)
    end
    if force or row ~= (emitted[room] or '') then
      local reason, when = 'left', now
      if row == '' and why and why[room] then reason, when = why[room][1], why[room][2] end
      table.insert(out, {room, row, reason, when})
      if row == '' then
        emitted[room] = nil
        redis.call('HDEL', key, 'e:' .. room)
      else
        emitted[room] = row
        redis.call('HSET', key, 'e:' .. room, row)
      end
    end
  end
  return out
end

local function finish(result, extra, out)
  -- Nothing present: the hash stays only for ~seen (and versions), as long as a
  -- session lives; with a tab, for as long as it is there.
  if next(tabs) == nil then
    redis.call('PEXPIRE', key, keep_ms)
  else
    redis.call('PERSIST', key)
  end
  local reply = {result, extra, 0}
  if #out > 0 then
    reply[3] = redis.call('HINCRBY', key, '~v', 1)
    for _, e in ipairs(out) do
      table.insert(reply, e[1])
      table.insert(reply, e[2])
      table.insert(reply, e[3])
      table.insert(reply, tostring(e[4]))
    end
  end
  return reply
end

local function remove_tab(sid)
  redis.call('HDEL', key, 't:' .. sid)
  for room, _ in pairs(rooms[sid] or {}) do redis.call('HDEL', key, 'r:' .. sid .. ':' .. room) end
  tabs[sid] = nil
  rooms[sid] = nil
end

local sid = ARGV[3]
if op == 'hold' then
  -- ARGV: holder, state, force ('1': send every room's row)
  local holder, state, force = ARGV[4], ARGV[5], ARGV[6] == '1'
  local gen = redis.call('HINCRBY', key, '~g', 1)
  local came = next(tabs) == nil
  tabs[sid] = {holder = holder, gen = gen, state = state, lr = '', lt = ''}
  redis.call('HSET', key, 't:' .. sid, tab_value(tabs[sid]))
  local out = emit(user_rooms(), nil, force)
  if came then user_event('user.online', ',"status":"' .. status() .. '"') end
  return finish('ok', gen, out)
elseif op == 'state' then
  -- ARGV: holder, state
  local tab = tabs[sid]
  if not tab or tab.holder ~= ARGV[4] or tab.state == ARGV[5] then return finish('same', 0, {}) end
  tab.state = ARGV[5]
  redis.call('HSET', key, 't:' .. sid, tab_value(tab))
  return finish('ok', 0, emit(user_rooms(), nil, false))
elseif op == 'release' then
  -- ARGV: holder, gen, reason. Returns the time it started leaving.
  local tab = tabs[sid]
  if not tab or tab.holder ~= ARGV[4] or tab.gen ~= tonumber(ARGV[5]) then
    return finish('other', 0, {})
  end
  if tab.lr == '' then
    tab.lr, tab.lt = ARGV[6], tostring(now)
    redis.call('HSET', key, 't:' .. sid, tab_value(tab))
  end
  return finish('ok', tab.lt, {})
elseif op == 'depart' then
  -- ARGV: since (ms): what started leaving at or before it goes.
  local cutoff = tonumber(ARGV[4])
  local tab = tabs[sid]
  if not tab then return finish('none', 0, {}) end
  local touched, why = {}, {}
  if tab.lr ~= '' and tonumber(tab.lt) <= cutoff then
    for room, r in pairs(rooms[sid] or {}) do
      touched[room] = true
      -- The first of the reasons it had to go: its own leaving, or the tab's.
      if r.lr ~= '' and tonumber(r.lt) <= tonumber(tab.lt) then
        why[room] = {r.lr, r.lt}
      else
        why[room] = {tab.lr, tab.lt}
      end
    end
    seen(tonumber(tab.lt))
    remove_tab(sid)
    went_offline(tab.lr)
    for room, _ in pairs(user_rooms()) do touched[room] = true end
  else
    for room, r in pairs(rooms[sid] or {}) do
      if r.lr ~= '' and tonumber(r.lt) <= cutoff then
        touched[room] = true
        why[room] = {r.lr, r.lt}
        seen(tonumber(r.lt))
        rooms[sid][room] = nil
        redis.call('HDEL', key, 'r:' .. sid .. ':' .. room)
      end
    end
  end
  return finish('ok', 0, emit(touched, why, false))
elseif op == 'join' then
  -- ARGV: room, meta, max rooms. Result: joined | updated | full | no_tab.
  local room, meta, max = ARGV[4], ARGV[5], tonumber(ARGV[6])
  if not tabs[sid] then return finish('no_tab', 0, {}) end
  rooms[sid] = rooms[sid] or {}
  local r = rooms[sid][room]
  local result = 'joined'
  if not r then
    local count = 0
    for _, other in pairs(rooms[sid]) do if other.lr == '' then count = count + 1 end end
    if count >= max then return finish('full', 0, {}) end
    r = {joined = tostring(now), order = 0, lr = '', lt = '', meta = meta}
  elseif r.lr ~= '' then
    r.meta, r.lr, r.lt = meta, '', ''
  else
    r.meta = meta
    result = 'updated'
  end
  r.order = redis.call('HINCRBY', key, '~m', 1)
  rooms[sid][room] = r
  redis.call('HSET', key, 'r:' .. sid .. ':' .. room, room_value(r))
  return finish(result, 0, emit({[room] = true}, nil, false))
elseif op == 'update' then
  -- ARGV: room, meta
  local room = ARGV[4]
  local r = rooms[sid] and rooms[sid][room]
  if not tabs[sid] or not r or r.lr ~= '' then return finish('none', 0, {}) end
  r.meta, r.order = ARGV[5], redis.call('HINCRBY', key, '~m', 1)
  redis.call('HSET', key, 'r:' .. sid .. ':' .. room, room_value(r))
  return finish('ok', 0, emit({[room] = true}, nil, false))
elseif op == 'leave' then
  -- ARGV: room, reason. Returns the time it started leaving.
  local room = ARGV[4]
  local r = rooms[sid] and rooms[sid][room]
  if not tabs[sid] or not r or r.lr ~= '' then return finish('none', 0, {}) end
  r.lr, r.lt = ARGV[5], tostring(now)
  redis.call('HSET', key, 'r:' .. sid .. ':' .. room, room_value(r))
  return finish('ok', r.lt, {})
elseif op == 'reap' then
  -- ARGV[3] is the holder here; ARGV[4] its last renewal (ms). Every room of the user
  -- is sent, whatever was sent before: the dead process may have died between a
  -- user script and its APPLY.
  local holder, renewed = ARGV[3], ARGV[4]
  if renewed == '0' or renewed == '' then renewed = tostring(now) end
  local touched, why = user_rooms(), {}
  local gone, last_reason = {}, 'node_down'
  for s, tab in pairs(tabs) do
    if tab.holder == holder then
      table.insert(gone, s)
      if tab.lr ~= '' then last_reason = tab.lr end
      for room, r in pairs(rooms[s] or {}) do
        -- What was leaving already keeps the first reason it had to go.
        if r.lr ~= '' and (tab.lr == '' or tonumber(r.lt) <= tonumber(tab.lt)) then
          why[room] = {r.lr, r.lt}
        elseif tab.lr ~= '' then why[room] = {tab.lr, tab.lt}
        else why[room] = {'node_down', renewed} end
      end
      seen(tonumber(tab.lt ~= '' and tab.lt or renewed))
      remove_tab(s)
    end
  end
  if #gone == 0 then
    -- Reaped already, by a script whose reply may never have reached the reaper (a
    -- timeout, Redis gone meanwhile): the same reply again, its version unchanged,
    -- so that rows already applied change nothing and a newer row is not undone.
    local kept = replay[holder]
    if kept then return cjson.decode(string.match(kept, '^%d+|(.*)$')) end
    return finish('none', 0, {})
  end
  went_offline(last_reason)
  -- The sessions reaped, so that their records are marked disconnected.
  local reply = finish('ok', table.concat(gone, ','), emit(touched, why, true))
  redis.call('HSET', key, 'x:' .. holder, now .. '|' .. cjson.encode(reply))
  return reply
elseif op == 'resend' then
  -- Every row sent again, to each room the user is in and each they were last sent
  -- to: a call of theirs that outlived its bound may have run here, its rows recorded
  -- as sent (e:<room>), without the APPLYs that take them to the rooms.
  local touched = user_rooms()
  for room, _ in pairs(emitted) do touched[room] = true end
  return finish('ok', 0, emit(touched, nil, true))
elseif op == 'user' then
  -- Returns {status, sessions, last seen ms ('' none), room, room, ...}.
  local count = 0
  for _, _ in pairs(tabs) do count = count + 1 end
  local out = {status(), count, redis.call('HGET', key, '~seen') or ''}
  if count > 0 then out[3] = tostring(now) end
  for room, _ in pairs(user_rooms()) do table.insert(out, room) end
  return out
elseif op == 'rooms' then
  local out = {}
  for room, r in pairs(rooms[sid] or {}) do
    if tabs[sid] and r.lr == '' then table.insert(out, room) end
  end
  return out
end
return redis.error_reply('unknown presence operation ' .. tostring(op))
"""
)

# KEYS: the room's m, u, v, t, d, w, q. ARGV: then for each row in turn: user, version,
# row ('' to remove), reason, last seen ms. Applies each row newer than the one the room
# has for its user, remembering the member as published before the first change since
# the last flush. Returns 1 when anything changed (a flush is due).
APPLY = _with_keys(
    """
local m, u, v, tomb, d, w, q = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', q) == 0 then redis.call('SET', q, now) end
-- Tombstones (versions of members gone) outlive any row still on its way.
local old = redis.call('ZRANGEBYSCORE', tomb, '-inf', now - @TOMBSTONE_MS@, 'LIMIT', 0, 32)
for _, user in ipairs(old) do
  redis.call('HDEL', v, user)
  redis.call('ZREM', tomb, user)
end
local changed = 0
for i = 1, #ARGV, 5 do
  local user, version, row = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local reason, seen = ARGV[i + 3], ARGV[i + 4]
  local stored = tonumber(redis.call('HGET', v, user) or '0')
  if version > stored then
    redis.call('HSET', v, user, version)
    local current = redis.call('HGET', m, user) or ''
    if current ~= row then
      if redis.call('HEXISTS', d, user) == 0 then redis.call('HSET', d, user, current) end
      if row == '' then
        redis.call('HDEL', m, user)
        redis.call('ZREM', u, user)
        redis.call('ZADD', tomb, now, user)
        redis.call('HSET', w, user, reason .. '|' .. seen)
      else
        redis.call('HSET', m, user, row)
        redis.call('ZADD', u, 0, user)
        redis.call('ZREM', tomb, user)
        redis.call('HDEL', w, user)
      end
      changed = 1
    end
  end
end
if redis.call('HLEN', m) == 0 then
  redis.call('PEXPIRE', q, @EMPTY_ROOM_SEQ_MS@)
else
  redis.call('PERSIST', q)
end
redis.call('PEXPIRE', v, @ROOM_VERSIONS_MS@)
redis.call('PEXPIRE', tomb, @ROOM_VERSIONS_MS@)
return changed
"""
)

# KEYS: as APPLY, then (with webhooks) the room's webhook seq and the webhook streams.
# ARGV: room, channel, publish command (PUBLISH, or SPUBLISH on a cluster). Publishes the
# room's changes since its last flush as one diff with the next seq (see presence.events
# for its form) and returns it; false when nothing changed. The same diff's joins and
# leaves are the webhook's member.joined and member.left, and a room that had no member
# before it or has none after it room.occupied or room.vacated: a flush is once a room
# and window, by one process, so each is added once.
FLUSH = _with_keys(
    WEBHOOK
    + """
local m, u, v, tomb, d, w, q = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local room, channel, command = ARGV[1], ARGV[2], ARGV[3]
local dirty = redis.call('HGETALL', d)
if #dirty == 0 then return false end
local function row_json(user, row)
  local status, sessions, since, meta = string.match(row, '^(%a+)|(%d+)|(%d+)|(.*)$')
  return '[' .. cjson.encode(user) .. ',"' .. status .. '",' .. sessions .. ','
    .. meta .. ',' .. since .. ']'
end
local joins, updates, leaves = {}, {}, {}
local told = {}
-- A page read inside the window showed what was in m then, so a user that joined and
-- left in it is a leave (a watcher synced in between holds them). A row changed and
-- changed back is nothing, as the rules want of a status that flickered (such a watcher
-- keeps the row between until the member's next change). Webhooks tell what watchers
-- were told before: only real joins and leaves.
local unannounced = 0
for i = 1, #dirty, 2 do
  local user, before = dirty[i], dirty[i + 1]
  local after = redis.call('HGET', m, user) or ''
  if before == '' and after ~= '' then
    table.insert(joins, row_json(user, after))
    local status, sessions, since, meta = string.match(after, '^(%a+)|(%d+)|(%d+)|(.*)$')
    table.insert(told, {'member.joined', ',"user":' .. cjson.encode(user) .. ',"status":"'
      .. status .. '","sessions":' .. sessions .. ',"meta":' .. meta})
  elseif after == '' then
    local why = redis.call('HGET', w, user) or 'left|0'
    local reason, seen = string.match(why, '^([%a_]+)|(%d+)$')
    table.insert(leaves, '[' .. cjson.encode(user) .. ',"' .. reason .. '",' .. seen .. ']')
    if before ~= '' then
      table.insert(told, {'member.left', ',"user":' .. cjson.encode(user) .. ',"reason":"'
        .. reason .. '","last_seen":' .. seen})
    else
      unannounced = unannounced + 1
    end
  elseif before ~= after then
    table.insert(updates, row_json(user, after))
  end
end
redis.call('DEL', d, w)
if #joins + #updates + #leaves == 0 then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', q) == 0 then redis.call('SET', q, now) end
local seq = redis.call('INCR', q)
local count = redis.call('HLEN', m)
local diff = '{"r":' .. cjson.encode(room) .. ',"q":' .. seq .. ',"c":' .. count
  .. ',"j":[' .. table.concat(joins, ',') .. '],"u":[' .. table.concat(updates, ',')
  .. '],"l":[' .. table.concat(leaves, ',') .. ']}'
redis.call(command, channel, diff)
if #KEYS >= 9 then
  local e = KEYS[8]
  local streams = {}
  for i = 9, #KEYS do table.insert(streams, KEYS[i]) end
  local before = count - #joins + #leaves - unannounced
  if before == 0 and count > 0 then table.insert(told, 1, {'room.occupied', ''}) end
  if before > 0 and count == 0 then table.insert(told, {'room.vacated', ''}) end
  local scope = 'r:' .. room
  for _, ev in ipairs(told) do
    local n = webhook_seq(e, nil, now)
    webhook_add(streams, webhook_event(ev[1], scope, n, now,
      ',"room":' .. cjson.encode(room) .. ev[2] .. ',"count":' .. count))
  end
  if count == 0 then redis.call('PEXPIRE', e, @EMPTY_ROOM_SEQ_MS@) else redis.call('PERSIST', e) end
end
if count == 0 then
  redis.call('DEL', m, u)
  redis.call('PEXPIRE', q, @EMPTY_ROOM_SEQ_MS@)
end
return diff
"""
)

# KEYS: the room's m, u, q. ARGV: the cursor (the last user of the previous page, or
# ''), the page's size. Returns {seq, count, next user or '', user, row, user, row...}.
ROOM = _with_keys(
    """
local m, u, q = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = redis.call('GET', q)
if not seq then
  -- A room nobody is in yet: its numbering starts now, and is kept (EMPTY_ROOM_SEQ_MS), so that a
  -- watcher and the room's first diff agree.
  seq = tostring(now)
  redis.call('SET', q, seq, 'PX', @EMPTY_ROOM_SEQ_MS@)
end
local limit = tonumber(ARGV[2])
local start = '-'
if ARGV[1] ~= '' then start = '(' .. ARGV[1] end
local users = redis.call('ZRANGE', u, start, '+', 'BYLEX', 'LIMIT', 0, limit + 1)
local out = {seq, redis.call('HLEN', m), ''}
local n = math.min(#users, limit)
for i = 1, n do
  local row = redis.call('HGET', m, users[i])
  if row then
    table.insert(out, users[i])
    table.insert(out, row)
  end
end
if #users > limit then out[3] = users[limit] end
return out
"""
)

# KEYS: the leases' expiry zset, renewal hash, reaped zset. ARGV: holder, ttl ms.
# Returns 1, or 0 when the holder was reaped (it must hold its tabs again, renamed).
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], now)
return 1
"""

# KEYS: expiry zset, renewal hash, reaped zset. ARGV: the claimer, how long a claim
# holds (ms). Returns {holder, last renewal ms, ...} for the holders whose lease lapsed,
# each claimed for the caller (SET NX of <reaped zset>:claim:<holder>), so that one
# survivor reaps each; a claim lapses so another takes over if the reaper dies too.
LAPSED = _with_keys(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Reaped holders are remembered long enough for one cut off to come back.
local forgotten = redis.call(
  'ZRANGEBYSCORE', KEYS[3], '-inf', now - @REAPED_MEMORY_MS@, 'LIMIT', 0, 64)
for _, holder in ipairs(forgotten) do redis.call('ZREM', KEYS[3], holder) end
local out = {}
for _, holder in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 64)) do
  if redis.call('SET', KEYS[3] .. ':claim:' .. holder, ARGV[1], 'NX', 'PX', ARGV[2]) then
    table.insert(out, holder)
    table.insert(out, redis.call('HGET', KEYS[2], holder) or tostring(now))
  end
end
return out
"""
)

# KEYS: expiry zset, renewal hash, reaped zset. ARGV: holder, '1' to fence it only if its
# lease is still lapsed. Fences the holder before its tabs are reaped: from then on its
# RENEW answers 0, so a process that was only stalled or cut off learns it was taken for
# dead and holds its tabs again under a new name, instead of renewing a lease while its
# tabs are being removed. A holder that renewed since it was found lapsed is alive: 0,
# and it is not reaped. Returns 1 when the holder is fenced (or was already).
FENCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 1 end
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[2] == '1' and expiry and tonumber(expiry) > now then return 0 end
redis.call('ZADD', KEYS[3], now, ARGV[1])
return 1
"""

# KEYS: expiry zset, renewal hash, reaped zset. ARGV: holder. The holder is reaped.
REAPED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('DEL', KEYS[3] .. ':claim:' .. ARGV[1])
return 1
"""
