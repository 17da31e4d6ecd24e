"""Redis with an in-memory fallback: the store a production process runs.

While Redis answers, every operation goes to Redis and its result is mirrored into a
bounded :class:`MemoryStore`. When Redis stops answering (connection refused, a
socket timeout), a circuit breaker opens: operations are served by the mirror at once,
and every write is journalled. A probe pings Redis in the background; when it answers,
the journal is written back, oldest first, and the breaker closes:

- a session created during the outage is restored with its own times and fields;
- a heartbeat is replayed with its own time, and Redis never moves a TTL backwards
  nor recreates a deleted key;
- a delete or cleanup made during the outage is replayed after the writes it followed,
  as "delete those last seen before then", so sessions kept alive elsewhere meanwhile
  (newer writes) survive and nothing it deleted comes back.

What a process cannot promise: a session only Redis held, and that this process never
saw, is unknown during the outage (404: the client creates a new one); writes journalled
by a process that dies before Redis returns are lost; two processes do not see each
other's writes until Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..exceptions import StoreUnavailable
from ..sessions import JSON, Session, State, Transport
from .base import UNSET, EndedCallback, SessionRef
from .memory import MemoryStore
from .redis import RedisStore

logger = logging.getLogger("presence.store")


@dataclass(slots=True)
class _Cleanup:
    user: str
    cutoff: float
    reason: str


@dataclass(slots=True)
class _Delete:
    user: str
    session_ids: list[str]
    reason: str


class FallbackStore:
    """Redis, falling back to memory while Redis is unreachable.

    Args:
        primary: the Redis store.
        fallback: the in-memory store used as mirror and fallback; its ``max_sessions``
            bounds memory during an outage.
        probe_interval: seconds between pings while Redis is away.
    """

    name = "redis+fallback"

    def __init__(
        self, primary: RedisStore, fallback: MemoryStore, *, probe_interval: float = 0.5
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.probe_interval = probe_interval
        self.degraded = False
        # Refs created or touched during the outage, to write back (coalesced: the
        # mirror holds each one's latest state).
        self._created: set[SessionRef] = set()
        self._touched: set[SessionRef] = set()
        # Deletes and cleanups in the order they were made.
        self._deletes: list[_Delete | _Cleanup] = []
        self._probe: asyncio.Task[None] | None = None
        self._recovered = asyncio.Event()

    @property
    def pending_writes(self) -> int:
        """Journalled writes that still have to reach Redis."""
        return len(self._created) + len(self._touched) + len(self._deletes)

    async def open(self) -> None:
        await self.fallback.open()
        await self.primary.open()
        try:
            await self.primary.ping()
        except StoreUnavailable:
            self._trip("Redis is unreachable at start-up")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        await self.primary.close()
        await self.fallback.close()

    async def status(self) -> dict[str, JSON]:
        return {
            "store": "memory" if self.degraded else "redis",
            "degraded": self.degraded,
            "pending_writes": self.pending_writes,
        }

    async def create(self, user: str, session_id: str, *, data: JSON = None) -> Session:
        if not self.degraded:
            try:
                session = await self.primary.create(user, session_id, data=data)
            except StoreUnavailable:
                self._trip("Redis stopped answering")
            else:
                self.fallback.put(session)
                return session
        session = await self.fallback.create(user, session_id, data=data)
        self._created.add((user, session_id))
        return session

    async def get(self, user: str, session_id: str) -> Session | None:
        if not self.degraded:
            try:
                session = await self.primary.get(user, session_id)
            except StoreUnavailable:
                self._trip("Redis stopped answering")
            else:
                if session is None:
                    self.fallback.forget(user, [session_id])
                else:
                    self.fallback.put(session)
                return session
        return await self.fallback.get(user, session_id)

    async def list_sessions(self, user: str) -> list[Session]:
        if not self.degraded:
            try:
                return await self.primary.list_sessions(user)
            except StoreUnavailable:
                self._trip("Redis stopped answering")
        return await self.fallback.list_sessions(user)

    async def touch(
        self,
        user: str,
        session_id: str,
        *,
        transport: Transport | None = None,
        state: State | None = None,
        data: JSON = UNSET,
    ) -> Session | None:
        if not self.degraded:
            try:
                session = await self.primary.touch(
                    user, session_id, transport=transport, state=state, data=data
                )
            except StoreUnavailable:
                self._trip("Redis stopped answering")
            else:
                if session is None:
                    self.fallback.forget(user, [session_id])
                else:
                    self.fallback.put(session)
                return session
        session = await self.fallback.touch(
            user, session_id, transport=transport, state=state, data=data
        )
        if session is not None and (user, session_id) not in self._created:
            self._touched.add((user, session_id))
        return session

    async def delete(self, user: str, session_ids: Sequence[str], reason: str) -> list[str]:
        if not self.degraded:
            try:
                deleted = await self.primary.delete(user, session_ids, reason)
            except StoreUnavailable:
                self._trip("Redis stopped answering")
            else:
                self.fallback.forget(user, session_ids)
                return deleted
        deleted = await self.fallback.delete(user, session_ids, reason)
        # Journal every id asked for, not only those the mirror knew: Redis may hold
        # ones this process never saw, and the user asked for them to go.
        self._forget_pending(user, session_ids)
        self._deletes.append(_Delete(user, list(session_ids), reason))
        return deleted

    async def delete_all(self, user: str, reason: str) -> list[str]:
        return await self._cleanup(user, 0.0, reason)

    async def delete_inactive(self, user: str, inactive_for: float, reason: str) -> list[str]:
        return await self._cleanup(user, inactive_for, reason)

    async def delete_seen_before(self, user: str, cutoff: float, reason: str) -> list[str]:
        if not self.degraded:
            try:
                deleted = await self.primary.delete_seen_before(user, cutoff, reason)
            except StoreUnavailable:
                self._trip("Redis stopped answering")
            else:
                self.fallback.forget(user, deleted)
                return deleted
        deleted = await self.fallback.delete_seen_before(user, cutoff, reason)
        self._forget_pending(user, deleted)
        self._deletes.append(_Cleanup(user, cutoff, reason))
        return deleted

    async def refresh(self, refs: Sequence[SessionRef]) -> list[SessionRef]:
        if not self.degraded:
            try:
                missing = await self.primary.refresh(refs)
            except StoreUnavailable:
                self._trip("Redis stopped answering")
            else:
                gone: set[SessionRef] = set(missing)
                for user, sid in refs:
                    if (user, sid) in gone:
                        self.fallback.forget(user, [sid])
                    else:
                        await self.fallback.touch(user, sid)
                return missing
        # During an outage a socket's session may be one the mirror lacks; nothing here
        # can tell whether it still exists, so no socket is closed for it: Redis decides
        # on the first tick after recovery.
        for user, sid in refs:
            if (
                await self.fallback.touch(user, sid) is not None
                and (
                    user,
                    sid,
                )
                not in self._created
            ):
                self._touched.add((user, sid))
        return []

    async def subscribe_ended(self, callback: EndedCallback) -> None:
        await self.primary.subscribe_ended(callback)
        await self.fallback.subscribe_ended(callback)

    async def wait_recovered(self) -> None:
        """Returns once the breaker has closed again (for tests and tooling)."""
        while self.degraded:
            self._recovered.clear()
            await self._recovered.wait()

    async def _cleanup(self, user: str, inactive_for: float, reason: str) -> list[str]:
        if not self.degraded:
            try:
                if inactive_for > 0:
                    deleted = await self.primary.delete_inactive(user, inactive_for, reason)
                else:
                    deleted = await self.primary.delete_all(user, reason)
            except StoreUnavailable:
                self._trip("Redis stopped answering")
            else:
                self.fallback.forget(user, deleted)
                return deleted
        # "All" means everything seen up to now; a session kept alive elsewhere after
        # this moment is a newer write and survives the write-back.
        cutoff = self.fallback.clock() - inactive_for
        if inactive_for <= 0:
            cutoff += 0.001
        return await self.delete_seen_before(user, cutoff, reason)

    def _forget_pending(self, user: str, session_ids: Sequence[str]) -> None:
        for sid in session_ids:
            self._created.discard((user, sid))
            self._touched.discard((user, sid))

    def _trip(self, why: str) -> None:
        if self.degraded:
            return
        self.degraded = True
        logger.warning("%s: serving from memory until it is back", why)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_back(), name="redis-probe")

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                await self.primary.ping()
                await self._write_back()
            except StoreUnavailable:
                continue
            except Exception:
                logger.exception("write-back to Redis failed; retrying")
                continue
            self.degraded = False
            self._recovered.set()
            logger.warning("Redis is back; journalled writes written back")
            return

    async def _write_back(self) -> None:
        # Writes first, then deletes, each removed from the journal once Redis has it,
        # so a second outage mid-way resumes where this one stopped. A delete replayed
        # after a write of the same session still wins: deletes are kept in order and
        # writes of deleted ids were dropped from the journal when the delete was made.
        for ref in sorted(self._created):
            session = await self.fallback.get(*ref)
            if session is not None:
                deadline = self.fallback.deadline_of(session)
                await self.primary.restore(session, None if deadline == float("inf") else deadline)
            self._created.discard(ref)
        for ref in sorted(self._touched):
            session = await self.fallback.get(*ref)
            if session is not None:
                await self.primary.touch(
                    ref[0],
                    ref[1],
                    transport=session.transport,
                    state=session.state,
                    data=session.data,
                    at=session.last_seen,
                )
            self._touched.discard(ref)
        while self._deletes:
            entry = self._deletes[0]
            if isinstance(entry, _Delete):
                await self.primary.delete(entry.user, entry.session_ids, entry.reason)
            else:
                await self.primary.delete_seen_before(entry.user, entry.cutoff, entry.reason)
            self._deletes.pop(0)
