"""The session record, its wire form, how ids are minted, and the session rules
(:class:`SessionService`)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from .exceptions import InvalidBody, NotFound, StoreError, TooManySockets

if TYPE_CHECKING:
    from .models import TabState
    from .registry import Registry
    from .settings import Settings
    from .stores.base import SessionStore

logger = logging.getLogger("presence.sessions")

Transport: TypeAlias = Literal["websocket", "http", "none"]
State: TypeAlias = Literal["active", "away", "disconnected"]
JSON: TypeAlias = Any


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: Passed as ``data`` to leave a session's data as it is.
UNSET: JSON = _Unset()

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

    def to_json(self, heartbeat_interval: float | None = None) -> dict[str, JSON]:
        """The session as the API sends it (the user is implied by who asks).

        Args:
            heartbeat_interval: the server's ``HEARTBEAT_INTERVAL``, sent with it so that
                a client keeping the session alive over REST beats at least that often
                (a TTL shorter than the client's own rhythm would otherwise expire it).
        """
        value: dict[str, JSON] = {
            "id": self.id,
            "created_at": _iso(self.created_at),
            "last_seen": _iso(self.last_seen),
            "expires_at": _iso(self.expires_at),
            "transport": self.transport,
            "state": self.state,
            "data": self.data,
        }
        if heartbeat_interval is not None:
            value["heartbeat_interval"] = heartbeat_interval
        return value


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


class SessionService:
    """The session rules, once, for every edge: REST, the socket, and the presence
    layer above them. The edges parse, call this and map what it raises.

    Args:
        settings: the limits (data size, ids per cleanup, sockets per user) and the
            inactive threshold.
        store: where sessions live.
        registry: this process's open sockets (for the sockets-per-user bound).
        new_id: mints session ids.
    """

    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        registry: Registry,
        new_id: Callable[[], str] = new_session_id,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.new_id = new_id

    async def create(self, user: str, data: JSON = UNSET) -> Session:
        """A new session of ``user``'s.

        Raises:
            InvalidBody: ``data`` is larger than its limit.
            TooManySessions: every one of the user's sessions is held open at the cap.
        """
        self._check_data(data)
        return await self.store.create(user, self.new_id(), data=None if data is UNSET else data)

    async def list_sessions(self, user: str) -> list[Session]:
        return await self.store.list_sessions(user)

    async def get(self, user: str, session_id: str) -> Session:
        """Raises NotFound unless ``user`` holds a live session ``session_id``."""
        _check_id(session_id)
        session = await self.store.get(user, session_id)
        if session is None:
            raise NotFound("no such session")
        return session

    async def delete(self, user: str, session_id: str) -> None:
        """Deletes the session (its sockets anywhere are told ``deleted``).

        Raises:
            NotFound: the user holds no such session.
        """
        _check_id(session_id)
        if not await self.store.delete(user, [session_id], "deleted"):
            raise NotFound("no such session")

    async def heartbeat(
        self, user: str, session_id: str, *, state: State = "active", data: JSON = UNSET
    ) -> Session:
        """Keeps a session alive over HTTP; never recreates one.

        Raises:
            NotFound: no such live session (the client creates a new one).
            InvalidBody: ``data`` is larger than its limit.
        """
        _check_id(session_id)
        self._check_data(data)
        session = await self.store.touch(user, session_id, transport="http", state=state, data=data)
        if session is None:
            raise NotFound("no such session; create a new one")
        return session

    async def cleanup(self, user: str, kind: str, session_ids: Sequence[str] = ()) -> list[str]:
        """Deletes the user's sessions: ``all`` of them, the ``inactive`` ones (not seen
        for longer than ``INACTIVE_THRESHOLD``), or the ``specific`` ids (those the user
        does not hold are ignored). Returns the ids deleted.

        Raises:
            InvalidBody: more ids than ``PRESENCE_MAX_CLEANUP_IDS``.
        """
        if kind == "specific":
            limit = self.settings.max_cleanup_ids
            if len(session_ids) > limit:
                raise InvalidBody(
                    f"session_ids has {len(session_ids)} ids; at most {limit} are allowed"
                )
            valid = [sid for sid in session_ids if is_session_id(sid)]
            return await self.store.delete(user, valid, "cleanup")
        if kind == "all":
            return await self.store.delete_all(user, "cleanup")
        return await self.store.delete_inactive(user, self.settings.inactive_threshold, "cleanup")

    def reserve_socket(self, user: str) -> None:
        """Takes one of the user's places for a socket on this process, before anything
        is awaited (so that concurrent handshakes cannot all pass the bound); every
        place taken is given back with :meth:`release_socket`.

        Raises:
            TooManySockets: the user holds ``PRESENCE_MAX_SOCKETS_PER_USER`` here.
        """
        limit = self.settings.max_sockets_per_user
        if not self.registry.reserve(user, limit):
            raise TooManySockets(f"a user may hold at most {limit} open sockets on a server")

    def release_socket(self, user: str) -> None:
        self.registry.release(user)

    async def attach(self, user: str, session_id: str) -> Session:
        """A socket of the session is opening: the session is kept alive by it from now.

        Raises:
            NotFound: no such live session.
        """
        _check_id(session_id)
        session = await self.store.touch(user, session_id, transport="websocket", state="active")
        if session is None:
            raise NotFound("no such session")
        return session

    async def set_visibility(self, user: str, session_id: str, state: State) -> Session | None:
        """The tab of an open socket was shown (``active``) or hidden (``away``); None
        when the session is gone."""
        return await self.store.touch(user, session_id, state=state)

    async def detach(self, user: str, session_id: str, *, unseen_for: float | None = None) -> None:
        """The session's last socket here closed: it is ``disconnected``, still alive
        within its TTL (``unseen_for``: only if not seen for that long). A store that
        cannot take it now is logged, not raised: the socket is gone either way."""
        try:
            await self.store.touch(
                user, session_id, transport="none", state="disconnected", unseen_for=unseen_for
            )
        except StoreError:
            logger.warning("could not mark a session disconnected: store unavailable")

    async def reaped(self, tabs: Sequence[tuple[str, str]], since: float) -> None:
        """The process that held these sessions' sockets died, and was reaped ``since``
        seconds ago: they are ``disconnected``, still alive within their TTL (their
        heartbeats together, one round trip a batch). A session seen since (its socket
        open again on another process, or on the reaped one back from a stall and
        holding it again) is passed over: the mark comes after the rooms' diffs, and a
        socket back meanwhile is not undone by it."""
        await asyncio.gather(*(self.detach(user, sid, unseen_for=since) for user, sid in tabs))

    async def socket_open(self, user: str, session_id: str) -> bool:
        """Whether the session has a socket open on some process (its record says
        ``websocket``; a socket's close or its process's reap says otherwise)."""
        session = await self.store.get(user, session_id)
        return session is not None and session.transport == "websocket"

    async def held_again(self, tabs: Sequence[tuple[str, str, TabState]]) -> None:
        """This process was taken for dead (and these sessions marked disconnected by
        its reaper), but their sockets are open here: they are ``websocket`` again,
        ``active``, or ``away`` for a tab hidden or idle."""

        async def attached(user: str, session_id: str, tab: TabState) -> None:
            state: State = "active" if tab == "online" else "away"
            try:
                await self.store.touch(user, session_id, transport="websocket", state=state)
            except StoreError:
                logger.warning("could not mark a session connected again: store unavailable")

        await asyncio.gather(*(attached(*tab) for tab in tabs))

    def _check_data(self, data: JSON) -> None:
        if data is UNSET:
            return
        limit = self.settings.max_data_bytes
        size = len(json.dumps(data, separators=(",", ":")).encode())
        if size > limit:
            raise InvalidBody(f"data is {size} bytes once encoded; the limit is {limit}")


def _check_id(session_id: str) -> None:
    # A string of another shape is no session of anyone's: not found, like any other.
    if not is_session_id(session_id):
        raise NotFound("no such session")
