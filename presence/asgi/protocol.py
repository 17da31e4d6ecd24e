"""The WebSocket message protocol, without any I/O.

Every message is a JSON object with a ``type``. Server to client:

- ``{"type": "snapshot", "session": {...}}`` on connect and after each change;
- ``{"type": "ended", "reason": "deleted" | "cleanup" | "expired" | "replaced"}`` right
  before the server closes the socket because the session is gone;
- ``{"type": "error", "code": ..., "message": ...}`` for a message it could not use.

Client to server:

- ``{"type": "visibility", "state": "visible" | "hidden"}``: the tab was shown or hidden;
  the session's state becomes ``active`` or ``away``.

Liveness itself is not a message: it is WebSocket ping and pong frames, answered by the
browser without any script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..exceptions import InvalidMessage, MalformedJSON, UnknownMessageType
from ..limits import TokenBucket
from ..sessions import Session, State


@dataclass(frozen=True, slots=True)
class Visibility:
    """The tab became visible or hidden."""

    state: State


ClientMessage = Visibility

_VISIBILITY_STATES: dict[str, State] = {"visible": "active", "hidden": "away"}


def parse(text: str) -> ClientMessage:
    """Parses one client message.

    Raises:
        MalformedJSON: not JSON.
        InvalidMessage: not an object, or a bad field.
        UnknownMessageType: a type the server does not know.
    """
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # Nesting too deep raises RecursionError.
        raise MalformedJSON("message is not valid JSON") from None
    if not isinstance(message, dict):
        raise InvalidMessage("message must be a JSON object")
    kind = message.get("type")
    if kind == "visibility":
        raw = message.get("state")
        # Checked as a string first: a list or object is unhashable and would not
        # even reach the lookup.
        state = _VISIBILITY_STATES.get(raw) if isinstance(raw, str) else None
        if state is None:
            raise InvalidMessage('visibility state must be "visible" or "hidden"')
        return Visibility(state)
    raise UnknownMessageType(f"unknown message type {kind!r}")


def snapshot(session: Session) -> str:
    return json.dumps({"type": "snapshot", "session": session.to_json()})


def ended(reason: str) -> str:
    return json.dumps({"type": "ended", "reason": reason})


def error(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})


__all__ = ["ClientMessage", "TokenBucket", "Visibility", "ended", "error", "parse", "snapshot"]
