"""Presence in this process's memory: the store without Redis, and the part of the
fallback that serves while Redis is away. It computes members with the pure functions
of :mod:`presence.rooms`, as the Redis store's scripts do."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .. import events
from ..models import JSON, Diff, Joined, Member, Reason, RoomPage, Tab, TabState, UserPresence
from ..rooms import coalesce, last_departure, member_of, user_status
from .presence_base import JoinResult

#: Called with (room, encoded diff) in the same step as the flush that made it.
Publish = Callable[[str, str], None]
#: Called with (type, scope, fields) for each webhook event, in the same step as the
#: change it tells of (see presence.webhooks): the scope is ``u:<user>`` or
#: ``r:<room>``, which numbers it.
Emit = Callable[[str, str, dict[str, Any]], None]

# Users remembered as last seen after they went offline; the oldest are forgotten.
_LAST_SEEN_MAX = 100_000
# Empty rooms whose numbering is remembered (watched, or emptied), the oldest forgotten.
_EMPTY_ROOMS_MAX = 100_000
# Reaped holders remembered, so a process back from a partition learns it was reaped.
_REAPED_MAX = 10_000


@dataclass(slots=True)
class _Tab:
    holder: str
    gen: int
    tab: Tab


@dataclass(slots=True)
class _Room:
    # A room's numbering starts at its creation time in ms: a room emptied, forgotten
    # and made again later numbers on from above its old diffs (a room has at most one
    # diff a window, far fewer than one a millisecond), so that a watcher still holding
    # the old numbering sees a gap and syncs, instead of taking new diffs for old.
    seq: int
    members: dict[str, Member] = field(default_factory=dict)
    # For each user changed since the last flush, their member as last published.
    published: dict[str, Member | None] = field(default_factory=dict)
    departures: dict[str, tuple[Reason, float]] = field(default_factory=dict)


class MemoryPresenceStore:
    """Presence in dicts.

    Args:
        publish: hands a room's diff to the bus, called inside :meth:`flush`.
        clock: POSIX seconds; injectable for tests.
    """

    name = "memory"

    def __init__(
        self, publish: Publish | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.publish = publish
        self.clock = clock
        self._tabs: dict[str, dict[str, _Tab]] = {}
        self._rooms: dict[str, _Room] = {}
        # The seq of rooms without members, so that a watcher of an empty room and the
        # room's first diff agree on the numbering.
        self._empty: OrderedDict[str, int] = OrderedDict()
        self._last_seen: OrderedDict[str, float] = OrderedDict()
        self._leases: dict[str, tuple[float, float]] = {}  # holder -> (expiry, renewed)
        self._reaped: OrderedDict[str, None] = OrderedDict()
        self._gen = 0
        #: Where webhook events go (none: this store tells no one, as while it stands in
        #: for Redis during an outage, when Redis tells once it is back).
        self.emit: Emit | None = None

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # -- tabs -----------------------------------------------------------------------------

    async def hold(
        self, user: str, session_id: str, *, holder: str, state: TabState
    ) -> tuple[int, list[str]]:
        tabs = self._tabs.setdefault(user, {})
        came = not tabs
        self._gen += 1
        held = tabs.get(session_id)
        tab = (
            Tab(session_id, state) if held is None else replace(held.tab, state=state, leaving=None)
        )
        tabs[session_id] = _Tab(holder, self._gen, tab)
        changed = self._recompute(user, self._rooms_of(user))
        if came and self.emit is not None:
            status = user_status(each.tab for each in tabs.values())
            self.emit("user.online", "u:" + user, {"user": user, "status": status})
        return self._gen, changed

    async def set_state(
        self, user: str, session_id: str, state: TabState, *, holder: str
    ) -> list[str]:
        held = self._tabs.get(user, {}).get(session_id)
        if held is None or held.holder != holder or held.tab.state == state:
            return []
        held.tab = replace(held.tab, state=state)
        return self._recompute(user, self._rooms_of(user))

    async def release(
        self, user: str, session_id: str, reason: Reason, *, holder: str, gen: int
    ) -> float | None:
        held = self._tabs.get(user, {}).get(session_id)
        if held is None or held.holder != holder or held.gen != gen:
            return None
        now = self.clock()
        if held.tab.leaving is None:
            held.tab = replace(held.tab, leaving=(reason, now))
        return held.tab.leaving[1] if held.tab.leaving else now

    async def depart(self, user: str, session_id: str, *, since: float) -> list[str]:
        tabs = self._tabs.get(user, {})
        held = tabs.get(session_id)
        if held is None:
            return []
        tab = held.tab
        touched = list(tab.rooms)
        departures: dict[str, tuple[Reason, float]] = {}
        if tab.leaving is not None and tab.leaving[1] <= since:
            for room, joined in tab.rooms.items():
                # The first of the reasons it had to go: its own leaving, or the tab's.
                left = joined.leaving
                departures[room] = (
                    left if left is not None and left[1] < tab.leaving[1] else tab.leaving
                )
            del tabs[session_id]
            self._seen(user, tab.leaving[1])
            if not tabs:
                del self._tabs[user]
                self._went_offline(user, tab.leaving[0])
            # The user's status may change in every room they are still in.
            return self._recompute(user, {*touched, *self._rooms_of(user)}, departures)
        gone = {
            room: joined.leaving
            for room, joined in tab.rooms.items()
            if joined.leaving is not None and joined.leaving[1] <= since
        }
        if not gone:
            return []
        held.tab = replace(
            tab, rooms={room: j for room, j in tab.rooms.items() if room not in gone}
        )
        for room, departure in gone.items():
            if departure is not None:
                departures[room] = departure
                self._seen(user, departure[1])
        return self._recompute(user, list(gone), departures)

    async def join(
        self,
        user: str,
        session_id: str,
        room: str,
        meta: JSON,
        *,
        max_rooms: int,
    ) -> tuple[JoinResult, list[str]]:
        held = self._tabs.get(user, {}).get(session_id)
        if held is None:
            return "no_tab", []
        tab = held.tab
        now = self.clock()
        current = tab.rooms.get(room)
        if current is None:
            if sum(1 for j in tab.rooms.values() if j.leaving is None) >= max_rooms:
                return "full", []
            joined = Joined(now, meta, self._next_meta())
            result: JoinResult = "joined"
        elif current.leaving is not None:
            joined = Joined(current.joined_at, meta, self._next_meta())
            result = "joined"
        else:
            joined = replace(current, meta=meta, meta_order=self._next_meta())
            result = "updated"
        held.tab = replace(tab, rooms={**tab.rooms, room: joined})
        return result, self._recompute(user, [room])

    async def update(self, user: str, session_id: str, room: str, meta: JSON) -> list[str] | None:
        held = self._tabs.get(user, {}).get(session_id)
        current = None if held is None else held.tab.rooms.get(room)
        if held is None or current is None or current.leaving is not None:
            return None
        joined = replace(current, meta=meta, meta_order=self._next_meta())
        held.tab = replace(held.tab, rooms={**held.tab.rooms, room: joined})
        return self._recompute(user, [room])

    async def leave(
        self, user: str, session_id: str, room: str, reason: Reason
    ) -> tuple[float, list[str]] | None:
        held = self._tabs.get(user, {}).get(session_id)
        current = None if held is None else held.tab.rooms.get(room)
        if held is None or current is None or current.leaving is not None:
            return None
        now = self.clock()
        joined = replace(current, leaving=(reason, now))
        held.tab = replace(held.tab, rooms={**held.tab.rooms, room: joined})
        return now, []

    async def reap(
        self,
        holder: str,
        *,
        if_lapsed: bool = False,
        progress: Callable[[list[str]], None] | None = None,
    ) -> tuple[list[str], list[tuple[str, str]]]:
        lease = self._leases.get(holder)
        if if_lapsed and holder not in self._reaped and lease and lease[0] > self.clock():
            return [], []  # renewed since it was found lapsed: alive
        self._leases.pop(holder, None)
        renewed = lease[1] if lease else self.clock()
        changed: set[str] = set()
        reaped: list[tuple[str, str]] = []
        for user in list(self._tabs):
            tabs = self._tabs[user]
            mine = [sid for sid, held in tabs.items() if held.holder == holder]
            if not mine:
                continue
            departures: dict[str, tuple[Reason, float]] = {}
            rooms: set[str] = set()
            reason: Reason = "node_down"
            for sid in mine:
                tab = tabs.pop(sid).tab
                if tab.leaving is not None:
                    reason = tab.leaving[0]
                reaped.append((user, sid))
                for room, joined in tab.rooms.items():
                    # What was leaving already keeps the first reason it had to go.
                    departures[room] = _first(joined.leaving, tab.leaving) or (
                        "node_down",
                        renewed,
                    )
                    rooms.add(room)
            self._seen(user, renewed)
            if not tabs:
                del self._tabs[user]
                self._went_offline(user, reason)
            changed.update(self._recompute(user, rooms | set(self._rooms_of(user)), departures))
        self._reaped[holder] = None
        while len(self._reaped) > _REAPED_MAX:
            self._reaped.popitem(last=False)
        if progress is not None and changed:
            progress(sorted(changed))  # one step here: told once
        return sorted(changed), reaped

    # -- rooms ----------------------------------------------------------------------------

    async def flush(self, room: str) -> Diff | None:
        state = self._rooms.get(room)
        if state is None or not state.published:
            return None
        current = {user: state.members.get(user) for user in state.published}
        joins, updates, leaves = coalesce(state.published, current, state.departures)
        # Webhooks tell what watchers were told before: a user who joined and left inside
        # the window was never announced, so is no member.left either.
        unannounced = (
            {leave.user for leave in leaves if state.published.get(leave.user) is None}
            if self.emit is not None
            else set()
        )
        state.published.clear()
        state.departures.clear()
        if not (joins or updates or leaves):
            return None
        state.seq += 1
        diff = Diff(room, state.seq, joins, updates, leaves, len(state.members))
        if self.publish is not None:
            self.publish(room, events.encode_diff(diff))
        if self.emit is not None:
            self._emit_diff(self.emit, diff, unannounced)
        if not state.members:
            del self._rooms[room]
            self._remember_empty(room, state.seq)
        return diff

    async def room(self, room: str, *, cursor: str | None = None, limit: int = 1000) -> RoomPage:
        state = self._rooms.get(room)
        if state is None:
            seq = self._empty.get(room)
            if seq is None:
                seq = int(self.clock() * 1000)
                self._remember_empty(room, seq)
            state = _Room(seq)
        users = sorted(u for u in state.members if cursor is None or u > cursor)
        page = users[:limit]
        more = len(users) > limit
        return RoomPage(
            room=room,
            seq=state.seq,
            count=len(state.members),
            members=tuple(state.members[u] for u in page),
            next=page[-1] if more and page else None,
        )

    async def rooms(self, limit: int) -> list[tuple[str, int]]:
        counts = [(room, len(state.members)) for room, state in self._rooms.items()]
        counts = [(room, count) for room, count in counts if count]
        return sorted(counts, key=lambda pair: (-pair[1], pair[0]))[:limit]

    async def user(self, user: str) -> UserPresence:
        tabs = [held.tab for held in self._tabs.get(user, {}).values()]
        return UserPresence(
            user=user,
            status=user_status(tabs),
            sessions=len(tabs),
            last_seen=self.clock() if tabs else self._last_seen.get(user),
            rooms=tuple(sorted(self._rooms_of(user))),
        )

    async def tab_rooms(self, user: str, session_id: str) -> list[str]:
        held = self._tabs.get(user, {}).get(session_id)
        if held is None:
            return []
        return sorted(r for r, j in held.tab.rooms.items() if j.leaving is None)

    # -- leases ---------------------------------------------------------------------------

    async def renew(self, holder: str, ttl: float) -> bool:
        if holder in self._reaped:
            return False
        now = self.clock()
        self._leases[holder] = (now + ttl, now)
        return True

    async def lapsed(self) -> list[tuple[str, float]]:
        now = self.clock()
        return [(h, renewed) for h, (expiry, renewed) in self._leases.items() if expiry <= now]

    # -- internals ------------------------------------------------------------------------

    def _went_offline(self, user: str, reason: Reason) -> None:
        if self.emit is not None:
            seen = self._last_seen.get(user, self.clock())
            fields = {"user": user, "last_seen": int(seen * 1000), "reason": reason}
            self.emit("user.offline", "u:" + user, fields)

    @staticmethod
    def _emit_diff(emit: Emit, diff: Diff, unannounced: set[str]) -> None:
        # As the flush script does: occupied first, the joins, the leaves, vacated last.
        scope, count = "r:" + diff.room, diff.count
        leaves = [leave for leave in diff.leaves if leave.user not in unannounced]
        before = count - len(diff.joins) + len(leaves)
        if before == 0 and count > 0:
            emit("room.occupied", scope, {"room": diff.room, "count": count})
        for member in diff.joins:
            joined: dict[str, Any] = {"room": diff.room, "user": member.user}
            joined |= {"status": member.status, "sessions": member.sessions}
            emit("member.joined", scope, joined | {"meta": member.meta, "count": count})
        for leave in leaves:
            left: dict[str, Any] = {"room": diff.room, "user": leave.user}
            left |= {"reason": leave.reason, "last_seen": int(leave.last_seen * 1000)}
            emit("member.left", scope, left | {"count": count})
        if before > 0 and count == 0:
            emit("room.vacated", scope, {"room": diff.room, "count": count})

    def _next_meta(self) -> int:
        self._gen += 1
        return self._gen

    def _new_room(self, room: str) -> _Room:
        seq = self._empty.pop(room, None)
        return _Room(seq=int(self.clock() * 1000) if seq is None else seq)

    def _remember_empty(self, room: str, seq: int) -> None:
        self._empty[room] = seq
        self._empty.move_to_end(room)
        while len(self._empty) > _EMPTY_ROOMS_MAX:
            self._empty.popitem(last=False)

    def _rooms_of(self, user: str) -> set[str]:
        return {room for held in self._tabs.get(user, {}).values() for room in held.tab.rooms}

    def _seen(self, user: str, when: float) -> None:
        if when >= self._last_seen.get(user, 0.0):
            self._last_seen[user] = when
            self._last_seen.move_to_end(user)
        while len(self._last_seen) > _LAST_SEEN_MAX:
            self._last_seen.popitem(last=False)

    def _recompute(
        self,
        user: str,
        rooms: set[str] | list[str],
        departures: dict[str, tuple[Reason, float]] | None = None,
    ) -> list[str]:
        """Brings the user's member in each of ``rooms`` up to date; returns the rooms
        in which it changed (each now waiting for its flush)."""
        tabs = [held.tab for held in self._tabs.get(user, {}).values()]
        status = user_status(tabs)
        now = self.clock()
        changed = []
        for room in sorted(rooms):
            state = self._rooms.get(room)
            before = None if state is None else state.members.get(user)
            after = member_of(
                user, room, tabs, status, None if before is None else before.since, now
            )
            if before == after:
                continue
            if state is None:
                state = self._rooms[room] = self._new_room(room)
            if user not in state.published:
                state.published[user] = before
            if after is None:
                del state.members[user]
                departure = (departures or {}).get(room) or last_departure(user, room, tabs)
                state.departures[user] = departure or ("left", now)
            else:
                state.members[user] = after
                state.departures.pop(user, None)
            changed.append(room)
        return changed


def _first(
    one: tuple[Reason, float] | None, other: tuple[Reason, float] | None
) -> tuple[Reason, float] | None:
    """The earlier of two departures (a room's own leaving first on a tie)."""
    if one is None:
        return other
    if other is None or one[1] <= other[1]:
        return one
    return other
