"""The sockets this process holds open, and the refresher that keeps their sessions alive.

The refresher is why an open WebSocket needs no HTTP heartbeat: once a tick it renews
every open session's TTL in a single store call (one Redis round trip whatever the
number of sockets). A socket stays in the registry only while uvicorn's ping frames
are answered; a silent peer is dropped by uvicorn after the ping timeout, its handler
unregisters it, and its session is no longer renewed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from . import metrics
from .exceptions import StoreUnavailable
from .stores.base import SessionRef, SessionStore

logger = logging.getLogger("presence.connections")


class Endable(Protocol):
    """What the registry needs of a socket: a way to end one of its sessions with a
    reason (a socket may carry several of its user's sessions)."""

    async def end(self, reason: str, session_id: str | None = None) -> None: ...


class Registry:
    """Open sockets by session. Most sessions have one socket here, held as it is; a few
    (two tabs sharing an id by a copied URL) have more, held in a list. A list for every
    session would cost each socket one more object for its whole life.

    It also counts each user's sockets, from the moment a handshake takes a place
    (:meth:`reserve`, before anything is awaited, so concurrent handshakes cannot all
    pass the bound) until the socket is gone (:meth:`release`)."""

    __slots__ = ("_per_user", "_sockets", "sockets")

    def __init__(self) -> None:
        self._sockets: dict[SessionRef, Endable | list[Endable]] = {}
        self._per_user: dict[str, int] = {}
        #: Sockets open or being opened on this process.
        self.sockets = 0

    def __len__(self) -> int:
        """Sessions with at least one socket here."""
        return len(self._sockets)

    @property
    def users(self) -> int:
        """Users with at least one socket here (or being opened)."""
        return len(self._per_user)

    def reserve(self, user: str, limit: int) -> bool:
        """Takes one of the user's ``limit`` places for a socket; False when all are
        taken. Every place taken is given back with :meth:`release`."""
        held = self._per_user.get(user, 0)
        if held >= limit:
            return False
        self._per_user[user] = held + 1
        self.sockets += 1
        return True

    def release(self, user: str) -> None:
        """Gives back a place taken by :meth:`reserve`."""
        held = self._per_user.get(user, 0) - 1
        if held > 0:
            self._per_user[user] = held
        else:
            self._per_user.pop(user, None)
        self.sockets -= 1

    def add(self, ref: SessionRef, socket: Endable) -> bool:
        """Holds a socket; returns True when it is the session's first one here."""
        held = self._sockets.get(ref)
        if held is None:
            self._sockets[ref] = socket
            return True
        if isinstance(held, list):
            held.append(socket)
        else:
            self._sockets[ref] = [held, socket]
        return False

    def discard(self, ref: SessionRef, socket: Endable) -> bool:
        """Forgets a socket; returns True when it was the session's last one here."""
        held = self._sockets.get(ref)
        if held is None:
            return True
        if not isinstance(held, list):
            if held != socket:
                return False
            del self._sockets[ref]
            return True
        with contextlib.suppress(ValueError):
            held.remove(socket)
        if len(held) == 1:  # Back to one: held as it is again. A list never gets empty.
            self._sockets[ref] = held[0]
        return False

    def refs(self) -> list[SessionRef]:
        return list(self._sockets)

    async def end(self, user: str, session_id: str, reason: str) -> None:
        """Ends every socket of a session held here (an ``ended`` callback). Each is
        ended in a task of its own: the bus that calls this must not wait on a client
        that does not read."""
        held = self._sockets.get((user, session_id))
        if held is None:
            return
        for socket in list(held) if isinstance(held, list) else [held]:
            task = asyncio.ensure_future(socket.end(reason, session_id))
            _ending.add(task)
            task.add_done_callback(_ending.discard)


# Sockets being ended: the loop keeps only weak references to tasks.
_ending: set[asyncio.Task[None]] = set()


class Refresher:
    """Renews the sessions of all open sockets once per ``interval`` seconds.

    A session that the store no longer has (deleted elsewhere while pub/sub was down,
    or past its absolute lifetime) gets its sockets ended with reason ``expired``.
    """

    def __init__(self, store: SessionStore, registry: Registry, interval: float) -> None:
        self.store = store
        self.registry = registry
        self.interval = interval
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Refresher:
        self._task = asyncio.create_task(self._run(), name="session-refresher")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def tick(self) -> int:
        """One renewal pass; returns how many sessions it renewed."""
        refs = self.registry.refs()
        self.ticks += 1
        if not refs:
            return 0
        started = time.perf_counter()
        try:
            missing = await self.store.refresh(refs)
        finally:
            metrics.REFRESHER_TICKS.observe(time.perf_counter() - started)
        for user, sid in missing:
            await self.registry.end(user, sid, "expired")
        return len(refs) - len(missing)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            # Scheduled from a fixed start, so a slow tick does not push later ones back.
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                await self.tick()
            except StoreUnavailable:
                logger.warning("refresher: store unavailable; will retry next tick")
            except Exception:
                logger.exception("refresher tick failed")
