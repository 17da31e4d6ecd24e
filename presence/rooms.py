"""Presence: rooms, their members, and the pure functions behind them.

A **room** is a name. A session (one tab) **joins** a room to be present in it, or
**watches** it to see who is. A **member** is a user, aggregated over all of that user's
sessions in the room: how many there are, the meta most recently set by any of them,
and the user's status, which is one for the user across every tab and device.

Everything here is a function over values, with no I/O and no clock of its own, so that
the stores (memory, Redis) compute the same thing and a Hypothesis test can drive it:

- :func:`user_status` folds a user's tabs into ``online``, ``away`` or ``offline``;
- :func:`member_of` folds a user's tabs in one room into a :class:`Member`;
- :func:`coalesce` turns what watchers were last told and what is true now into one
  diff: a user who joined and left inside a window is a leave, repeated updates keep
  the last, a change undone is nothing;
- :class:`View` is what a watcher holds: a sync, then diffs applied in order, with a
  gap in ``seq`` detected rather than applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from . import _fanout, events, keys, metrics
from ._shutdown import settle, stop
from .exceptions import (
    InvalidBody,
    InvalidRoom,
    NotFound,
    NotInRoom,
    RoomForbidden,
    StoreError,
    StoreUnavailable,
    TooManyRooms,
)
from .models import (
    JSON,
    REASONS,
    ROOM_PATTERN,
    Diff,
    Joined,
    Leave,
    Member,
    Reason,
    RoomPage,
    Status,
    Tab,
    TabState,
    UserPresence,
    is_room,
)

if TYPE_CHECKING:
    from .auth import Identity
    from .bus import EventBus
    from .sessions import Session
    from .settings import Settings
    from .stores.presence_base import JoinResult, PresenceStore

__all__ = [
    "JSON",
    "REASONS",
    "ROOM_PATTERN",
    "Diff",
    "GapError",
    "Joined",
    "Leave",
    "Member",
    "Reason",
    "RoomPage",
    "RoomService",
    "Status",
    "Tab",
    "TabState",
    "UserPresence",
    "View",
    "Watcher",
    "coalesce",
    "is_room",
    "last_departure",
    "member_of",
    "user_status",
]

logger = logging.getLogger("presence.rooms")


def user_status(tabs: Iterable[Tab]) -> Status:
    """``online`` while any tab is online, ``away`` while every tab is away, else
    ``offline`` (no tab at all)."""
    status: Status = "offline"
    for tab in tabs:
        if tab.state == "online":
            return "online"
        status = "away"
    return status


def member_of(
    user: str, room: str, tabs: Iterable[Tab], status: Status, since: float | None, now: float
) -> Member | None:
    """The member that ``user``'s tabs make in ``room``, or None when none is there.

    Args:
        status: the user's status (see :func:`user_status`), one across all rooms.
        since: when the member came in, if it was already there; else ``now``.
    """
    count = 0
    latest: Joined | None = None
    for tab in tabs:
        joined = tab.rooms.get(room)
        if joined is None:
            continue
        count += 1
        if latest is None or joined.meta_order > latest.meta_order:
            latest = joined
    if latest is None:
        return None
    return Member(user, status, count, latest.meta, now if since is None else since)


def last_departure(user: str, room: str, tabs: Iterable[Tab]) -> tuple[Reason, float] | None:
    """Why and when the user's last tab in ``room`` left it: the latest of their tabs'
    departures there (a room left, or the whole tab leaving)."""
    latest: tuple[Reason, float] | None = None
    for tab in tabs:
        joined = tab.rooms.get(room)
        if joined is None:
            continue
        departure = joined.leaving or tab.leaving
        if departure is not None and (latest is None or departure[1] >= latest[1]):
            latest = departure
    return latest


def coalesce(
    published: Mapping[str, Member | None],
    current: Mapping[str, Member | None],
    departures: Mapping[str, tuple[Reason, float]],
) -> tuple[tuple[Member, ...], tuple[Member, ...], tuple[Leave, ...]]:
    """One window's joins, updates and leaves.

    Args:
        published: for each user changed in the window, their member as watchers last
            heard of it (None: not a member then).
        current: the same users' members now (None: not a member now).
        departures: why and when each user who is gone now left.

    A watcher that synced inside the window has a page read then: a user who joined and
    left inside it is a leave (that watcher may hold them; one that does not drops
    nothing). A member changed several times is one update with its last state; one
    changed and changed back is nothing (a status that flickered is no diff; a watcher
    synced in between keeps the row between until the member's next change).
    """
    joins: list[Member] = []
    updates: list[Member] = []
    leaves: list[Leave] = []
    for user in sorted(published.keys() | current.keys()):
        before, after = published.get(user), current.get(user)
        if after is None:
            default: tuple[Reason, float] = ("left", 0.0 if before is None else before.since)
            reason, when = departures.get(user, default)
            leaves.append(Leave(user, reason, when))
        elif before is None:
            joins.append(after)
        elif before != after:
            updates.append(after)
    return tuple(joins), tuple(updates), tuple(leaves)


class GapError(Exception):
    """A diff that does not follow the view's ``seq``: the watcher must sync again."""


@dataclass
class View:
    """What a watcher holds of a room: a sync, then every diff applied in order."""

    room: str
    seq: int = -1
    members: dict[str, Member] = field(default_factory=dict)
    count: int = 0

    def sync(self, page: RoomPage) -> None:
        self.seq = page.seq
        self.count = page.count
        self.members = {m.user: m for m in page.members}

    def apply(self, diff: Diff) -> None:
        """Applies the next diff.

        Raises:
            GapError: ``diff.seq`` is not ``seq + 1`` (a diff was missed, or this one
                is older than the sync); nothing is applied.
        """
        if diff.seq <= self.seq:
            return  # Already in the sync this view started from.
        if diff.seq != self.seq + 1:
            raise GapError(f"room {self.room}: diff {diff.seq} after {self.seq}")
        for leave in diff.leaves:
            self.members.pop(leave.user, None)
        for member in (*diff.joins, *diff.updates):
            self.members[member.user] = member
        self.seq = diff.seq
        self.count = diff.count


# -- the service ------------------------------------------------------------------------


class Watcher(Protocol):
    """What the room service needs of a socket that watches rooms.

    Attributes:
        watching: each watched room and the ``seq`` the socket has been sent up to
            (None while its sync is on the way).
    """

    user: str
    session_id: str
    watching: dict[str, int | None]

    async def offer(self, text: str) -> bool:
        """Sends ``text`` if the socket takes it without waiting (a client that does
        not read is skipped, never waited on); False when it did not."""

    async def send(self, text: str) -> None:
        """Sends ``text``, waiting if need be (from the socket's own task only)."""


@dataclass
class _LocalRoom:
    """A room as this process sees it: its watchers here, and the diffs it heard."""

    watchers: set[Watcher] = field(default_factory=set)
    #: The seq of the last diff heard on the bus, None before the first.
    seq: int | None = None
    #: The latest diffs' texts by seq, for a watcher whose sync was on its way.
    recent: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=_RECENT))
    #: Done when the fan-out in progress here ends (None: none, or one too small to
    #: yield to the loop).
    fanning: asyncio.Future[None] | None = None


# Diffs of a room kept for watchers whose sync was on its way when they came.
_RECENT = 32
# Watchers sent a diff between two yields to the event loop: ~3 ms of writes.
_SLICE = 200
# While a dead process is reaped, its rooms' leaves are flushed at most this often
# (seconds), in a few diffs each rather than one at the end (or one a batch).
_REAP_FLUSH_EVERY = 0.2
# Attempts at syncing a watcher before it is left for the next diff to catch up.
_SYNC_ATTEMPTS = 3
# Seconds before a watcher whose sync the store did not answer is synced again (even
# in a quiet room, where no diff comes to prompt it), doubling up to the cap.
_RESYNC_FIRST = 0.5
_RESYNC_CAP = 8.0
# A hold or join that Redis did not answer within the call's bound, while Redis is not
# known to be away (a burst: thousands of reconnects on a busy loop), is tried again
# this many times at most, after a full-jitter delay from the first, doubling; and
# never past a grace's half from the first attempt (see RoomService._patiently).
_RETRIES = 3
_RETRY_FIRST = 0.1
# The retries' jitter (no secret: a spread of the retries over time).
_jitter: Callable[[], float] = random.random

_T = TypeVar("_T")


@dataclass(eq=False)
class LocalTab:
    """A tab this process holds: a session with sockets open here, or a REST session
    whose latest heartbeat came here. What it holds is kept here too, so that the
    process can hold it all again: in its memory when Redis goes away, in Redis when
    Redis comes back or after the process was taken for dead.

    Attributes:
        rooms: the rooms the tab joined, each with its meta.
        sockets: its sockets open here (0 for a REST tab).
        timer: a REST tab's lapse, twice ``HEARTBEAT_INTERVAL`` after its heartbeat.
        left: the rooms it left while presence was this process's alone (Redis away),
            to be left in Redis too when it is back (where the tab is still in them).
        primary_gen: the generation of its hold in Redis, kept while it is held in
            this process's memory.
        unheld: its latest hold was refused (the store did not answer): the store may
            still have it held by another process, or by this one's former name, which
            a reaper would end as ``node_down``; held again before it joins a room.
    """

    user: str
    session_id: str
    state: TabState
    gen: int = 0
    rooms: dict[str, JSON] = field(default_factory=dict)
    sockets: int = 0
    timer: asyncio.TimerHandle | None = None
    left: set[str] = field(default_factory=set)
    primary_gen: int = 0
    unheld: bool = False


class RoomService:
    """The presence rules, once: who may join and watch, tabs held and released with a
    grace, diffs flushed once a window and fanned out to this process's watchers, the
    process's lease, the reaping of processes that died, and presence in this process's
    memory while Redis is away (said ``partial``), held again in Redis when it is back.

    Args:
        settings: the limits and timers.
        store: where tabs, rooms and members live.
        bus: where room diffs arrive from every process.
        channel: the bus channel of a room (see :mod:`presence.keys`).
        sharded: room channels are sharded (a Redis Cluster).
        encode_sync, encode_diff: the wire form of a sync and a diff (the edge's).
        local: makes presence in this process's memory, for while ``degraded`` says
            so (a fresh one for each outage).
        degraded: whether the session store serves from memory (Redis is away).
    """

    def __init__(
        self,
        settings: Settings,
        store: PresenceStore,
        bus: EventBus,
        *,
        channel: Callable[[str], str],
        sharded: bool = False,
        encode_sync: Callable[[RoomPage], str],
        encode_diff: Callable[[Diff, int], str],
        local: Callable[[], PresenceStore] | None = None,
        degraded: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.primary = store
        self._make_local = local
        self.local: PresenceStore | None = None
        self.is_degraded = degraded
        self.bus = bus
        self.channel = channel
        self.sharded = sharded
        self.encode_sync = encode_sync
        self.encode_diff = encode_diff
        self.holder = _holder_name()
        self._degraded = False
        self._tabs: dict[tuple[str, str], LocalTab] = {}
        self._rooms: dict[str, _LocalRoom] = {}
        self._listeners: dict[str, Callable[[str], Awaitable[None]]] = {}
        self._flushing: set[str] = set()
        # Rooms being flushed now (how many flushes of each are running).
        self._in_flush: dict[str, int] = {}
        # Each room's page being read for syncs, shared by the watchers syncing meanwhile.
        self._pages: dict[str, asyncio.Future[tuple[RoomPage, str]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resyncs: set[asyncio.TimerHandle] = set()
        self._lease: asyncio.Task[None] | None = None
        #: The look for lapsed leases under way (one at a time, beside the renewals).
        self._looking: asyncio.Task[None] | None = None
        self._reaping: set[str] = set()
        #: Loop time since which every renewal of this process's lease has succeeded
        #: (None: the last one failed, or it was reaped).
        self._renewing_since: float | None = None
        #: Tabs released while Redis was away: why, and the generation of their hold
        #: in Redis.
        self._released_away: dict[tuple[str, str], tuple[Reason, int]] = {}
        #: Loop time until which syncs say partial after Redis came back.
        self._partial_until = 0.0
        self._switching = asyncio.Lock()
        #: Set when the process was asked to stop (see :meth:`drain`).
        self._draining = False
        #: Tabs whose sockets the stop closed, left held for the restart grace.
        self._kept = 0
        #: Called with the (user, session id) of the tabs reaped from a dead process
        #: (their sessions' records still say "websocket"), and the seconds since the
        #: reap began (a session seen since then has a socket again somewhere).
        self.on_reaped: Callable[[list[tuple[str, str]], float], Awaitable[None]] | None = None
        #: Called with the (user, session id, state) of the tabs of this process's
        #: sockets once they are held again after this process was taken for dead (the
        #: reaper marked their sessions disconnected; their sockets are open here).
        self.on_held_again: Callable[[list[tuple[str, str, TabState]]], Awaitable[None]] | None = (
            None
        )
        #: Called with (user, session id) when a REST tab's heartbeats have lapsed: true
        #: while the session has a socket open (on any process), which keeps it present
        #: as that socket's pings keep the session alive.
        self.socket_open: Callable[[str, str], Awaitable[bool]] | None = None

    @property
    def store(self) -> PresenceStore:
        """Where presence is now: Redis, or this process's memory while Redis is away."""
        if self._degraded and self.local is not None:
            return self.local
        return self.primary

    # -- life -----------------------------------------------------------------------------

    def drain(self) -> None:
        """This process was asked to stop (a restart or a deploy): the sockets its stop
        closes leave their tabs held, and its lease is renewed for
        ``PRESENCE_RESTART_GRACE`` (see :meth:`close_tab`). Only sets a flag: it is
        called from a signal handler (:func:`presence._shutdown.on_stop_signal`)."""
        self._draining = True

    @property
    def draining(self) -> bool:
        """Whether this process is stopping with its tabs kept for the restart grace."""
        return self._draining and self.settings.restart_grace > 0

    def _lease_ttl(self) -> float:
        if self.draining:
            return max(keys.LEASE_TTL, self.settings.restart_grace)
        return keys.LEASE_TTL

    async def start(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            if await self.primary.renew(self.holder, keys.LEASE_TTL):
                self._renewing_since = asyncio.get_running_loop().time()
        self.bus.on_reconnect(self._resync_all)
        self._lease = asyncio.create_task(self._lease_loop(), name="presence-lease")

    async def stop(self) -> None:
        # Each task within a bound, cancelled again if a cancellation is lost in redis-py
        # (presence._shutdown): a shutdown that never ends is a defect.
        bound = 4 * self.settings.redis_timeout
        await stop(self._lease, bound)
        self._lease = None
        if self.draining and not self._degraded:
            # The last renewal: the tabs left held are reaped once the restart grace has
            # passed since now, unless their sockets came back meanwhile.
            await settle(self.primary.renew(self.holder, self.settings.restart_grace), bound)
            logger.info(
                "stopped with %d tabs of closed sockets still held, for %.0f s "
                "(PRESENCE_RESTART_GRACE)",
                self._kept,
                self.settings.restart_grace,
            )
        for tab in self._tabs.values():
            if tab.timer is not None:
                tab.timer.cancel()
        for shared in list(self._pages.values()):
            shared.cancel()
        for handle in self._resyncs:
            handle.cancel()
        self._resyncs.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            await stop(task, bound)

    def held_tabs(self) -> Iterable[LocalTab]:
        """The tabs this process holds (for the metrics' sampler; not to be changed)."""
        return self._tabs.values()

    # -- rules ----------------------------------------------------------------------------

    def check_room(self, identity: Identity, room: object) -> str:
        """The room's name, if ``identity`` may join and watch it.

        Raises:
            InvalidRoom: not a room name.
            RoomForbidden: the token's ``rooms`` claim does not allow it.
        """
        if not is_room(room):
            raise InvalidRoom("a room is 1-128 characters of A-Z a-z 0-9 _ . : @ -")
        assert isinstance(room, str)
        if not identity.may_enter(room):
            raise RoomForbidden(f"this token does not allow the room {room!r}")
        return room

    def check_meta(self, meta: JSON) -> JSON:
        """``meta``, if it is an object (or null: no meta) within its size limit once
        encoded, that every watcher can be sent.

        Raises:
            InvalidBody: not an object, larger than ``PRESENCE_MAX_META_BYTES`` once
                encoded, or holding what no diff could carry (NaN, Infinity, an
                unpaired surrogate), which a socket's JSON parser lets through.
        """
        if meta is not None and not isinstance(meta, dict):
            raise InvalidBody("meta must be a JSON object, or null")
        try:
            encoded = json.dumps(
                meta, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
        except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
            raise InvalidBody(
                "meta must not hold NaN, Infinity or unpaired surrogates, nor nest too deep"
            ) from None
        limit = self.settings.max_meta_bytes
        size = len(encoded)
        if size > limit:
            raise InvalidBody(f"meta is {size} bytes once encoded; the limit is {limit}")
        return meta

    # -- tabs of sockets --------------------------------------------------------------

    async def open_tab(self, user: str, session_id: str, state: TabState = "online") -> LocalTab:
        """A socket of the session opened here: its tab is present, held by this
        process, ending any grace it was in (a REST hold of it here gives way)."""
        tab = self._tab(user, session_id, state)
        tab.sockets += 1
        if tab.timer is not None:
            tab.timer.cancel()
            tab.timer = None
        tab.state = state
        await self._patiently(lambda: self._hold(tab))
        return tab

    async def set_state(self, tab: LocalTab, state: TabState) -> None:
        """The tab was shown or hidden, went idle or came back."""
        tab.state = state
        self._changed(
            await self.store.set_state(tab.user, tab.session_id, state, holder=self.holder)
        )

    async def close_tab(self, tab: LocalTab, reason: Reason) -> None:
        """A socket of the tab closed (``closed``, ``timeout``), or its session ended
        (``ended``, ``expired``): with its last socket here gone, the tab leaves after
        the grace unless it is held again meanwhile."""
        tab.sockets = max(0, tab.sockets - 1)
        if tab.sockets and reason not in ("ended", "expired"):
            return
        if reason == "closed" and self.draining:
            # Closed by this process's stop: the tab stays held under its lease, which
            # the stop renews for the restart grace, so that the socket's reconnect (to
            # this process's successor, or to another) changes nothing. One not back
            # by then is reaped as a dead process's is (node_down).
            self._forget(tab)
            self._kept += 1
            return
        await self._release(tab, reason)

    # -- rooms ----------------------------------------------------------------------------

    async def join(
        self, identity: Identity, tab: LocalTab, room: str, meta: JSON, *, watched: int = 0
    ) -> JoinResult:
        """The tab joins ``room`` with ``meta``, or sets its meta there.

        Args:
            watched: rooms the socket watches without being in them: they count
                against ``PRESENCE_MAX_ROOMS_PER_SESSION`` too.

        Raises:
            TooManyRooms: the session is in its maximum of rooms.
        """
        meta = self.check_meta(meta)
        limit = self.settings.max_rooms_per_session

        def joining() -> Awaitable[tuple[JoinResult, list[str]]]:
            return self.store.join(
                identity.user, tab.session_id, room, meta, max_rooms=max(0, limit - watched)
            )

        if tab.unheld:
            # Its hold was refused: the store may still have the tab under another
            # holder (this process's former name, reaped later as node_down), where a
            # join would find it and leave it there. Held here first.
            await self._patiently(lambda: self._hold(tab))
        result, changed = await self._patiently(joining)
        if result == "no_tab":
            # Held here but not there (the store lost it, or it just came back): hold
            # it again, then join.
            await self._patiently(lambda: self._hold(tab))
            result, changed = await self._patiently(joining)
        if result == "full":
            raise TooManyRooms(f"a session may be in at most {limit} rooms")
        if result == "no_tab":
            raise NotFound("no such session present here")
        tab.rooms[room] = meta
        tab.left.discard(room)
        self._changed(changed)
        return result

    async def update(self, tab: LocalTab, room: str, meta: JSON) -> None:
        """Sets the tab's meta in ``room``.

        Raises:
            NotInRoom: the session is not in the room.
        """
        meta = self.check_meta(meta)
        changed = await self.store.update(tab.user, tab.session_id, room, meta)
        if changed is None:
            raise NotInRoom(f"this session is not in the room {room!r}")
        tab.rooms[room] = meta
        self._changed(changed)

    async def leave(self, user: str, session_id: str, room: str, reason: Reason = "left") -> bool:
        """The session leaves ``room`` (announced after the grace, unless it joins
        again); False when it was not in it."""
        left = await self.store.leave(user, session_id, room, reason)
        # Only once the store took it: a leave it refused (Redis going away) is still
        # to be made, and the room still the tab's.
        tab = self._tabs.get((user, session_id))
        if tab is not None:
            tab.rooms.pop(room, None)
            if self._degraded:
                tab.left.add(room)
        if left is None:
            return False
        self._depart_later(user, session_id, left[0])
        return True

    # -- watching ---------------------------------------------------------------------

    async def watch(self, watcher: Watcher, room: str) -> None:
        """``watcher`` watches ``room`` from now: it is sent a sync, then every diff.
        Watching a room it watches already sends it a fresh sync (a client that saw a
        gap asks this way)."""
        local = self._rooms.get(room)
        if local is None:
            local = self._rooms[room] = _LocalRoom()
            listener = self._listener(room)
            self._listeners[room] = listener
            try:
                await self.bus.listen(self.channel(room), listener, sharded=self.sharded)
            except StoreUnavailable:
                # The bus keeps trying and says Reconnected when it has the channel,
                # and every watcher is synced again then.
                logger.warning("could not subscribe a room's channel yet; will sync on reconnect")
        local.watchers.add(watcher)
        await self._sync(watcher, room, local)

    async def unwatch(self, watcher: Watcher, room: str) -> None:
        watcher.watching.pop(room, None)
        local = self._rooms.get(room)
        if local is None:
            return
        local.watchers.discard(watcher)
        if not local.watchers:
            del self._rooms[room]
            listener = self._listeners.pop(room)
            with contextlib.suppress(StoreUnavailable):
                await self.bus.unlisten(self.channel(room), listener, sharded=self.sharded)

    async def page(self, room: str, cursor: str | None = None) -> RoomPage:
        """A page of the room's members, for REST."""
        page = await self.store.room(room, cursor=cursor, limit=self.settings.room_list_limit)
        return replace(page, partial=True) if self.partial else page

    @property
    def partial(self) -> bool:
        """Whether what this process says of rooms may miss other processes' members:
        while Redis is away, and for a lease after it is back (until every process has
        held its tabs there again)."""
        return self._degraded or asyncio.get_running_loop().time() < self._partial_until

    async def user(self, user: str) -> UserPresence:
        return await self.store.user(user)

    async def list_rooms(self, identity: Identity, limit: int = 100) -> list[tuple[str, int]]:
        """The rooms ``identity`` may watch that have members, most populous first."""
        # Read more than asked, since some may be filtered out by the rooms claim.
        found = await self.store.rooms(limit if identity.rooms is None else limit * 10)
        return [(room, count) for room, count in found if identity.may_enter(room)][:limit]

    # -- tabs over REST ---------------------------------------------------------------

    async def rest_join(
        self, identity: Identity, session: Session, room: str, meta: JSON
    ) -> JoinResult:
        """A REST session joins ``room``: it is present, held by this process, while
        its heartbeats come within twice ``HEARTBEAT_INTERVAL``."""
        tab = await self._hold_rest(session)
        return await self.join(identity, tab, room, meta)

    async def rest_leave(self, identity: Identity, session_id: str, room: str) -> bool:
        return await self.leave(identity.user, session_id, room, "left")

    async def rest_heartbeat(self, session: Session) -> None:
        """A REST heartbeat: a REST tab held here stays present, with the state the
        heartbeat gives."""
        tab = self._tabs.get((session.user, session.id))
        if tab is not None and not tab.sockets:
            await self._hold_rest(session)

    async def unloading(self, user: str, session_id: str) -> None:
        """The page of a REST session is unloading (its beacon came): its rooms are
        left, announced after the grace unless it comes back."""
        for room in await self.store.tab_rooms(user, session_id):
            await self.leave(user, session_id, room, "left")

    async def session_ended(self, user: str, session_id: str, reason: str) -> None:
        """A session ended somewhere: a REST tab of it held here goes (a socket's goes
        when the socket ends)."""
        tab = self._tabs.get((user, session_id))
        if tab is None or tab.sockets:
            return
        await self._release(tab, "expired" if reason == "expired" else "ended")

    # -- internals: tabs --------------------------------------------------------------

    def _tab(self, user: str, session_id: str, state: TabState) -> LocalTab:
        tab = self._tabs.get((user, session_id))
        if tab is None:
            tab = self._tabs[(user, session_id)] = LocalTab(user, session_id, state)
        return tab

    async def _hold(self, tab: LocalTab) -> None:
        try:
            tab.gen, changed = await self.store.hold(
                tab.user, tab.session_id, holder=self.holder, state=tab.state
            )
        except StoreError:
            tab.unheld = True
            raise
        tab.unheld = False
        self._changed(changed)

    async def _patiently(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """Runs ``call``, a presence operation that can safely run twice (each is
        idempotent: see :mod:`presence.stores.presence_redis`), and tries it again when
        the store did not answer within the call's bound while Redis is not known to be
        away: in a reconnect storm a refusal would send the client off for seconds, and
        a tab left unheld is reaped as ``node_down`` though its socket is back.

        Bounded: at most :data:`_RETRIES` more attempts, each after a full-jitter delay
        (from :data:`_RETRY_FIRST` s, doubling), none begun later than half the offline
        grace after the first; none once the session store's breaker is open (Redis
        away: the caller's refusal, or the switch to this process's memory, is due).

        Raises:
            StoreUnavailable: the last attempt's failure.
        """
        loop = asyncio.get_running_loop()
        until = loop.time() + self.settings.offline_grace / 2
        ceiling = _RETRY_FIRST
        for attempt in range(_RETRIES + 1):
            try:
                return await call()
            except StoreUnavailable:
                pause = _jitter() * ceiling
                if (
                    attempt == _RETRIES
                    or self._degraded
                    or self.is_degraded()
                    or loop.time() + pause > until
                ):
                    raise
            metrics.PRESENCE_RETRIES.inc()
            await asyncio.sleep(pause)
            ceiling *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _forget(self, tab: LocalTab) -> None:
        """This process holds the tab no longer (its timer cancelled); the store is told
        by the caller, or not at all."""
        if tab.timer is not None:
            tab.timer.cancel()
            tab.timer = None
        if self._tabs.get((tab.user, tab.session_id)) is tab:
            del self._tabs[(tab.user, tab.session_id)]

    async def _release(self, tab: LocalTab, reason: Reason) -> None:
        self._forget(tab)
        # Tried again as a hold is: a release lost to a slow Redis (thousands of sockets
        # closing at once) leaves the tab held under this live process's name for good,
        # a member that never leaves. (A release that ran but whose reply was lost runs
        # again harmlessly: it is of this generation of the tab only.)
        since = await self._patiently(
            lambda: self.store.release(
                tab.user, tab.session_id, reason, holder=self.holder, gen=tab.gen
            )
        )
        if since is not None:
            self._depart_later(tab.user, tab.session_id, since)
        if self._degraded:
            # Released in memory only: Redis still has it held, and is told when it is
            # back, or the reap of this process's old name would say node_down.
            self._released_away[(tab.user, tab.session_id)] = (reason, tab.primary_gen)

    async def _hold_rest(self, session: Session) -> LocalTab:
        state: TabState = "online" if session.state == "active" else "away"
        known = self._tabs.get((session.user, session.id))
        tab = self._tab(session.user, session.id, state)
        if known is None or tab.state != state or tab.unheld:
            # Held (again) only when new here or its state changed: a heartbeat that
            # changes nothing costs nothing more than its timer.
            tab.state = state
            await self._hold(tab)
        if tab.timer is not None:
            tab.timer.cancel()
        self._arm_lapse(tab)
        return tab

    def _arm_lapse(self, tab: LocalTab) -> None:
        """A REST tab lapses unless a heartbeat comes within twice the interval."""
        tab.timer = asyncio.get_running_loop().call_later(
            2 * self.settings.heartbeat_interval, self._rest_lapsed, tab
        )

    def _rest_lapsed(self, tab: LocalTab) -> None:
        tab.timer = None
        if not tab.sockets:
            self._spawn(self._lapse(tab))

    async def _lapse(self, tab: LocalTab) -> None:
        # A session that joined over REST here but keeps a socket open elsewhere (as a
        # page whose socket is on another process behind the balancer) sends no REST
        # heartbeats: its socket's pings keep it alive, and so they keep it present.
        # Asked again at each lapse, so it leaves (timeout) within twice the interval of
        # the socket's close or its process's reap. A store that cannot say keeps it,
        # for one more interval, rather than announce a wrong leave.
        check = self.socket_open
        if check is not None:
            try:
                open_elsewhere = await check(tab.user, tab.session_id)
            except StoreError:
                open_elsewhere = True
            if open_elsewhere:
                if (
                    tab.timer is None
                    and not tab.sockets
                    and self._tabs.get((tab.user, tab.session_id)) is tab
                ):
                    self._arm_lapse(tab)
                return
        if tab.timer is None and not tab.sockets:  # no heartbeat nor socket came meanwhile
            await self._release(tab, "timeout")

    # -- internals: diffs -----------------------------------------------------------------

    def _changed(self, rooms: list[str]) -> None:
        for room in rooms:
            if room not in self._flushing:
                self._flushing.add(room)
                asyncio.get_running_loop().call_later(
                    self.settings.diff_window, self._flush_later, room
                )

    def _flush_later(self, room: str) -> None:
        self._spawn(self._flush(room))

    async def _flush(self, room: str) -> None:
        # No sooner than the room's fan-out in progress here has ended: while this
        # process is still sending one diff, the changes since wait and go in the next
        # together. A window is then as long as the fan-out takes (one to thousands of
        # watchers), so a crowd joining costs each watcher's socket as many frames as
        # the process can send, not one a window whatever the cost (bench/analysis.md).
        local = self._rooms.get(room)
        while local is not None and local.fanning is not None:
            await asyncio.shield(local.fanning)
            local = self._rooms.get(room)
        self._flushing.discard(room)
        self._in_flush[room] = self._in_flush.get(room, 0) + 1
        try:
            diff = await self.store.flush(room)
        except StoreUnavailable:
            logger.warning("could not flush a room's changes; trying again")
            self._changed([room])
            return
        finally:
            if self._in_flush[room] > 1:
                self._in_flush[room] -= 1
            else:
                del self._in_flush[room]
        if diff is not None:
            metrics.diff_published(diff)

    def _depart_later(self, user: str, session_id: str, since: float) -> None:
        delay = max(0.0, since + self.settings.offline_grace - time.time())
        asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._depart(user, session_id, since))
        )

    async def _depart(self, user: str, session_id: str, since: float) -> None:
        self._changed(await self.store.depart(user, session_id, since=since))

    def _listener(self, room: str) -> Callable[[str], Awaitable[None]]:
        async def heard(data: str) -> None:
            await self._heard(room, data)

        return heard

    async def _heard(self, room: str, data: str) -> None:
        local = self._rooms.get(room)
        if local is None:
            return
        try:
            diff = events.decode_diff(data)
        except ValueError:
            logger.warning("ignored a malformed room diff on the bus")
            return
        if local.seq is not None and diff.seq <= local.seq:
            return  # heard already (or older than what this process knows)
        gap = local.seq is not None and diff.seq != local.seq + 1
        local.seq = diff.seq
        # One text (and one frame, presence._fanout) for every watcher here.
        text = _fanout.Shared(self.encode_diff(diff, self.settings.room_list_limit))
        local.recent.append((diff.seq, text))
        if gap:
            # This process missed a diff (its pub/sub dropped one): every watcher here
            # is behind, so each gets a fresh sync rather than a wrong list.
            for watcher in list(local.watchers):
                self._spawn(self._sync(watcher, room, local))
            return
        watchers = list(local.watchers)
        if len(watchers) > _SLICE:
            # A fan-out in slices: this room's flushes here wait for its end.
            local.fanning = asyncio.get_running_loop().create_future()
        try:
            metrics.fanned_out(await self._fan_out(room, diff.seq, text, watchers, local))
        finally:
            if local.fanning is not None:
                local.fanning.set_result(None)
                local.fanning = None

    async def _fan_out(
        self, room: str, seq: int, text: str, watchers: list[Watcher], local: _LocalRoom
    ) -> int:
        """Sends the diff numbered ``seq`` to each watcher that has the one before it;
        returns how many took it."""
        sent = 0
        for index, watcher in enumerate(watchers):
            if index and not index % _SLICE:
                # Thousands of watchers take tens of milliseconds: joins, syncs and the
                # lease renewal get the loop between slices. The bus hands this room's
                # next diff over only once this one is out, so each watcher still gets
                # them in order.
                # (One that stopped watching meanwhile has no seq for the room.)
                await asyncio.sleep(0)
            had = watcher.watching.get(room)
            if had is None:
                continue  # its sync is on the way; it takes this one from `recent`
            if had == seq - 1 and await watcher.offer(text):
                watcher.watching[room] = seq
                sent += 1
            elif had < seq:
                # It fell behind (a diff it could not take): sync it again.
                self._spawn(self._sync(watcher, room, local))
        return sent

    async def _sync(
        self, watcher: Watcher, room: str, local: _LocalRoom, retry: float | None = None
    ) -> None:
        seq = -1
        for _ in range(_SYNC_ATTEMPTS):
            watcher.watching[room] = None
            try:
                page, sync = await self._sync_page(room)
            except StoreUnavailable:
                self._resync_later(watcher, room, local, retry or _RESYNC_FIRST)
                break
            if watcher not in local.watchers:
                return
            await watcher.send(sync)
            seq = page.seq
            behind = [(s, text) for s, text in local.recent if s > seq]
            if behind and behind[0][0] != seq + 1:
                continue  # what came since the page is not all here: read it again
            for s, text in behind:
                await watcher.send(text)
                seq = s
            # The page may be ahead of the bus (read after a flush whose diff is still
            # on its way here): `local.seq` stays what the bus delivered, or that diff
            # would be taken for heard already and withheld from every other watcher.
            watcher.watching[room] = seq
            return
        # Not synced (the store did not answer in time, or what came since the page
        # never lined up): left behind, so that the next diff heard here syncs it
        # again. Left "on its way" (None), every diff would pass it over for good. (A
        # sync of it that succeeded meanwhile has set its seq: that one stands.)
        if watcher in local.watchers and room in watcher.watching:
            if watcher.watching[room] is None:
                watcher.watching[room] = seq

    def _resync_later(self, watcher: Watcher, room: str, local: _LocalRoom, after: float) -> None:
        def due() -> None:
            self._resyncs.discard(handle)
            # Still watching, and still behind: no sync of it has begun since.
            if watcher in local.watchers and watcher.watching.get(room) == -1:
                self._spawn(self._sync(watcher, room, local, min(after * 2, _RESYNC_CAP)))

        handle = asyncio.get_running_loop().call_later(after, due)
        self._resyncs.add(handle)

    async def _sync_page(self, room: str) -> tuple[RoomPage, str]:
        """The room's page and its sync's text. Watchers syncing at once share one read
        and one encoding: in a crowd joining a room each join watches it, and a read
        and an encoding of the whole room for each would make N joins cost N² members.
        A page read before a watcher came is as good as one read after: what changed
        since comes in the diffs after its seq."""
        shared = self._pages.get(room)
        if shared is None:
            shared = self._pages[room] = asyncio.ensure_future(self._read_page(room))
            shared.add_done_callback(functools.partial(self._page_read, room))
        return await asyncio.shield(shared)

    async def _read_page(self, room: str) -> tuple[RoomPage, str]:
        page = await self.page(room)
        return page, self.encode_sync(page)

    def _page_read(self, room: str, shared: asyncio.Future[tuple[RoomPage, str]]) -> None:
        if self._pages.get(room) is shared:
            del self._pages[room]
        if not shared.cancelled():
            shared.exception()  # each watcher waiting had it; none left is no warning

    async def _resync_all(self) -> None:
        # A read begun before (on the bus's old connection, or on the store presence
        # just left) is not shared with these: each room is read afresh.
        self._pages.clear()
        for room, local in list(self._rooms.items()):
            local.seq = None
            local.recent.clear()
            for watcher in list(local.watchers):
                self._spawn(self._sync(watcher, room, local))

    # -- internals: the lease, and Redis going and coming back --------------------------

    async def _lease_loop(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            # Renewals keep a schedule of their own: after one that ran late (a loop busy
            # with a storm of handshakes, a renewal that waited behind it) the next is
            # due an interval after the last was due, not an interval after it ended.
            # Late by more than an interval, it runs at once and the schedule restarts.
            due += keys.LEASE_RENEW_INTERVAL
            await asyncio.sleep(max(0.0, due - loop.time()))
            if loop.time() - due > keys.LEASE_RENEW_INTERVAL:
                due = loop.time()
            try:
                await self._follow_the_store()
                if self._degraded:
                    self._renewing_since = None
                    continue  # no lease, no reaping: this process sees only itself
                if not await self.primary.renew(self.holder, self._lease_ttl()):
                    logger.warning(
                        "this process was taken for dead and reaped; holding its tabs again"
                    )
                    self._renewing_since = None
                    await self._hold_all_again(reaped=True)
                if self._renewing_since is None:
                    self._renewing_since = loop.time()
                # A lease lapsed while this process could not renew its own either (Redis
                # away, or this process stalled or cut off) says nothing of its holder:
                # every lease lapsed then. Others are taken for dead only once this
                # process has renewed its own for a whole lease, in which time every
                # live process has renewed its own too.
                if loop.time() - self._renewing_since < keys.LEASE_TTL + keys.LEASE_RENEW_INTERVAL:
                    continue
                # The look for lapsed leases goes beside the renewals, never in front of
                # the next one: it shares the batch with every user's calls, and in a
                # reconnect storm it waited behind them for over a second, so that the
                # busy process's own lease went unrenewed past the grace and it was
                # reaped while alive (bench/analysis.md, the storm into rooms).
                if self._looking is None or self._looking.done():
                    self._looking = asyncio.ensure_future(self._look_for_lapsed())
                    self._tasks.add(self._looking)
                    self._looking.add_done_callback(self._done)
            except StoreUnavailable:
                self._renewing_since = None
                logger.warning("presence lease: store unavailable; will retry")
            except Exception:
                logger.exception("presence lease tick failed")

    async def _look_for_lapsed(self) -> None:
        """Claims the processes whose lease lapsed and reaps each (after the grace)."""
        try:
            lapsed = await self.primary.lapsed()
        except StoreUnavailable:
            logger.warning("presence lease: could not look for lapsed leases; will retry")
            return
        for holder, renewed in lapsed:
            if holder != self.holder and holder not in self._reaping:
                self._reaping.add(holder)
                self._spawn(self._reap(holder, renewed))

    async def _follow_the_store(self) -> None:
        """Moves presence into this process's memory when the session store serves from
        memory (Redis is away), and back into Redis when it is back."""
        if self._make_local is None:
            return
        degraded = self.is_degraded()
        if degraded == self._degraded:
            return
        async with self._switching:
            self._degraded = degraded
            if degraded:
                logger.warning("Redis is away: presence is this process's alone (partial)")
                self.local = self._make_local()
                await self.local.open()
                for tab in list(self._tabs.values()):
                    tab.primary_gen = tab.gen
                    await self._hold_in_full(tab)
            else:
                logger.warning("Redis is back: this process's tabs are held there again")
                if self.local is not None:
                    await self.local.close()
                self.local = None
                await self._hold_all_again()
                # The other processes hold theirs again within a lease (each follows its
                # store within a tick of its own breaker closing): until then a sync from
                # Redis may miss what they did meanwhile, so it says partial, and every
                # watcher is synced afresh once it is over.
                loop = asyncio.get_running_loop()
                settle = keys.LEASE_TTL + keys.LEASE_RENEW_INTERVAL
                self._partial_until = loop.time() + settle
                loop.call_later(settle, lambda: self._spawn(self._resync_all()))
            await self._resync_all()

    async def _hold_all_again(self, *, reaped: bool = False) -> None:
        """Takes a new name and holds every tab held here again, rooms and metas with
        it, then reaps the old name: what this process held under it and holds no
        longer (tabs that went while it was cut off) leaves, what it still holds does not
        (held again under the new name first, so the reaper passes it over). ``reaped``:
        this process was taken for dead, so its sockets' sessions are theirs again."""
        old, self.holder = self.holder, _holder_name()
        await self.primary.renew(self.holder, keys.LEASE_TTL)
        renewed = time.monotonic()
        # Tabs released while Redis was away leave with their own reason, not node_down.
        released, self._released_away = self._released_away, {}
        for (user, session_id), (reason, gen) in released.items():
            await self.primary.release(user, session_id, reason, holder=old, gen=gen)
        for tab in list(self._tabs.values()):
            if time.monotonic() - renewed >= keys.LEASE_RENEW_INTERVAL:
                # Thousands of tabs take longer to hold again than the lease lasts, and
                # the lease loop waits for this: renewed meanwhile, or the new name
                # lapses too and is reaped, and so on.
                await self.primary.renew(self.holder, keys.LEASE_TTL)
                renewed = time.monotonic()
            await self._hold_in_full(tab)
        changed, _ = await self.primary.reap(old)
        self._changed(changed)
        if reaped and self.on_held_again is not None:
            await self.on_held_again(
                [(t.user, t.session_id, t.state) for t in self._tabs.values() if t.sockets]
            )

    async def _hold_in_full(self, tab: LocalTab) -> None:
        await self._hold(tab)
        for room, meta in list(tab.rooms.items()):
            limit = self.settings.max_rooms_per_session
            _, changed = await self.store.join(
                tab.user, tab.session_id, room, meta, max_rooms=limit
            )
            self._changed(changed)
        # A hold keeps the rooms the store has for the tab (a refresh keeps them): the
        # ones it left while Redis was away are left there too, or they would come back.
        for room in sorted(tab.left):
            left = await self.store.leave(tab.user, tab.session_id, room, "left")
            if left is not None:
                self._depart_later(tab.user, tab.session_id, left[0])
        tab.left.clear()

    async def _reap(self, holder: str, renewed: float) -> None:
        try:
            # The grace runs from the dead process's last renewal, as from a closed
            # socket: tabs held again elsewhere meanwhile are not reaped.
            await asyncio.sleep(max(0.0, renewed + self.settings.offline_grace - time.time()))
            loop = asyncio.get_running_loop()
            told: set[str] = set()
            waiting: set[str] = set()
            last_told = -_REAP_FLUSH_EVERY  # the first batch's rooms are told at once

            def progress(rooms: list[str]) -> None:
                # The batches' rooms are flushed while the reap goes on, so the leaves
                # stream out and the last is not queued behind all of it; at most once
                # a _REAP_FLUSH_EVERY, so that a room's thousand leaves go in a few
                # diffs rather than one a batch.
                nonlocal last_told
                waiting.update(rooms)
                if loop.time() - last_told >= _REAP_FLUSH_EVERY:
                    last_told = loop.time()
                    told.update(waiting)
                    self._changed(sorted(waiting))
                    waiting.clear()

            # Reaped only if still lapsed: one that renewed meanwhile was stalled or cut
            # off, not dead, and its members stay.
            began = loop.time()
            changed, reaped = await self.primary.reap(holder, if_lapsed=True, progress=progress)
            # The rest (every room, from a store that reaps in one step).
            self._changed([room for room in changed if room in waiting or room not in told])
            if self.on_reaped is not None and reaped:
                # The sessions are marked disconnected once the rooms' diffs are out:
                # thousands of them are large scripts that would otherwise sit in
                # Redis in front of the flushes (bench/analysis.md, crash reclaim).
                await self._flushed(changed)
                await self.on_reaped(reaped, loop.time() - began)
        finally:
            self._reaping.discard(holder)

    async def _flushed(self, rooms: list[str]) -> None:
        """Waits until none of ``rooms`` has a flush due or running here, within a
        bound (a flush that keeps failing retries on its own)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.diff_window + 4 * self.settings.redis_timeout
        pending = set(rooms)
        while loop.time() < deadline:
            pending = {room for room in pending if room in self._flushing or room in self._in_flush}
            if not pending:
                return
            await asyncio.sleep(max(0.005, self.settings.diff_window / 2))

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a presence task failed", exc_info=task.exception())


def _holder_name() -> str:
    # A name per process run: a process reaped while cut off comes back as another.
    return "p-" + secrets.token_urlsafe(9)
