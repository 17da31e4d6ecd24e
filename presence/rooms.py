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
  diff: a join and a leave of the same user inside a window cancel, repeated updates
  keep the last;
- :class:`View` is what a watcher holds: a sync, then diffs applied in order, with a
  gap in ``seq`` detected rather than applied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from .sessions import _iso

JSON: TypeAlias = Any
Status = Literal["online", "away", "offline"]
#: Why a member left: the client left the room or unloaded the page (``left``), the
#: socket closed and the grace passed (``closed``), no pong or REST heartbeat in time
#: (``timeout``), the session was deleted or cleaned up (``ended``), its TTL or lifetime
#: ran out (``expired``), or the process holding it died (``node_down``).
Reason = Literal["left", "closed", "timeout", "ended", "expired", "node_down"]
REASONS: tuple[Reason, ...] = ("left", "closed", "timeout", "ended", "expired", "node_down")
#: A tab's own state: ``online`` (an open socket with a visible, active tab, or a fresh
#: active REST heartbeat) or ``away`` (hidden or idle).
TabState = Literal["online", "away"]

ROOM_PATTERN = re.compile(r"[A-Za-z0-9_.:@\-]{1,128}")


def is_room(name: object) -> bool:
    """True for a valid room name: 1-128 characters of ``[A-Za-z0-9_.:@-]``."""
    return isinstance(name, str) and ROOM_PATTERN.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Member:
    """A user present in a room.

    Attributes:
        user: the user (a JWT's ``sub``).
        status: the user's status, across every tab and device.
        sessions: how many of the user's sessions are in the room.
        meta: the meta most recently set by any of them (client JSON).
        since: when the user came into the room (POSIX seconds).
    """

    user: str
    status: Status
    sessions: int
    meta: JSON
    since: float

    def to_json(self) -> dict[str, JSON]:
        return {
            "user": self.user,
            "status": self.status,
            "sessions": self.sessions,
            "meta": self.meta,
            "since": _iso(self.since),
        }


@dataclass(frozen=True, slots=True)
class Leave:
    """A user who left a room, why, and when they were last seen there."""

    user: str
    reason: Reason
    last_seen: float

    def to_json(self) -> dict[str, JSON]:
        return {"user": self.user, "reason": self.reason, "last_seen": _iso(self.last_seen)}


@dataclass(frozen=True, slots=True)
class Diff:
    """What changed in a room during one window, numbered: ``seq`` is one more than the
    room's previous diff's."""

    room: str
    seq: int
    joins: tuple[Member, ...]
    updates: tuple[Member, ...]
    leaves: tuple[Leave, ...]
    count: int

    def __bool__(self) -> bool:
        return bool(self.joins or self.updates or self.leaves)


@dataclass(frozen=True, slots=True)
class RoomPage:
    """A room's members, one page of them, as of ``seq``.

    Attributes:
        next: the cursor of the next page, or None on the last.
        partial: True when the members are only this process's (Redis is away).
    """

    room: str
    seq: int
    count: int
    members: tuple[Member, ...]
    next: str | None = None
    partial: bool = False


@dataclass(frozen=True, slots=True)
class UserPresence:
    """A user's presence across tabs and devices.

    Attributes:
        sessions: how many of the user's sessions are present (held or in their grace).
        last_seen: when the user was last present (kept after they go offline).
        rooms: the rooms the user is a member of.
    """

    user: str
    status: Status
    sessions: int
    last_seen: float | None
    rooms: tuple[str, ...]

    def to_json(self) -> dict[str, JSON]:
        return {
            "user": self.user,
            "status": self.status,
            "sessions": self.sessions,
            "last_seen": None if self.last_seen is None else _iso(self.last_seen),
            "rooms": list(self.rooms),
        }


@dataclass(frozen=True, slots=True)
class Joined:
    """One tab's membership in one room."""

    joined_at: float
    meta: JSON
    meta_at: float
    #: Set once the tab left the room, while the grace runs: (reason, when it left).
    leaving: tuple[Reason, float] | None = None


@dataclass(frozen=True, slots=True)
class Tab:
    """One session's presence: its state, and the rooms it is in.

    Attributes:
        leaving: set once the session's hold ended (socket closed, process died,
            session ended) while the grace runs: (reason, when). A leaving tab still
            counts, with its last state, so a refresh inside the grace changes nothing.
    """

    session_id: str
    state: TabState
    rooms: Mapping[str, Joined] = field(default_factory=dict)
    leaving: tuple[Reason, float] | None = None


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
        if latest is None or joined.meta_at > latest.meta_at:
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

    A user absent before and after (joined and left inside the window) is nothing; a
    member changed several times is one update with its last state; an unchanged one is
    nothing.
    """
    joins: list[Member] = []
    updates: list[Member] = []
    leaves: list[Leave] = []
    for user in sorted(published.keys() | current.keys()):
        before, after = published.get(user), current.get(user)
        if before is None and after is not None:
            joins.append(after)
        elif before is not None and after is None:
            reason, when = departures.get(user, ("left", before.since))
            leaves.append(Leave(user, reason, when))
        elif before is not None and after is not None and before != after:
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
