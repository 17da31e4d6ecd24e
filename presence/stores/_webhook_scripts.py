"""The Lua that adds webhook events to their streams, shared by the session scripts
(:mod:`._scripts`, ``session.ended``) and the presence scripts
(:mod:`._presence_scripts`, the rest): an event is added by the script that makes the
change it tells of, in the same atomic step, so that no change goes untold and none is
told twice (see :mod:`presence.webhooks`).

An event as a script adds it: ``{"id", "type", "created_at", "seq", ...}`` with
``created_at`` (and ``last_seen``) in ms; :mod:`presence.webhooks` turns them into ISO
times on the way out. Its ``id`` is a digest of its scope (the user or the room) and
its seq, which a scope never repeats: a counter in the scope's slot, started at the
time in ms whenever it is made (again), so above any number it had before.

It uses no global of the script: times and starts are passed in.
"""

from __future__ import annotations

from .. import keys

WEBHOOK = f"""
-- With pcall, as PUBLISH: a script is not rolled back, so an XADD refused (an ACL,
-- which the start-up self-check finds first) must not fail a change already made.
local function webhook_add(streams, event)
  for _, s in ipairs(streams) do
    redis.pcall('XADD', s, 'MAXLEN', '~', {keys.WEBHOOK_STREAM_MAXLEN}, '*', 'e', event)
  end
end
local function webhook_event(kind, scope, seq, at, fields)
  local id = 'ev_' .. string.sub(redis.sha1hex(scope .. '|' .. seq), 1, 24)
  return '{{"id":"' .. id .. '","type":"' .. kind .. '","created_at":' .. at
    .. ',"seq":' .. seq .. fields .. '}}'
end
-- The next seq of a scope: field `field` of hash `key`, or the string `key` itself
-- when `field` is nil.
local function webhook_seq(key, field, start)
  local seq
  if field then seq = redis.call('HINCRBY', key, field, 1) else seq = redis.call('INCR', key) end
  if seq == 1 then
    seq = start
    if field then redis.call('HSET', key, field, seq) else redis.call('SET', key, seq) end
  end
  return seq
end
"""


# The delivery's own steps, each one atomic in the slot of a URL's streams (the stream
# and its dead letters share a tag), so that an event is in exactly one of them.

# KEYS: the stream. ARGV: the group, then the ids. The URL took them.
ACK = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return 1
"""

# KEYS: the stream, the dead letters. ARGV: the group, the error, the attempts, then for
# each event its id and JSON. The events move to the dead letters.
BURY = f"""
for i = 4, #ARGV, 2 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', {keys.WEBHOOK_DEAD_MAXLEN}, '*',
    'e', ARGV[i + 1], 'error', ARGV[2], 'attempts', ARGV[3])
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
return 1
"""

# KEYS: the stream, the dead letters. ARGV: dead letters' ids. Each goes back into the
# stream, as it was; returns how many were found.
REPLAY = f"""
local n = 0
for _, id in ipairs(ARGV) do
  local found = redis.call('XRANGE', KEYS[2], id, id)
  if #found == 1 then
    local fields = found[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 'e' then
        redis.call('XADD', KEYS[1], 'MAXLEN', '~', {keys.WEBHOOK_STREAM_MAXLEN}, '*',
          'e', fields[i + 1])
      end
    end
    redis.call('XDEL', KEYS[2], id)
    n = n + 1
  end
end
return n
"""

# KEYS: an outbox (a cluster: a user's or a room's). ARGV: ids moved to the URLs'
# streams. They go, and the key with them once it is empty (in one step, so that an
# event a script adds meanwhile is never deleted unmoved). Returns what is left.
DRAIN = """
redis.call('XDEL', KEYS[1], unpack(ARGV))
local left = redis.call('XLEN', KEYS[1])
if left == 0 then redis.call('DEL', KEYS[1]) end
return left
"""
