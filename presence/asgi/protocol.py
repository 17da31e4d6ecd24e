"""The WebSocket message protocol, without any I/O.

Every message is a JSON object with a ``type``. Server to client:

- ``{"type": "snapshot", "session": {...}}`` on connect and after each change;
- ``{"type": "ended", "reason": "deleted" | "cleanup" | "expired" | "replaced"}`` right
  before the server closes the socket because the session is gone;
- ``{"type": "error", "code": ..., "message": ..., "room"?: ...}`` for a message it
  could not use (with the room the message named, if it named one);
- ``{"type": "presence.sync", "room", "seq", "count", "members": [...], "next",
  "partial"?}`` when watching starts, after a reconnect, and whenever the client missed
  something;
- ``{"type": "presence.diff", "room", "seq", "joins": [...], "updates": [...],
  "leaves": [{"user", "reason", "last_seen"}], "count", "truncated"?}``: ``seq`` one more
  than the room's previous diff.

Client to server:

- ``{"type": "visibility", "state": "visible" | "hidden"}``: the tab was shown or hidden;
  the session's state becomes ``active`` or ``away``;
- ``{"type": "activity", "idle": true | false}``: the user went idle or came back;
- ``{"type": "presence.join", "room": R, "meta": {...}}``, ``presence.leave``,
  ``presence.update`` (``room``, ``meta``), ``presence.watch``, ``presence.unwatch``;
- ``{"type": "session.attach", "session": id}`` and ``session.detach``: one socket
  carries further sessions of the same user (a browser's tabs sharing one socket), each
  checked as a handshake is (the socket's identity and origin, the session its user's);
  every message may then say which session it is about with ``session``, and what the
  server sends about an attached session carries its id as ``session`` too (a
  snapshot's session has its id).

The admin socket (``/api/v1/admin/ws``, an admin's alone) speaks ``admin.*`` messages
over the same framing (:func:`parse_admin`): server to client ``admin.snapshot``
(rooms with members, recent events, status), ``admin.status`` (processes, store,
webhooks, series), ``admin.room``, ``admin.event``, ``admin.replayed`` and ``error``;
client to server ``admin.refresh`` and ``admin.replay`` (``id``). A user's socket that
sends one is refused (``forbidden``).

Liveness itself is not a message: it is WebSocket ping and pong frames, answered by the
browser without any script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..exceptions import (
    Forbidden,
    InvalidMessage,
    MalformedJSON,
    PayloadTooLarge,
    UnknownMessageType,
)
from ..limits import TokenBucket
from ..models import JSON, Diff, RoomPage
from ..sessions import Session, State


@dataclass(frozen=True, slots=True)
class Visibility:
    """The tab became visible or hidden (``session``: the attached session it is about,
    None for the socket's own)."""

    state: State
    session: str | None = None


@dataclass(frozen=True, slots=True)
class Activity:
    """The user went idle (no input for a while) or came back."""

    idle: bool
    session: str | None = None


@dataclass(frozen=True, slots=True)
class SessionMessage:
    """``session.attach`` or ``session.detach``: a further session of the same user
    carried by this socket, or no longer (a browser's tabs sharing one socket)."""

    kind: str
    session: str


@dataclass(frozen=True, slots=True)
class RoomMessage:
    """A presence message about one room: ``presence.join``, ``presence.leave``,
    ``presence.update``, ``presence.watch`` or ``presence.unwatch``. The room is checked
    by the room service (name and permission), the meta's size too."""

    kind: str
    room: object
    meta: JSON = None
    session: str | None = None


@dataclass(frozen=True, slots=True)
class AdminMessage:
    """A message on the admin socket: ``admin.refresh`` (a fresh snapshot) or
    ``admin.replay`` of the dead letter ``id``."""

    kind: str
    id: str | None = None


ClientMessage = Visibility | Activity | RoomMessage | SessionMessage

#: The largest admin message taken: the admin sends ids, never data.
ADMIN_MAX_MESSAGE_BYTES = 4096
#: The longest dead letter id taken.
ADMIN_MAX_ID = 200
_ADMIN_MESSAGES = {
    "admin.refresh": frozenset({"type"}),
    "admin.replay": frozenset({"type", "id"}),
}

_VISIBILITY_STATES: dict[str, State] = {"visible": "active", "hidden": "away"}
_ROOM_MESSAGES = {
    "presence.join": frozenset({"type", "room", "meta", "session"}),
    "presence.leave": frozenset({"type", "room", "session"}),
    "presence.update": frozenset({"type", "room", "meta", "session"}),
    "presence.watch": frozenset({"type", "room", "session"}),
    "presence.unwatch": frozenset({"type", "room", "session"}),
}
_SESSION_MESSAGES = frozenset({"session.attach", "session.detach"})


def _session(message: dict[str, JSON]) -> str | None:
    session = message.get("session")
    if session is None:
        return None
    if not isinstance(session, str):
        raise InvalidMessage("session must be a session id")
    return session


def parse(text: str) -> ClientMessage:
    """Parses one client message.

    Raises:
        MalformedJSON: not JSON.
        InvalidMessage: not an object, or a bad field.
        UnknownMessageType: a type the server does not know.
    """
    message = _load(text)
    kind = message.get("type")
    if kind == "visibility":
        raw = message.get("state")
        # Checked as a string first: a list or object is unhashable and would not
        # even reach the lookup.
        state = _VISIBILITY_STATES.get(raw) if isinstance(raw, str) else None
        if state is None:
            raise InvalidMessage('visibility state must be "visible" or "hidden"')
        return Visibility(state, _session(message))
    if kind == "activity":
        idle = message.get("idle")
        if not isinstance(idle, bool):
            raise InvalidMessage("activity idle must be true or false")
        return Activity(idle, _session(message))
    if isinstance(kind, str) and kind in _SESSION_MESSAGES:
        session = _session(message)
        if session is None:
            raise InvalidMessage(f"{kind} needs a session")
        return SessionMessage(str(kind), session)
    fields = _ROOM_MESSAGES.get(kind) if isinstance(kind, str) else None
    if fields is not None:
        unknown = sorted(message.keys() - fields)
        if unknown:
            raise InvalidMessage(f"unknown field {unknown[0]!r} in {kind}")
        if "room" not in message:
            raise InvalidMessage(f"{kind} needs a room")
        if kind == "presence.update" and "meta" not in message:
            raise InvalidMessage("presence.update needs a meta")
        return RoomMessage(str(kind), message["room"], message.get("meta"), _session(message))
    if isinstance(kind, str) and kind.startswith("admin."):
        raise Forbidden("admin messages go over the admin socket, with an admin credential")
    raise UnknownMessageType(f"unknown message type {kind!r}")


def parse_admin(text: str) -> AdminMessage:
    """Parses one message of the admin socket.

    Raises:
        PayloadTooLarge: over :data:`ADMIN_MAX_MESSAGE_BYTES`.
        MalformedJSON: not JSON.
        InvalidMessage: not an object, or a bad or unknown field.
        UnknownMessageType: not an admin message.
    """
    if len(text) > ADMIN_MAX_MESSAGE_BYTES or len(text.encode()) > ADMIN_MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(f"admin messages are at most {ADMIN_MAX_MESSAGE_BYTES} bytes")
    message = _load(text)
    kind = message.get("type")
    fields = _ADMIN_MESSAGES.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise UnknownMessageType(f"unknown admin message type {kind!r}")
    unknown = sorted(message.keys() - fields)
    if unknown:
        raise InvalidMessage(f"unknown field {unknown[0]!r} in {kind}")
    if kind == "admin.replay":
        letter = message.get("id")
        if not isinstance(letter, str) or not 0 < len(letter) <= ADMIN_MAX_ID:
            raise InvalidMessage(f"admin.replay needs an id of 1-{ADMIN_MAX_ID} characters")
        return AdminMessage(str(kind), letter)
    return AdminMessage(str(kind))


def _load(text: str) -> dict[str, JSON]:
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # Nesting too deep raises RecursionError.
        raise MalformedJSON("message is not valid JSON") from None
    if not isinstance(message, dict):
        raise InvalidMessage("message must be a JSON object")
    return message


def snapshot(session: Session, heartbeat_interval: float | None = None) -> str:
    return json.dumps({"type": "snapshot", "session": session.to_json(heartbeat_interval)})


def ended(reason: str, session: str | None = None) -> str:
    """The session is gone (``session``: an attached one; None: the socket's own)."""
    value = {"type": "ended", "reason": reason}
    if session is not None:
        value["session"] = session
    return json.dumps(value)


def error(code: str, message: str, room: str | None = None, session: str | None = None) -> str:
    value: dict[str, JSON] = {"type": "error", "code": code, "message": message}
    if room is not None:
        value["room"] = room
    if session is not None:
        value["session"] = session
    return json.dumps(value)


def presence_sync(page: RoomPage) -> str:
    """A room's sync: its seq, count and first members (all of them up to
    ``PRESENCE_ROOM_LIST_LIMIT``; ``next`` pages the rest over REST)."""
    value: dict[str, JSON] = {
        "type": "presence.sync",
        "room": page.room,
        "seq": page.seq,
        "count": page.count,
        "members": [m.to_json() for m in page.members],
        "next": page.next,
    }
    if page.partial:
        value["partial"] = True
    return _ENCODER.encode(value)


def presence_diff(diff: Diff, limit: int) -> str:
    """A room's diff as its watchers get it: at most ``limit`` changes (joins first,
    then updates, then leaves), with ``truncated`` when there were more; ``count``
    is always the room's."""
    joins, updates, leaves = list(diff.joins), list(diff.updates), list(diff.leaves)
    truncated = len(joins) + len(updates) + len(leaves) > limit
    if truncated:
        joins = joins[:limit]
        updates = updates[: limit - len(joins)]
        leaves = leaves[: limit - len(joins) - len(updates)]
    value: dict[str, JSON] = {
        "type": "presence.diff",
        "room": diff.room,
        "seq": diff.seq,
        "joins": [m.to_json() for m in joins],
        "updates": [m.to_json() for m in updates],
        "leaves": [x.to_json() for x in leaves],
        "count": diff.count,
    }
    if truncated:
        value["truncated"] = True
    return _ENCODER.encode(value)


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


__all__ = [
    "Activity",
    "AdminMessage",
    "ClientMessage",
    "RoomMessage",
    "SessionMessage",
    "TokenBucket",
    "Visibility",
    "ended",
    "error",
    "parse",
    "parse_admin",
    "presence_diff",
    "presence_sync",
    "snapshot",
]
