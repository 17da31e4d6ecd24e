"""The session record, its wire form, and how ids are minted."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

Transport: TypeAlias = Literal["websocket", "http", "none"]
State: TypeAlias = Literal["active", "away", "disconnected"]
JSON: TypeAlias = Any

TRANSPORTS: frozenset[str] = frozenset({"websocket", "http", "none"})
STATES: frozenset[str] = frozenset({"active", "away", "disconnected"})

# 16 bytes from the OS CSPRNG, base64url without padding: 22 characters, 128 bits.
_ID_BYTES = 16
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")


def new_session_id() -> str:
    """Mints an unguessable session id (128 bits from :mod:`secrets`)."""
    return secrets.token_urlsafe(_ID_BYTES)


def is_session_id(value: str) -> bool:
    """True when ``value`` has the shape of an id that :func:`new_session_id` mints."""
    return SESSION_ID_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Session:
    """One chat session of one user.

    Times are POSIX seconds. ``expires_at`` is when the store will forget the session
    unless it is kept alive: ``last_seen + TTL``, capped by the absolute lifetime.
    """

    id: str
    user: str
    created_at: float
    last_seen: float
    expires_at: float
    transport: Transport = "none"
    state: State = "active"
    data: JSON = None

    def to_json(self) -> dict[str, JSON]:
        """The session as the API sends it (the user is implied by who asks)."""
        return {
            "id": self.id,
            "created_at": _iso(self.created_at),
            "last_seen": _iso(self.last_seen),
            "expires_at": _iso(self.expires_at),
            "transport": self.transport,
            "state": self.state,
            "data": self.data,
        }


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
