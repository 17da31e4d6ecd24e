"""Every Redis key, channel and TTL that Presence uses, in one place.

All keys of one user share the hash tag ``{<user tag>}`` so that a user's session keys
and index live in one Redis Cluster slot, and the Lua scripts that touch them together
stay legal on a cluster.

A user with one session costs one key: the lone slot. Only further sessions get a key
of their own each and the index that finds them.
"""

from __future__ import annotations

import functools
import hashlib
import re

# A user id is used verbatim inside the hash tag when it is short and plain, so that
# the keys stay readable and short for the common case (UUIDs, numeric ids, short
# names). Any other id (braces would end the tag early, long ids waste memory) is
# replaced by a digest behind a marker, "#", that the plain form can never contain:
# the two forms are disjoint by construction, so no user can name a plain id that
# lands on another user's digest. (The marker was once "h:", which is itself plain:
# the user "h:<digest of alice+work@example.com>" shared every key of that user.)
_PLAIN_USER = re.compile(r"[A-Za-z0-9_.:@\-]{1,64}")
_DIGEST_MARKER = "#"
# 128 bits: a second user can only land on an existing digest by a second preimage.
_DIGEST_BYTES = 16


@functools.lru_cache(maxsize=65536)
def user_tag(user: str) -> str:
    """The part of a key that stands for a user, braces included.

    Distinct users get distinct tags: a plain id stands for itself, and anything else
    for a digest of its exact code points behind a marker that no plain id contains.
    """
    if _PLAIN_USER.fullmatch(user):
        return "{" + user + "}"
    # surrogatepass: a JWT's JSON may carry a lone surrogate, which plain UTF-8 refuses;
    # this encoding stays one-to-one on every str.
    digest = hashlib.blake2b(user.encode("utf-8", "surrogatepass"), digest_size=_DIGEST_BYTES)
    return "{" + _DIGEST_MARKER + digest.hexdigest() + "}"


def lone_key(prefix: str, user: str) -> str:
    """The lone slot: one session of the user, whichever was created while it was free,
    with its id and last_seen in its value. Its Redis TTL *is* the session TTL. It
    spares the index key (about 180 B) for a user with one session, the common case."""
    return f"{prefix}:{user_tag(user)}:one"


def session_key(prefix: str, user: str, session_id: str) -> str:
    """A session beside the one in the lone slot: a string holding its fields; its Redis
    TTL *is* the session TTL, so an abandoned session disappears without any sweeper."""
    return f"{prefix}:{user_tag(user)}:s:{session_id}"


def index_key(prefix: str, user: str) -> str:
    """The sessions that have keys of their own: a sorted set of their ids scored by
    last_seen (ms), so that `inactive` cleanup and pruning of expired ids are range
    operations, O(log n + k). Its own TTL is pushed to the newest of those sessions'
    expiry, so it goes when they all do."""
    return f"{prefix}:{user_tag(user)}:idx"


def ended_channel(prefix: str) -> str:
    """Pub/sub channel on which a session's end (delete, cleanup, expiry) is announced,
    so the process holding its WebSocket closes it, wherever that is."""
    return f"{prefix}:ended"


SELFCHECK_TAG = "{#selfcheck}"


def selfcheck_keys(prefix: str) -> list[str]:
    """The keys of the start-up self-check (a lone slot, an index and a session key; a
    user's tabs, a process's users and a room's seq), which runs every command the
    scripts run, under the key prefix as theirs are, so that an ACL lacking one is found
    before the service starts. Their tag holds a "#", which no user's or room's tag
    has; the check deletes them, and their TTL is seconds anyway."""
    tag = SELFCHECK_TAG
    return [
        f"{prefix}:{tag}:one",
        f"{prefix}:{tag}:idx",
        f"{prefix}:{tag}:s:selfcheck",
        f"{prefix}:{tag}:tabs",
        f"{prefix}:proc:{tag}:users",
        f"{prefix}:room:{tag}:q",
    ]


def selfcheck_channel(prefix: str) -> str:
    """A room's channel as the self-check publishes on it (in the check's slot)."""
    return f"{prefix}:room:{SELFCHECK_TAG}"


def dev_secret_key(prefix: str) -> str:
    """Development mode: the key that signs anonymous identity cookies, set once (SET NX)
    by the first process to start, so that every process and every restart verifies the
    same cookies and a browser keeps its identity, and its sessions, across a restart. No
    TTL: the cookies it signed last a year."""
    return f"{prefix}:{{~dev}}:secret"


# -- presence -------------------------------------------------------------------------


def room_tag(room: str) -> str:
    """The hash tag of a room's keys and channel: its name, which room names' charset
    keeps free of braces (see presence.models.is_room)."""
    return "{" + room + "}"


def room_channel(prefix: str, room: str) -> str:
    """A room's diffs, numbered, published by the store's flush in the same step as the
    seq they carry; each process with watchers of the room subscribes once (sharded on
    a cluster: it lives in the room's slot, as the flush script requires)."""
    return f"{prefix}:room:{room_tag(room)}"


def tabs_key(prefix: str, user: str) -> str:
    """A user's tabs (their sessions' presence, the rooms each is in with its meta, and
    since when the user is in each room): one hash in the user's slot, so that every
    change to a tab and the status and member rows it makes are one script. No TTL
    while the user has a tab (liveness is the holding process's lease); once they have
    none it keeps their last_seen for a session TTL."""
    return f"{prefix}:{user_tag(user)}:tabs"


#: A room's keys, in the order the room scripts take them: members (user -> row),
#: users in order (a zset at score 0, for paging by name), row versions (user ->
#: version, so that rows applied out of order never undo newer ones), tombstones of
#: those versions (user -> when, pruned after a minute), the rows as last published
#: (the diff window's "before"), why members left in the window, and the seq.
ROOM_KEY_SUFFIXES = ("m", "u", "v", "t", "d", "w", "q")

#: A room's seq is kept this long (ms) once the room is empty, so that a watcher of an
#: empty room and the room's next diff agree on the numbering; a room made again after
#: it numbers on from the time, above any old diff (a room has at most one diff a
#: window).
EMPTY_ROOM_SEQ_MS = 86_400_000

#: How long (ms) a room remembers the version of a member who left (a tombstone), so
#: that a row of theirs still on its way (applied late, out of order) cannot bring them
#: back: far longer than a retried script takes to arrive.
TOMBSTONE_MS = 60_000
#: The TTL (ms) of a room's versions and tombstones, pushed on by every change to the
#: room: twice a tombstone's life, so that a quiet room's bookkeeping goes by itself.
ROOM_VERSIONS_MS = 2 * TOMBSTONE_MS


def room_keys(prefix: str, room: str) -> list[str]:
    """Every key of a room, in :data:`ROOM_KEY_SUFFIXES` order: one slot, the room's."""
    return [f"{prefix}:room:{room_tag(room)}:{suffix}" for suffix in ROOM_KEY_SUFFIXES]


def rooms_key(prefix: str) -> str:
    """Every room with members, scored by how many (a zset), for listing rooms (the
    hub): updated by the process that flushes a room's diff, with the count the diff
    carries, and the room taken out when it empties. No TTL: it holds only live rooms.
    Its tag no room or user has."""
    return f"{prefix}:{{~rooms}}:count"


def holder_users_key(prefix: str, holder: str) -> str:
    """The users whose tabs a process holds (or held), so that whoever reaps it after
    it dies finds them; written before the first hold of each user, deleted once
    reaped. Its own slot, the process's."""
    return f"{prefix}:proc:{{{holder}}}:users"


# The leases' keys share a tag that no user's can be (plain ids have no "~", and the
# others are digests behind "#").
_LEASES = "{~leases}"


def lease_keys(prefix: str) -> list[str]:
    """Every process's lease expiry (a zset, ms), its last renewal (a hash, ms), and the
    processes reaped in the last hour (a zset, ms; their claims are keys beside it)."""
    return [
        f"{prefix}:{_LEASES}:expiry",
        f"{prefix}:{_LEASES}:renewed",
        f"{prefix}:{_LEASES}:reaped",
    ]


#: Seconds a reaper's claim on a lapsed process lasts: long enough to wait out the
#: grace and reap, short enough that another takes over if the reaper dies too.
REAP_CLAIM = 30.0
#: How long (ms) a user's reaped rows are kept for a retry of the reap whose script's
#: reply was lost (a timeout): two claims, the longest a reap of it can go on.
REAP_REPLAY_MS = int(2 * REAP_CLAIM * 1000)

#: Seconds a process's lease lasts unrenewed: a process that has not renewed it for
#: this long is taken for dead and reaped (its members leave with ``node_down``, once
#: the grace since its last renewal has passed too). Three renewals may fail first, so
#: a stall of the event loop or a lost round trip is not a death.
LEASE_TTL = 3.0
#: How long (ms) a reaped process is remembered: long enough for one that was only cut
#: off to come back, find it was reaped (its renewal says so) and hold its tabs again
#: under a new name, instead of renewing a lease whose members are gone.
REAPED_MEMORY_MS = 3_600_000
#: Seconds between a process's renewals of its lease, and between its looks for
#: lapsed ones.
LEASE_RENEW_INTERVAL = 1.0
#: Seconds a renewal may take before it counts as failed, longer than other calls'
#: bound: one that reaches Redis within it keeps alive the lease renewed a tick before,
#: so a process busy with a burst (its loop late, its pool taken) is not taken for dead.
LEASE_RENEW_BOUND = LEASE_TTL - LEASE_RENEW_INTERVAL


# -- the admin page ---------------------------------------------------------------------

# The admin board's keys share a tag that no user or room can have ("~"), so that one
# pipeline writes a process's snapshot and sample in one slot on a cluster.
_ADMIN = "{~admin}"


def admin_keys(prefix: str) -> list[str]:
    """The admin board: every process's latest snapshot (a hash, holder -> JSON: its
    sockets, sessions, users), when each last wrote it (a zset, ms: readers take only
    those within ADMIN_PROCESS_STALE, so a dead process drops off the page by itself),
    and the sockets and users online a minute (a zset of "<minute ms>|<holder>|<sockets>|
    <users>" scored by the minute, trimmed to ADMIN_SERIES_SPAN on every write). Each
    write pushes their TTLs, so they go once no process writes."""
    return [f"{prefix}:{_ADMIN}:procs", f"{prefix}:{_ADMIN}:seen", f"{prefix}:{_ADMIN}:series"]


#: Seconds after its last snapshot (written every two seconds) that a process is no
#: longer shown: a few missed writes are a stall, not a death (the lease says that).
ADMIN_PROCESS_STALE = 10.0
#: Seconds of samples the admin page's chart shows: the last hour.
ADMIN_SERIES_SPAN = 3600.0


# -- webhooks -------------------------------------------------------------------------


def webhook_tag(url: str) -> str:
    """The hash tag of one webhook URL's streams: a digest of the URL (which may hold
    anything, and must not show in Redis), behind a "~" that no user's or room's tag
    has. The stream and its dead letters share it, so that moving an event from one
    to the other is one transaction in one slot."""
    digest = hashlib.blake2b(url.encode(), digest_size=8).hexdigest()
    return "{~webhook:" + digest + "}"


def webhook_stream(prefix: str, url: str) -> str:
    """The events still to deliver to one URL: a stream read by the consumer group
    :data:`WEBHOOK_GROUP`, written by the presence and session scripts in the same
    atomic step as the change they tell of (so an event exists if and only if its
    change happened; on a cluster, moved there from the outbox the script wrote, see
    :func:`user_outbox`). An entry is deleted once the URL has taken it; the stream has no
    TTL (undelivered events are kept until delivered or dead), and a MAXLEN
    (:data:`WEBHOOK_STREAM_MAXLEN`) so that a receiver gone for good cannot fill
    Redis."""
    return f"{prefix}:{webhook_tag(url)}:events"


def webhook_dead(prefix: str, url: str) -> str:
    """The events that one URL did not take within ``PRESENCE_WEBHOOK_RETRY_HOURS``:
    a stream of ``event``, ``error`` and ``attempts`` entries, kept for the admin page
    to list and replay (replayed entries leave it). No TTL; MAXLEN
    :data:`WEBHOOK_DEAD_MAXLEN`, the oldest trimmed first."""
    return f"{prefix}:{webhook_tag(url)}:dead"


def room_event_seq_key(prefix: str, room: str) -> str:
    """A room's webhook seq (a counter, started at the time in ms, so that a room made
    again numbers on above its old events): in the room's slot, incremented by the
    flush script for each event it adds. No TTL while the room has members; a day
    once it is empty, as the room's diff seq."""
    return f"{prefix}:room:{room_tag(room)}:e"


#: The consumer group every process reads a webhook stream through: each event goes to
#: one consumer (one process) at a time, and stays pending until acknowledged.
WEBHOOK_GROUP = "presence"
#: Events kept undelivered per URL at most (approximately: ``MAXLEN ~``). At about
#: 300 B an event, 1,000,000 is ~300 MB of Redis for a receiver that is gone for long
#: under heavy traffic; past it the oldest are trimmed, and the delivering process
#: logs how many it found trimmed (XAUTOCLAIM names them).
WEBHOOK_STREAM_MAXLEN = 1_000_000
#: Dead letters kept per URL at most; the oldest go first.
WEBHOOK_DEAD_MAXLEN = 100_000
#: Seconds an event may stay pending with one consumer untouched before another process
#: claims it (XAUTOCLAIM): the consumer died. A live one touches what it holds every
#: third of this (while posting and while waiting to retry), so it never loses it.
WEBHOOK_CLAIM_IDLE = 15.0
#: Seconds a consumer (a process's name in a webhook group) may sit idle holding nothing
#: before it is dropped from the group: a process gone; a live one reads every second.
WEBHOOK_CONSUMER_IDLE = 3600.0
#: How long (ms) a user's tabs hash made only to number a ``session.ended`` event (the
#: user had no tab) is kept: the user's seq must outlive the events it numbered long
#: enough to stay above them; it starts at the time again after.
WEBHOOK_USER_SEQ_MS = 86_400_000


def user_outbox(prefix: str, user: str) -> str:
    """On a Redis Cluster: the user's webhook events (``user.*``, ``session.ended``) as
    the scripts of the user's slot add them (a stream there: a script may only touch its
    own slot), until a process moves them to the URLs' streams and deletes the key
    (emptied, atomically). A process that dies in between leaves it for the sweep,
    which finds it by :func:`outbox_pattern`. No TTL: it holds events not yet moved."""
    return f"{prefix}:{user_tag(user)}:wh"


def room_outbox(prefix: str, room: str) -> str:
    """On a Redis Cluster: a room's webhook events (``room.*``, ``member.*``), as for a
    user (see :func:`user_outbox`), in the room's slot."""
    return f"{prefix}:room:{room_tag(room)}:wh"


def outbox_pattern(prefix: str) -> str:
    """What the sweep SCANs each primary for (streams only: a session key ending in
    ``:wh`` is a string)."""
    return f"{prefix}:*:wh"


def webhook_sweep_key(prefix: str) -> str:
    """The sweep's claim (SET NX, :data:`WEBHOOK_SWEEP_INTERVAL`): one process sweeps at
    a time. Its tag is the webhooks' own."""
    return f"{prefix}:{{~webhook}}:sweep"


#: Seconds between sweeps for outboxes left behind (a cluster only): the longest an
#: event waits when the process that added it died before moving it, or when it was
#: added by a heartbeat, a refresh (a session's lifetime reached) or the write-back
#: after an outage, which are not followed by a move.
WEBHOOK_SWEEP_INTERVAL = 10.0
