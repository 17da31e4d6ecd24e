"""An in-process store: the default without Redis, and the fallback while Redis is down.

Nothing here survives a restart, and two processes do not see each other's sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..exceptions import StoreFull, TooManySessions
from ..sessions import JSON, Session, State, Transport
from .base import UNSET, Announce, SessionRef


@dataclass(slots=True)
class _Record:
    session: Session
    # The absolute end of life (created + max lifetime), or inf.
    deadline: float
    # When a refresh last saw the session (``MemoryStore.seen``), folded into
    # ``session`` only when the record is read: a refresher's tick over N open sockets
    # is N float writes here, not N new Session objects.
    seen: float = 0.0

    def current(self, ttl: float) -> Session:
        """The session with the last refresh folded in."""
        session = self.session
        if self.seen > session.last_seen:
            session = self.session = replace(
                session, last_seen=self.seen, expires_at=self.expires_at(ttl)
            )
        return session

    def expires_at(self, ttl: float) -> float:
        session = self.session
        if self.seen > session.last_seen:
            return max(session.expires_at, min(self.seen + ttl, self.deadline))
        return session.expires_at


class MemoryStore:
    """Sessions in a dict, expired lazily on access and by a periodic sweep.

    Args:
        ttl: sliding TTL in seconds.
        max_lifetime: absolute lifetime in seconds that no heartbeat extends; 0 for none.
        max_sessions_per_user: cap per user. At the cap, a new session replaces the
            user's least recently seen session that no socket holds open; only when
            every one is held open is it refused (429).
        held_open_window: seconds within which a session with transport websocket must
            have been seen to count as held open by a socket (the refresher renews it
            every refresh interval).
        max_sessions: cap on all sessions held (503 past it); bounds memory.
        clock: returns POSIX seconds; injectable for tests.
    """

    name = "memory"

    def __init__(
        self,
        *,
        ttl: float,
        max_lifetime: float = 0.0,
        max_sessions_per_user: int = 50,
        held_open_window: float = 90.0,
        max_sessions: int = 100_000,
        clock: Callable[[], float] = time.time,
        sweep_interval: float = 5.0,
    ) -> None:
        self.ttl = ttl
        self.max_lifetime = max_lifetime
        self.max_sessions_per_user = max_sessions_per_user
        self.held_open_window = held_open_window
        self.max_sessions = max_sessions
        self.clock = clock
        self._sweep_interval = sweep_interval
        self._users: dict[str, dict[str, _Record]] = {}
        self._count = 0
        #: Hands each session this store ends to the bus (set by the app).
        self.announce: Announce | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="memory-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def status(self) -> dict[str, JSON]:
        return {"store": self.name, "degraded": False, "sessions": self._count}

    def __len__(self) -> int:
        return self._count

    async def create(self, user: str, session_id: str, *, data: JSON = None) -> Session:
        now = self.clock()
        sessions = self._sessions(user)
        replaced: list[str] = []
        # Pruning scans the user's sessions, so only when the cap might be reached.
        if len(sessions) >= self.max_sessions_per_user:
            sessions = self._live(user, now)
        if len(sessions) >= self.max_sessions_per_user:
            replaced = self._replaceable(sessions, now)
            # Deleted now, and announced only once the new session is in: the callbacks
            # may suspend, and a create meanwhile must find the cap as it will be.
            for sid in replaced:
                del sessions[sid]
            self._count -= len(replaced)
        if self._count >= self.max_sessions:
            self.sweep()
            if self._count >= self.max_sessions:
                raise StoreFull(
                    "the session store is full while Redis is unavailable; try again shortly"
                )
        session = Session(
            id=session_id,
            user=user,
            created_at=now,
            last_seen=now,
            expires_at=now + self.ttl,
            data=data,
        )
        deadline = self.deadline_of(session)
        session = replace(session, expires_at=min(session.expires_at, deadline))
        if session_id not in sessions:
            self._count += 1
        sessions[session_id] = _Record(session, deadline)
        await self._announce(user, replaced, "replaced")
        return session

    def _replaceable(self, sessions: dict[str, _Record], now: float) -> list[str]:
        """The sessions to delete to make room for one more: the least recently seen
        that no socket holds open (transport websocket, seen within the window).

        Raises:
            TooManySessions: every session is held open.
        """
        need = len(sessions) - self.max_sessions_per_user + 1
        cutoff = now - self.held_open_window
        current = {sid: record.current(self.ttl) for sid, record in sessions.items()}
        by_age = sorted(current.items(), key=lambda item: item[1].last_seen)
        replaced = [
            sid
            for sid, session in by_age
            if session.transport != "websocket" or session.last_seen <= cutoff
        ][:need]
        if len(replaced) < need:
            raise TooManySessions(
                f"a user may hold at most {self.max_sessions_per_user} sessions, and each "
                "of this user's is open in a socket; close one first"
            )
        return replaced

    async def get(self, user: str, session_id: str) -> Session | None:
        record = self._record(user, session_id, self.clock())
        return record.current(self.ttl) if record else None

    async def list_sessions(self, user: str) -> list[Session]:
        records = self._live(user, self.clock()).values()
        sessions = (r.current(self.ttl) for r in records)
        return sorted(sessions, key=lambda s: s.last_seen, reverse=True)

    async def touch(
        self,
        user: str,
        session_id: str,
        *,
        transport: Transport | None = None,
        state: State | None = None,
        data: JSON = UNSET,
        unseen_for: float | None = None,
    ) -> Session | None:
        now = self.clock()
        record = self._record(user, session_id, now)
        if record is None:
            return None
        old = record.current(self.ttl)
        if unseen_for is not None and now - old.last_seen < unseen_for:
            return old
        record.session = replace(
            old,
            last_seen=max(now, old.last_seen),
            expires_at=max(old.expires_at, min(now + self.ttl, record.deadline)),
            transport=old.transport if transport is None else transport,
            state=old.state if state is None else state,
            data=old.data if data is UNSET else data,
        )
        return record.session

    async def delete(self, user: str, session_ids: Sequence[str], reason: str) -> list[str]:
        now = self.clock()
        deleted = []
        for sid in dict.fromkeys(session_ids):
            if self._record(user, sid, now) is not None:
                del self._users[user][sid]
                deleted.append(sid)
        await self._ended(user, deleted, reason)
        return deleted

    async def delete_all(self, user: str, reason: str) -> list[str]:
        sessions = self._live(user, self.clock())
        deleted = list(sessions)
        sessions.clear()
        await self._ended(user, deleted, reason)
        return deleted

    async def delete_inactive(self, user: str, inactive_for: float, reason: str) -> list[str]:
        return await self.delete_seen_before(user, self.clock() - inactive_for, reason)

    async def delete_seen_before(self, user: str, cutoff: float, reason: str) -> list[str]:
        sessions = self._live(user, self.clock())
        deleted = [sid for sid, r in sessions.items() if r.current(self.ttl).last_seen < cutoff]
        for sid in deleted:
            del sessions[sid]
        await self._ended(user, deleted, reason)
        return deleted

    async def refresh(self, refs: Sequence[SessionRef]) -> list[SessionRef]:
        return [ref for ref, held in zip(refs, self.seen(refs), strict=True) if not held]

    def seen(self, refs: Sequence[SessionRef]) -> list[bool]:
        """Marks sessions seen now, as a plain touch would (last_seen, and the sliding
        TTL within the lifetime); for each, whether it is held. The refresher's path:
        no Session is built until the record is read."""
        now = self.clock()
        held = []
        for user, sid in refs:
            record = self._record(user, sid, now)
            if record is not None and now > record.seen:
                record.seen = now
            held.append(record is not None)
        return held

    def put(self, session: Session) -> bool:
        """Holds a copy of a session as another store has it (the fallback's mirror).

        Returns False, holding nothing, when the store is at its cap.
        """
        sessions = self._sessions(session.user)
        if session.id not in sessions:
            if self._count >= self.max_sessions:
                return False
            self._count += 1
        sessions[session.id] = _Record(session, self.deadline_of(session))
        return True

    def forget(self, user: str, session_ids: Sequence[str]) -> None:
        """Drops sessions without announcing their end (the mirror following Redis)."""
        sessions = self._users.get(user)
        if sessions is None:
            return
        for sid in session_ids:
            if sessions.pop(sid, None) is not None:
                self._count -= 1

    def deadline_of(self, session: Session) -> float:
        """The absolute end of a session's life: created + max lifetime, or inf."""
        if self.max_lifetime > 0:
            return session.created_at + self.max_lifetime
        return float("inf")

    async def on_ended(self, user: str, session_id: str, reason: str) -> None:
        pass  # This store is where it ended.

    def sweep(self) -> int:
        """Drops every expired session now; returns how many went."""
        now = self.clock()
        dropped = 0
        for user in list(self._users):
            before = self._count
            self._live(user, now)
            dropped += before - self._count
        return dropped

    def _sessions(self, user: str) -> dict[str, _Record]:
        sessions = self._users.get(user)
        if sessions is None:
            sessions = self._users[user] = {}
        return sessions

    def _record(self, user: str, session_id: str, now: float) -> _Record | None:
        """One live record, dropping it if it has expired: O(1), no scan."""
        sessions = self._users.get(user)
        if not sessions:
            return None
        record = sessions.get(session_id)
        if record is None:
            return None
        if record.expires_at(self.ttl) <= now:
            del sessions[session_id]
            self._count -= 1
            return None
        return record

    def _live(self, user: str, now: float) -> dict[str, _Record]:
        """The user's sessions with the expired ones dropped: a scan of that user."""
        sessions = self._sessions(user)
        expired = [sid for sid, r in sessions.items() if r.expires_at(self.ttl) <= now]
        for sid in expired:
            del sessions[sid]
        self._count -= len(expired)
        # An emptied dict stays until the sweep: the caller may be about to insert into it.
        return sessions

    async def _ended(self, user: str, session_ids: list[str], reason: str) -> None:
        self._count -= len(session_ids)
        await self._announce(user, session_ids, reason)

    async def _announce(self, user: str, session_ids: list[str], reason: str) -> None:
        if self.announce is not None:
            for sid in session_ids:
                self.announce(user, sid, reason)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            self.sweep()
            # Users with no sessions left are dropped so the dict does not grow forever.
            for user in [u for u, s in self._users.items() if not s]:
                del self._users[user]
