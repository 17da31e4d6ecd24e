"""What happens, as the event bus carries it between processes.

Two kinds of event travel on the bus (:mod:`presence.bus`):

- a **session ended** (deleted, cleaned up, expired, replaced), on one channel for all
  sessions, so that whichever process holds a socket of it closes it;
- a **room diff** (members joined, updated, left, with the reason), on one channel per
  room, so that every process with watchers of the room fans it out to them.

Both are published by the stores in the same atomic step as the change itself (in
Redis, by the Lua script that makes it), so their order on a channel is the order of
the changes. Their wire form is compact JSON with times in milliseconds; a room diff's
metas are embedded as the clients sent them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from .models import REASONS, Diff, Leave, Member, Reason, Status

_STATUSES = ("online", "away", "offline")


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A session is gone: every socket of it is to be told why and closed."""

    user: str
    session_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class RoomChanged:
    """A room's numbered diff."""

    diff: Diff


Event = SessionEnded | RoomChanged


def encode_ended(event: SessionEnded) -> str:
    return json.dumps({"u": event.user, "s": event.session_id, "r": event.reason})


def decode_ended(raw: str | bytes) -> SessionEnded:
    """Raises ValueError for a message that is not a session's end."""
    try:
        value = json.loads(raw)
        return SessionEnded(str(value["u"]), str(value["s"]), str(value["r"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a session-ended event: {exc}") from None


def _ms(seconds: float) -> int:
    # Truncated, as the wire's ISO times are: a time and its ms agree to the ms.
    return math.floor(seconds * 1000)


def _member_row(member: Member) -> list[Any]:
    return [member.user, member.status, member.sessions, member.meta, _ms(member.since)]


def encode_diff(diff: Diff) -> str:
    """The wire form of a diff, as the Redis flush script writes it too:
    ``{"r": room, "q": seq, "c": count, "j": [member rows], "u": [member rows],
    "l": [[user, reason, last_seen ms]]}``, a member row being ``[user, status,
    sessions, meta, since ms]``."""
    return json.dumps(
        {
            "r": diff.room,
            "q": diff.seq,
            "c": diff.count,
            "j": [_member_row(m) for m in diff.joins],
            "u": [_member_row(m) for m in diff.updates],
            "l": [[x.user, x.reason, _ms(x.last_seen)] for x in diff.leaves],
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _member(row: Sequence[Any]) -> Member:
    user, status, sessions, meta, since = row
    if status not in _STATUSES:
        raise ValueError(f"unknown status {status!r}")
    return Member(str(user), cast(Status, status), int(sessions), meta, float(since) / 1000)


def decode_diff(raw: str | bytes) -> Diff:
    """Raises ValueError for a message that is not a room diff."""
    try:
        value = json.loads(raw)
        leaves = []
        for user, reason, seen in value["l"]:
            if reason not in REASONS:
                raise ValueError(f"unknown reason {reason!r}")
            leaves.append(Leave(str(user), cast(Reason, reason), float(seen) / 1000))
        return Diff(
            room=str(value["r"]),
            seq=int(value["q"]),
            # An empty array may come back from Lua's cjson as an object ({}).
            joins=tuple(_member(row) for row in value["j"] or ()),
            updates=tuple(_member(row) for row in value["u"] or ()),
            leaves=tuple(leaves),
            count=int(value["c"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a room diff: {exc}") from None
