"""Lua scripts of the Redis store: each store operation is one atomic round trip.

Every script takes "now" from Redis's own ``TIME`` so that processes whose clocks
disagree still agree on last_seen and expiry.

A session value is ``<created ms>|<deadline ms or empty>|<transport><state>|<data>``:
one letter each for transport (w, h, n) and state (a, y, d), data as JSON or empty.
It is edited with ``string.match`` rather than cjson, which would turn ``[]`` into ``{}``.

A user's sessions live in two places (see :mod:`presence.keys`): at most one in the
user's lone slot, whose value is ``<sid>|<last_seen ms>|<session value>``, and the
others each in a key of its own, indexed by the user's sorted set. A script looks an id
up in the slot first (by the id it stores), then under its own key.
"""

from __future__ import annotations

from .. import keys
from ._webhook_scripts import WEBHOOK

# Shared preamble: NOW in ms, and helpers.
_PRELUDE = (
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
    + WEBHOOK
    + """local function parse(v)
  return string.match(v, '^(%d+)|(%d*)|(.)(.)|(.*)$')
end
-- The lone slot's session: its id, last_seen and value; nil when the slot is free.
local function lone(slot)
  local v = redis.call('GET', slot)
  if not v then return nil end
  return string.match(v, '^([^|]*)|(%d+)|(.*)$')
end
-- With pcall: a script is not rolled back, so a PUBLISH that an ACL refuses after the
-- write would fail a write that already happened. Unannounced, the session's sockets
-- close on their process's next refresher tick, which finds the session gone.
-- `channel` is the ended channel, then the webhook streams (one a line, none without
-- webhooks), to each of which the end is added as a session.ended event, numbered in
-- the user's seq (their tabs hash, beside `slot`); on a cluster ('@outbox') to the
-- user's outbox beside `slot` instead. Neither is among the script's KEYS: legal on a
-- single Redis, and on a cluster for keys of the script's own slot, as these are.
local function ended(channel, user, sid, reason, slot)
  if channel == '' then return end
  local streams = {}
  for part in string.gmatch(channel, '[^\\n]+') do table.insert(streams, part) end
  redis.pcall('PUBLISH', streams[1], cjson.encode({u = user, s = sid, r = reason}))
  if #streams > 1 then
    table.remove(streams, 1)
    -- On a cluster: the user's outbox, in this slot (see presence.webhooks).
    if streams[1] == '@outbox' then streams = {string.sub(slot, 1, #slot - 3) .. 'wh'} end
    local tabs = string.sub(slot, 1, #slot - 3) .. 'tabs'
    local fresh = redis.call('EXISTS', tabs) == 0
    local seq = webhook_seq(tabs, '~w', now)
    if fresh then redis.call('PEXPIRE', tabs, """
    + str(keys.WEBHOOK_USER_SEQ_MS)
    + """) end
    webhook_add(streams, webhook_event('session.ended', 'u:' .. user, seq, now,
      ',"user":' .. cjson.encode(user) .. ',"session_id":' .. cjson.encode(sid)
      .. ',"reason":' .. cjson.encode(reason)))
  end
end
local function push_index_ttl(idx, ttl)
  if redis.call('PTTL', idx) < ttl then redis.call('PEXPIRE', idx, ttl) end
end
"""
)

# Room for one more session of a user at the cap (see CREATE): deletes the user's least
# recently seen sessions that no socket holds open, announcing each as 'replaced', until
# fewer than `max` remain. The store cannot see sockets: a session counts as held open
# while its transport is websocket and it was seen within `window` ms (the refresher of
# the process holding its socket renews it every refresh interval; a crashed process's
# sessions stop being renewed and become replaceable). An index entry whose key has
# gone (past its lifetime) frees its place too. RESTORE's session takes part as the
# newcomer with its own last_seen: when it is the least recently seen of those not held
# open (or seen at the same millisecond as the next), it is the one to go, and what
# Redis holds stays. Returns whether there is room, and the lone slot's id after it
# (nil when free).
_MAKE_ROOM = """
local function make_room(slot, idx, base, max, window, channel, user, new_seen, new_held)
  local lone_sid, lone_seen, lone_v = lone(slot)
  local count = redis.call('ZCARD', idx)
  if lone_sid then count = count + 1 end
  if count < max then return true, lone_sid end
  local cutoff = now - window
  local entries = redis.call('ZRANGE', idx, 0, -1, 'WITHSCORES')
  local i, lone_pending, lone_left = 1, lone_sid ~= nil, lone_sid
  while count >= max do
    local sid, seen, v, key
    if lone_pending and (i > #entries or tonumber(lone_seen) <= tonumber(entries[i + 1])) then
      sid, seen, v, key = lone_sid, tonumber(lone_seen), lone_v, slot
      lone_pending = false
    elseif i <= #entries then
      sid, seen = entries[i], tonumber(entries[i + 1])
      key = base .. sid
      v = redis.call('GET', key)
      i = i + 2
    else
      return false, lone_left
    end
    if not v then
      redis.call('ZREM', idx, sid)
      count = count - 1
    elseif new_seen and not new_held and new_seen <= seen then
      return false, lone_left
    else
      local c, x, tr = parse(v)
      if tr ~= 'w' or seen <= cutoff then
        redis.call('DEL', key)
        if key == slot then lone_left = nil else redis.call('ZREM', idx, sid) end
        ended(channel, user, sid, 'replaced', slot)
        count = count - 1
      end
    end
  end
  return true, lone_left
end
"""

# KEYS: lone slot, idx, session key. ARGV: ttl, max per user, sid, "<ts>|<data>", max
# lifetime, held-open window ms, channel, user. The session goes to the slot when it is
# free, else to its key and the index. At the cap, sessions not held open make room (see
# _MAKE_ROOM). Returns {now, pttl} or an error code: -1 cap reached with every session
# held open, -2 id taken.
CREATE = (
    _PRELUDE
    + _MAKE_ROOM
    + """
local ttl, sid = tonumber(ARGV[1]), ARGV[3]
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
-- The session key is the prefix of every key of this user's sessions, then the sid.
local base = string.sub(KEYS[3], 1, #KEYS[3] - #sid)
local room, lone_sid = make_room(
  KEYS[1], KEYS[2], base, tonumber(ARGV[2]), tonumber(ARGV[6]), ARGV[7], ARGV[8])
if not room then return {-1} end
if lone_sid == sid or redis.call('EXISTS', KEYS[3]) == 1 then return {-2} end
local life = tonumber(ARGV[5])
local deadline, px = '', ttl
if life > 0 then
  deadline = tostring(now + life)
  if life < px then px = life end
end
local value = now .. '|' .. deadline .. '|' .. ARGV[4]
if not lone_sid then
  redis.call('SET', KEYS[1], sid .. '|' .. now .. '|' .. value, 'PX', px)
  return {now, px}
end
redis.call('SET', KEYS[3], value, 'PX', px)
redis.call('ZADD', KEYS[2], now, sid)
push_index_ttl(KEYS[2], ttl)
return {now, px}
"""
)

# KEYS: lone slot, idx, session key. ARGV: sid.
# Returns {value, last_seen, pttl, now} or false.
GET = (
    _PRELUDE
    + """
local lone_sid, lone_seen, lone_v = lone(KEYS[1])
if lone_sid == ARGV[1] then
  return {lone_v, lone_seen, redis.call('PTTL', KEYS[1]), now}
end
local v = redis.call('GET', KEYS[3])
if not v then return false end
local seen = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not seen then seen = string.match(v, '^(%d+)') end
return {v, tostring(seen), redis.call('PTTL', KEYS[3]), now}
"""
)

# KEYS: lone slot, idx. ARGV: ttl, key prefix up to the sid.
# Returns flat {now, sid, value, last_seen, pttl, ...} newest first; prunes dead ids.
LIST = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
local entries = redis.call('ZREVRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local lone_sid, lone_seen, lone_v = lone(KEYS[1])
local out = {now}
local function add(sid, v, seen, pttl)
  table.insert(out, sid)
  table.insert(out, v)
  table.insert(out, seen)
  table.insert(out, pttl)
end
for i = 1, #entries, 2 do
  local sid, seen = entries[i], entries[i + 1]
  if lone_sid and tonumber(lone_seen) >= tonumber(seen) then
    add(lone_sid, lone_v, lone_seen, redis.call('PTTL', KEYS[1]))
    lone_sid = nil
  end
  local key = ARGV[2] .. sid
  local v = redis.call('GET', key)
  if v then
    add(sid, v, seen, redis.call('PTTL', key))
  else
    redis.call('ZREM', KEYS[2], sid)
  end
end
if lone_sid then add(lone_sid, lone_v, lone_seen, redis.call('PTTL', KEYS[1])) end
return out
"""
)

# KEYS: each heartbeat's lone slot, idx and session key in turn. ARGV: ttl, channel,
# then for each heartbeat in turn: "<sid>|<transport letter or ''>|<state letter or
# ''>|<'1' to replace data, else '0'>|<at ms; 0 = now>", its user, its data.
# Heartbeats made together go in one call (see presence.stores._batch); each runs in
# order. Never recreates a missing key; never moves last_seen or expiry backwards.
# A head's last field, when set, is an age in ms: a session seen more recently is
# returned as it is, untouched (a reaper's mark, passing over a socket back since).
# Returns, for each heartbeat, {value, last_seen, pttl, now} or false.
TOUCH = (
    _PRELUDE
    + """
local ttl, channel = tonumber(ARGV[1]), ARGV[2]
local function touch(slot, idx, skey, head, user, data)
  local sid, tr_new, st_new, replace, at, unseen =
    string.match(head, '^([^|]*)|(%a?)|(%a?)|([01])|(%d+)|(%d*)$')
  local lone_sid, seen, v = lone(slot)
  local in_lone = lone_sid == sid
  local key = skey
  if in_lone then
    key = slot
  else
    v = redis.call('GET', key)
    if not v then
      redis.call('ZREM', idx, sid)
      return false
    end
  end
  at = tonumber(at)
  if at == 0 or at > now then at = now end
  local c, x, tr, st, d = parse(v)
  local px = at + ttl - now
  if x ~= '' then
    local left = tonumber(x) - now
    if left <= 0 then
      redis.call('DEL', key)
      if not in_lone then redis.call('ZREM', idx, sid) end
      ended(channel, user, sid, 'expired', slot)
      return false
    end
    if left < px then px = left end
  end
  if unseen ~= '' then
    local last = seen
    if not in_lone then last = redis.call('ZSCORE', idx, sid) end
    if last and now - tonumber(last) < tonumber(unseen) then
      return {v, tostring(last), redis.call('PTTL', key), now}
    end
  end
  local changed = false
  if tr_new ~= '' and tr_new ~= tr then tr = tr_new; changed = true end
  if st_new ~= '' and st_new ~= st then st = st_new; changed = true end
  if replace == '1' then d = data; changed = true end
  if changed then v = c .. '|' .. x .. '|' .. tr .. st .. '|' .. d end
  if in_lone then
    seen = tonumber(seen)
    if at > seen then seen = at; changed = true end
    if changed then redis.call('SET', key, sid .. '|' .. seen .. '|' .. v, 'KEEPTTL') end
  else
    if changed then redis.call('SET', key, v, 'KEEPTTL') end
    redis.call('ZADD', idx, 'GT', at, sid)
    push_index_ttl(idx, ttl)
    seen = redis.call('ZSCORE', idx, sid)
  end
  if px > 0 then redis.call('PEXPIRE', key, px, 'GT') end
  return {v, tostring(seen), redis.call('PTTL', key), now}
end
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local k, a = i * 3, 2 + i * 3
  out[i + 1] = touch(
    KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
end
return out
"""
)

# KEYS: for each user in turn, its lone slot, its idx, then the keys of its sids.
# ARGV: ttl, check deadlines ('1'/'0'), channel, then for each user in turn: user, the
# number of its sids, the sids. Returns the 1-based numbers, counted over all the sids
# in order, of those that no longer exist.
REFRESH = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
local deadlines = ARGV[2] == '1'
local channel = ARGV[3]
local missing = {}
local k, a, n = 1, 4, 0
while a <= #ARGV do
  local user, count = ARGV[a], tonumber(ARGV[a + 1])
  local slot, idx = KEYS[k], KEYS[k + 1]
  local lone_sid, lone_seen, lone_v = lone(slot)
  for j = 1, count do
    local sid, key = ARGV[a + 1 + j], KEYS[k + 1 + j]
    n = n + 1
    local px = ttl
    local alive = true
    if lone_sid == sid then
      if deadlines then
        local c, x = parse(lone_v)
        if x ~= '' then
          local left = tonumber(x) - now
          if left <= 0 then
            redis.call('DEL', slot)
            ended(channel, user, sid, 'expired', slot)
            lone_sid = nil
            alive = false
          elseif left < px then
            px = left
          end
        end
      end
      if alive then
        if now > tonumber(lone_seen) then
          lone_seen = now
          redis.call('SET', slot, sid .. '|' .. now .. '|' .. lone_v, 'KEEPTTL')
        end
        redis.call('PEXPIRE', slot, px, 'GT')
      end
    else
      if deadlines then
        local v = redis.call('GET', key)
        if not v then
          alive = false
        else
          local c, x = parse(v)
          if x ~= '' then
            local left = tonumber(x) - now
            if left <= 0 then
              redis.call('DEL', key)
              ended(channel, user, sid, 'expired', slot)
              alive = false
            elseif left < px then
              px = left
            end
          end
        end
      end
      if alive and redis.call('PEXPIRE', key, px, 'GT') == 0
          and redis.call('EXISTS', key) == 0 then
        alive = false
      end
      if alive then
        redis.call('ZADD', idx, 'GT', now, sid)
        push_index_ttl(idx, ttl)
      else
        redis.call('ZREM', idx, sid)
      end
    end
    if not alive then table.insert(missing, n) end
  end
  k = k + 2 + count
  a = a + 2 + count
end
return missing
"""
)

# KEYS: lone slot, idx. ARGV: mode ('ids' | 'all' | 'inactive' | 'before'), key prefix
# up to the sid, ttl, channel, user, reason, cutoff (inactive: an age in ms, measured by
# Redis's clock; before: POSIX ms), then the ids (ids).
# Returns the ids deleted, oldest first for the modes other than 'ids'; each deletion
# is published on the channel.
DELETE = (
    _PRELUDE
    + """
local mode, base, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local channel, user, reason = ARGV[4], ARGV[5], ARGV[6]
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
local lone_sid, lone_seen = lone(KEYS[1])
local ids
if mode == 'ids' then
  ids = {}
  for i = 8, #ARGV do table.insert(ids, ARGV[i]) end
else
  local entries, cutoff
  if mode == 'all' then
    entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  else
    if mode == 'inactive' then
      cutoff = now - tonumber(ARGV[7])
    else
      cutoff = tonumber(ARGV[7])
    end
    entries = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. cutoff, 'WITHSCORES')
  end
  -- The lone session, when it is among them, in its place by last_seen.
  local pending = lone_sid and (cutoff == nil or tonumber(lone_seen) < cutoff)
  ids = {}
  for i = 1, #entries, 2 do
    if pending and tonumber(lone_seen) <= tonumber(entries[i + 1]) then
      table.insert(ids, lone_sid)
      pending = false
    end
    table.insert(ids, entries[i])
  end
  if pending then table.insert(ids, lone_sid) end
end
local deleted = {}
for _, sid in ipairs(ids) do
  local gone
  if sid == lone_sid then
    gone = redis.call('DEL', KEYS[1]) == 1
    lone_sid = nil
  else
    gone = redis.call('DEL', base .. sid) == 1
    redis.call('ZREM', KEYS[2], sid)
  end
  if gone then
    table.insert(deleted, sid)
    ended(channel, user, sid, reason, KEYS[1])
  end
end
return deleted
"""
)

# KEYS: lone slot, idx, session key. ARGV: value, last_seen ms, ttl, sid, deadline ms or
# '' (as in the value), max per user, held-open window ms, channel, user. Writes back a
# session created while Redis was away: where Redis still holds it, only its last_seen
# and expiry move forward; else, within the per-user cap as CREATE keeps it (see
# _MAKE_ROOM), into the slot when it is free. Returns 1 if it is now in Redis, 0 if it
# had already expired by its own clock or lost its place at the cap (announced
# 'replaced', so that a socket held on it closes).
RESTORE = (
    _PRELUDE
    + _MAKE_ROOM
    + """
local value, seen, ttl, sid = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local c, x, tr, st, d = parse(value)
-- Times from a process whose clock runs ahead of Redis's would date the session in
-- Redis's future and stretch it past its TTL and lifetime: none is later than now.
local ahead = tonumber(c) - now
if ahead > 0 then
  if x ~= '' then x = tostring(tonumber(x) - ahead) end
  value = now .. '|' .. x .. '|' .. tr .. st .. '|' .. d
end
if seen > now then seen = now end
local px = seen + ttl - now
if x ~= '' and tonumber(x) - now < px then px = tonumber(x) - now end
if px <= 0 then return 0 end
local lone_sid, lone_seen, lone_v = lone(KEYS[1])
if lone_sid == sid then
  if seen > tonumber(lone_seen) then
    redis.call('SET', KEYS[1], sid .. '|' .. seen .. '|' .. lone_v, 'KEEPTTL')
  end
  redis.call('PEXPIRE', KEYS[1], px, 'GT')
  return 1
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('PEXPIRE', KEYS[3], px, 'GT')
  redis.call('ZADD', KEYS[2], 'GT', seen, sid)
  push_index_ttl(KEYS[2], ttl)
  return 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
local window, channel, user = tonumber(ARGV[7]), ARGV[8], ARGV[9]
local base = string.sub(KEYS[3], 1, #KEYS[3] - #sid)
local held = tr == 'w' and seen > now - window
local room, lone_left = make_room(
  KEYS[1], KEYS[2], base, tonumber(ARGV[6]), window, channel, user, seen, held)
if not room then
  ended(channel, user, sid, 'replaced', KEYS[1])
  return 0
end
if not lone_left then
  redis.call('SET', KEYS[1], sid .. '|' .. seen .. '|' .. value, 'PX', px)
  return 1
end
redis.call('SET', KEYS[3], value, 'PX', px)
redis.call('ZADD', KEYS[2], seen, sid)
push_index_ttl(KEYS[2], ttl)
return 1
"""
)

# KEYS: a lone slot, an index and a session key under a tag no user has
# (keys.selfcheck_keys). ARGV: channel ('' for none), the message to publish on it. Runs
# every command the scripts above run, on keys like theirs, each with pcall, and deletes
# what it made. Returns "<command>: <error>" for each one refused (an ACL without it, or
# without the key pattern or the channel); none when the service has what it needs.
SELFCHECK = """
local failures = {}
local function try(name, ...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then
    table.insert(failures, name .. ': ' .. reply.err)
  end
end
local slot, idx, skey = KEYS[1], KEYS[2], KEYS[3]
try('TIME', 'TIME')
try('SET PX', 'SET', slot, 'x', 'PX', 10000)
try('SET KEEPTTL', 'SET', slot, 'y', 'KEEPTTL')
try('SET PX NX', 'SET', skey, 'x', 'PX', 10000, 'NX')
try('GET', 'GET', slot)
try('EXISTS', 'EXISTS', skey)
try('PEXPIRE GT', 'PEXPIRE', slot, 20000, 'GT')
try('PTTL', 'PTTL', slot)
try('ZADD', 'ZADD', idx, 1, 'x')
try('ZADD GT', 'ZADD', idx, 'GT', 2, 'x')
try('PEXPIRE', 'PEXPIRE', idx, 10000)
try('ZSCORE', 'ZSCORE', idx, 'x')
try('ZCARD', 'ZCARD', idx)
try('ZRANGE', 'ZRANGE', idx, 0, -1, 'WITHSCORES')
try('ZREVRANGE', 'ZREVRANGE', idx, 0, -1, 'WITHSCORES')
try('ZRANGEBYSCORE', 'ZRANGEBYSCORE', idx, '-inf', '(3', 'WITHSCORES')
try('ZREMRANGEBYSCORE', 'ZREMRANGEBYSCORE', idx, '-inf', 0)
try('ZREM', 'ZREM', idx, 'x')
if ARGV[1] ~= '' then try('PUBLISH', 'PUBLISH', ARGV[1], ARGV[2]) end
-- Presence's: a user's tabs (a hash), a process's users (a set), a room's seq, and a
-- room's channel (ARGV[3], published with ARGV[4]: PUBLISH, or SPUBLISH on a cluster).
local hash, set, counter = KEYS[4], KEYS[5], KEYS[6]
try('HSET', 'HSET', hash, 'f', 'x')
try('HGET', 'HGET', hash, 'f')
try('HGETALL', 'HGETALL', hash)
-- The admin board's (its processes' snapshots).
try('HMGET', 'HMGET', hash, 'f')
try('HKEYS', 'HKEYS', hash)
try('HEXISTS', 'HEXISTS', hash, 'f')
try('HLEN', 'HLEN', hash)
try('HINCRBY', 'HINCRBY', hash, 'n', 1)
try('HDEL', 'HDEL', hash, 'f')
try('PERSIST', 'PERSIST', hash)
try('INCR', 'INCR', counter)
try('SADD', 'SADD', set, 'x')
try('SSCAN', 'SSCAN', set, 0)
try('ZRANGE BYLEX', 'ZRANGE', idx, '-', '+', 'BYLEX', 'LIMIT', 0, 1)
try('ZREVRANGE', 'ZREVRANGE', idx, 0, 0, 'WITHSCORES')
if ARGV[3] and ARGV[3] ~= '' then try(ARGV[4], ARGV[4], ARGV[3], '{}') end
try('DEL', 'DEL', slot)
try('DEL', 'DEL', skey)
try('DEL', 'DEL', idx)
try('DEL', 'DEL', hash, set, counter)
return failures
"""


def _many(script: str) -> str:
    """``script`` run for many calls in one: each call's keys and arguments exactly as the
    script takes them alone, so a change to the script is a change to its batched form.

    KEYS: every call's keys in turn. ARGV: the number of calls, then each call's number of
    keys and of arguments, then every call's arguments in turn. Returns each call's result
    in turn (false as 0: a Lua array cannot hold it).
    """
    body = script.removeprefix(_PRELUDE)
    if body == script:  # pragma: no cover - every script starts with the prelude
        raise ValueError("a batched script needs the shared prelude")
    return (
        _PRELUDE
        + """
-- The script's own KEYS and ARGV, one call's worth, as parameters.
local function one(KEYS, ARGV)
"""
        + body
        + """
end
local calls = tonumber(ARGV[1])
local k, a = 0, 1 + 2 * calls
local out = {}
for i = 1, calls do
  local nk, na = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local call_keys, call_args = {}, {}
  for j = 1, nk do call_keys[j] = KEYS[k + j] end
  for j = 1, na do call_args[j] = ARGV[a + j] end
  k, a = k + nk, a + na
  local result = one(call_keys, call_args)
  if not result then result = 0 end
  out[i] = result
end
return out
"""
    )


# The write-back after an outage (presence.stores.fallback): many deletes or restores in
# one round trip.
DELETE_MANY = _many(DELETE)
RESTORE_MANY = _many(RESTORE)
