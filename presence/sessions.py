"""The session record, its wire form, and how ids are minted."""

from __future__ import annotations

import re
import secrets
import time
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


# Timestamps from the epoch to the end of year 9999, less a second for the carry below;
# anything else (negative, NaN, later) goes through datetime, which also raises for it.
_FAST_ISO_LIMIT = datetime.max.replace(tzinfo=UTC).timestamp() - 1
_MICROS = 1_000_000
# "2024-05-01T12:00:00." by whole second: a response's last_seen and expires_at, and
# every other response sent in the same second, share theirs. Cleared when full.
_ISO_SECONDS: dict[int, str] = {}
_ISO_SECONDS_MAX = 1024
_ISO_MILLIS = tuple(f"{millis:03d}Z" for millis in range(10**3))


def _iso(timestamp: float) -> str:
    """``2024-05-01T12:00:00.123Z``: UTC, milliseconds truncated.

    The same string as ``datetime.fromtimestamp(timestamp, UTC).isoformat(
    timespec="milliseconds")`` with ``Z`` for ``+00:00``, rounded the same way (to the
    microsecond, half to even, then truncated to the millisecond), at a fraction of the
    cost: three are formatted for every session sent.
    """
    if not 0.0 <= timestamp < _FAST_ISO_LIMIT:
        return _iso_datetime(timestamp)
    seconds = int(timestamp)
    # timestamp - seconds is exact (math.modf's fraction); round() is half to even.
    micros = round((timestamp - seconds) * _MICROS)
    if micros >= _MICROS:
        seconds += 1
        micros -= _MICROS
    prefix = _ISO_SECONDS.get(seconds)
    if prefix is None:
        if len(_ISO_SECONDS) >= _ISO_SECONDS_MAX:
            _ISO_SECONDS.clear()
        t = time.gmtime(seconds)
        prefix = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}."
        )
        _ISO_SECONDS[seconds] = prefix
    return prefix + _ISO_MILLIS[micros // 10**3]


def _iso_datetime(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
