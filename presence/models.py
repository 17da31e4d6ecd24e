"""What presence is made of: rooms, members, leaves, diffs, pages, tabs, as values.

Shared by the rules (:mod:`presence.rooms`), the stores, the bus's events and the
edges' wire forms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from .sessions import _iso

JSON: TypeAlias = Any
Status = Literal["online", "away", "offline"]
#: Why a member left: the client left the room or unloaded the page (``left``), the
#: socket closed and the grace passed (``closed``), no pong or REST heartbeat in time
#: (``timeout``), the session was deleted or cleaned up (``ended``), its TTL or lifetime
#: ran out (``expired``), or the process holding it died, or stopped and the session's
#: socket was not back within the restart grace (``node_down``).
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
    #: When the meta was set, as an order: it increases with every meta a user sets,
    #: so "the most recent meta" has one answer even within a millisecond.
    meta_order: int
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
