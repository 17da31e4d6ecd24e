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

from .sessions import Session, State


class ProtocolError(Exception):
    """A client message that cannot be used; answered with an ``error`` message.

    Attributes:
        code: machine-readable reason.
        message: what was wrong, for a human.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Visibility:
    """The tab became visible or hidden."""

    state: State


ClientMessage = Visibility

_VISIBILITY_STATES: dict[str, State] = {"visible": "active", "hidden": "away"}


def parse(text: str) -> ClientMessage:
    """Parses one client message.

    Raises:
        ProtocolError: not JSON, not an object, an unknown type or a bad field.
    """
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # Nesting too deep raises RecursionError.
        raise ProtocolError("malformed_json", "message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_message", "message must be a JSON object")
    kind = message.get("type")
    if kind == "visibility":
        raw = message.get("state")
        # Checked as a string first: a list or object is unhashable and would not
        # even reach the lookup.
        state = _VISIBILITY_STATES.get(raw) if isinstance(raw, str) else None
        if state is None:
            raise ProtocolError("bad_message", 'visibility state must be "visible" or "hidden"')
        return Visibility(state)
    raise ProtocolError("unknown_type", f"unknown message type {kind!r}")


def snapshot(session: Session) -> str:
    return json.dumps({"type": "snapshot", "session": session.to_json()})


def ended(reason: str) -> str:
    return json.dumps({"type": "ended", "reason": reason})


def error(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})


class TokenBucket:
    """Allows ``rate`` messages a second on average, in bursts of up to ``burst``.

    Args:
        rate: tokens added per second.
        burst: the bucket's size, and how many it starts with.
        now: the current time in seconds (a monotonic clock).
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def allow(self, now: float) -> bool:
        """Takes a token if there is one; False means the sender is over its rate."""
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
