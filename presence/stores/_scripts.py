"""Lua scripts of the Redis store: each store operation is one atomic round trip.

Every script takes "now" from Redis's own ``TIME`` so that processes whose clocks
disagree still agree on last_seen and expiry.

A session value is ``<created ms>|<deadline ms or empty>|<transport><state>|<data>``:
one letter each for transport (w, h, n) and state (a, y, d), data as JSON or empty.
It is edited with ``string.match`` rather than cjson, which would turn ``[]`` into ``{}``.
"""

from __future__ import annotations

# Shared preamble: NOW in ms, a session key from the prefix in ARGV, and helpers.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function parse(v)
  return string.match(v, '^(%d+)|(%d*)|(.)(.)|(.*)$')
end
local function ended(channel, user, sid, reason)
  if channel ~= '' then
    redis.call('PUBLISH', channel, cjson.encode({u = user, s = sid, r = reason}))
  end
end
local function push_index_ttl(idx, ttl)
  if redis.call('PTTL', idx) < ttl then redis.call('PEXPIRE', idx, ttl) end
end
"""

# KEYS: idx, session key. ARGV: ttl, max per user, sid, "<ts>|<data>", max lifetime.
# Returns {now, pttl} or an error code: -1 cap reached, -2 id taken.
CREATE = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return {-1} end
local life = tonumber(ARGV[5])
local deadline, px = '', ttl
if life > 0 then
  deadline = tostring(now + life)
  if life < px then px = life end
end
local value = now .. '|' .. deadline .. '|' .. ARGV[4]
if not redis.call('SET', KEYS[2], value, 'PX', px, 'NX') then return {-2} end
redis.call('ZADD', KEYS[1], now, ARGV[3])
push_index_ttl(KEYS[1], ttl)
return {now, px}
"""
)

# KEYS: idx, session key. ARGV: sid. Returns {value, last_seen, pttl, now} or false.
GET = (
    _PRELUDE
    + """
local v = redis.call('GET', KEYS[2])
if not v then return false end
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not seen then seen = string.match(v, '^(%d+)') end
return {v, tostring(seen), redis.call('PTTL', KEYS[2]), now}
"""
)

# KEYS: idx. ARGV: ttl, key prefix up to the sid.
# Returns flat {now, sid, value, last_seen, pttl, ...} newest first; prunes dead ids.
LIST = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
local entries = redis.call('ZREVRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {now}
for i = 1, #entries, 2 do
  local sid = entries[i]
  local key = ARGV[2] .. sid
  local v = redis.call('GET', key)
  if v then
    table.insert(out, sid)
    table.insert(out, v)
    table.insert(out, entries[i + 1])
    table.insert(out, redis.call('PTTL', key))
  else
    redis.call('ZREM', KEYS[1], sid)
  end
end
return out
"""
)

# KEYS: idx, session key. ARGV: ttl, sid, transport letter or '', state letter or '',
# '1' to replace data, data, at (ms; 0 = now), channel, user.
# Never recreates a missing key; never moves last_seen or expiry backwards.
# Returns {value, last_seen, pttl, now} or false.
TOUCH = (
    _PRELUDE
    + """
local v = redis.call('GET', KEYS[2])
if not v then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return false
end
local ttl = tonumber(ARGV[1])
local at = tonumber(ARGV[7])
if at == 0 or at > now then at = now end
local c, x, tr, st, d = parse(v)
local px = at + ttl - now
if x ~= '' then
  local left = tonumber(x) - now
  if left <= 0 then
    redis.call('DEL', KEYS[2])
    redis.call('ZREM', KEYS[1], ARGV[2])
    ended(ARGV[8], ARGV[9], ARGV[2], 'expired')
    return false
  end
  if left < px then px = left end
end
local changed = false
if ARGV[3] ~= '' and ARGV[3] ~= tr then tr = ARGV[3]; changed = true end
if ARGV[4] ~= '' and ARGV[4] ~= st then st = ARGV[4]; changed = true end
if ARGV[5] == '1' then d = ARGV[6]; changed = true end
if changed then
  v = c .. '|' .. x .. '|' .. tr .. st .. '|' .. d
  redis.call('SET', KEYS[2], v, 'KEEPTTL')
end
if px > 0 then redis.call('PEXPIRE', KEYS[2], px, 'GT') end
redis.call('ZADD', KEYS[1], 'GT', at, ARGV[2])
push_index_ttl(KEYS[1], ttl)
return {v, redis.call('ZSCORE', KEYS[1], ARGV[2]), redis.call('PTTL', KEYS[2]), now}
"""
)

# KEYS: pairs of (idx, session key). ARGV: ttl, check deadlines ('1'/'0'), channel,
# then (user, sid) pairs. Returns the 1-based pair numbers that no longer exist.
REFRESH = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
local deadlines = ARGV[2] == '1'
local missing = {}
for i = 1, #KEYS / 2 do
  local idx, key = KEYS[2 * i - 1], KEYS[2 * i]
  local user, sid = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  local px = ttl
  local alive = true
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
          redis.call('ZREM', idx, sid)
          ended(ARGV[3], user, sid, 'expired')
          alive = false
        elseif left < px then
          px = left
        end
      end
    end
  end
  if alive and redis.call('PEXPIRE', key, px, 'GT') == 0 and redis.call('EXISTS', key) == 0 then
    alive = false
  end
  if alive then
    redis.call('ZADD', idx, 'GT', now, sid)
    push_index_ttl(idx, ttl)
  else
    redis.call('ZREM', idx, sid)
    table.insert(missing, i)
  end
end
return missing
"""
)

# KEYS: idx. ARGV: mode ('ids' | 'all' | 'inactive' | 'before'), key prefix up to the
# sid, ttl, channel, user, reason, cutoff (inactive: an age in ms, measured by Redis's
# clock; before: POSIX ms), then the ids (ids).
# Returns the ids deleted; each deletion is published on the channel.
DELETE = (
    _PRELUDE
    + """
local mode, base, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local channel, user, reason = ARGV[4], ARGV[5], ARGV[6]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
local ids
if mode == 'ids' then
  ids = {}
  for i = 8, #ARGV do table.insert(ids, ARGV[i]) end
elseif mode == 'all' then
  ids = redis.call('ZRANGE', KEYS[1], 0, -1)
elseif mode == 'inactive' then
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[7])))
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[7])
end
local deleted = {}
for _, sid in ipairs(ids) do
  if redis.call('DEL', base .. sid) == 1 then
    table.insert(deleted, sid)
    ended(channel, user, sid, reason)
  end
  redis.call('ZREM', KEYS[1], sid)
end
return deleted
"""
)

# KEYS: idx, session key. ARGV: value, last_seen ms, ttl, sid, deadline ms or '' (as in
# the value). Writes back a session created while Redis was away. Returns 1 if it is
# now in Redis, 0 if it had already expired by its own clock.
RESTORE = (
    _PRELUDE
    + """
local value, seen, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
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
if not redis.call('SET', KEYS[2], value, 'PX', px, 'NX') then
  redis.call('PEXPIRE', KEYS[2], px, 'GT')
end
redis.call('ZADD', KEYS[1], 'GT', seen, ARGV[4])
push_index_ttl(KEYS[1], ttl)
return 1
"""
)
