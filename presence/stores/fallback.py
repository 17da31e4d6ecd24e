"""Redis with an in-memory fallback: the store a production process runs.

While Redis answers, every operation goes to Redis and its result is mirrored into a
bounded :class:`MemoryStore`. When a call fails (connection refused or reset, a socket
timeout, no free pooled connection), Redis is pinged on a connection of its own. If it
answers, this process was busy, not Redis away: the call is tried once more if it can
safely run twice, and otherwise the request gets 503 (:class:`StoreBusy`). If it does
not answer, a circuit breaker opens: operations are served by the mirror at once, and
every write is journalled. A probe pings Redis in the background; when it answers, the
journal is written back. The write-back order is what keeps the acknowledged writes,
and only them:

1. heartbeats, each with its own time: Redis never moves last_seen or a TTL
   backwards, and never recreates a session it no longer has;
2. deletes by id, then cleanups as "delete those last seen before then", so sessions
   kept alive after a cleanup (newer writes, here or elsewhere) survive it;
3. sessions created during the outage, with their own times and fields, after the
   cleanups, which they postdate.

Each step goes in batches, many entries a round trip (:data:`~.redis.WRITE_BACK_BATCH`
heartbeats in one TOUCH, as many deletes, cleanups or restores in one DELETE_MANY or
RESTORE_MANY; on a cluster one call a slot, the slots concurrently), and an entry leaves
the journal once Redis has it, so a failure part-way resumes where it stopped.

The breaker closes as soon as the probe answers, not when the journal is empty: under
steady load a journal that new writes refill as fast as it drains never is, and a
process stayed degraded for as long as the load lasted (21-52 s after a 3 s stall),
answering 503 for every session that other processes made. Instead, the journal is
frozen as the batch being replayed, and while the replay runs:

- a read or write of a user who has no entry in the batch (no session created or
  heartbeated here during the outage, no delete, no cleanup) goes straight to Redis:
  nothing of theirs waits to be written, so nothing can be overtaken;
- one of a user who has entries waits until the replay has ended, then goes to Redis.
  The wait is bounded: the batch is bounded by the mirror's cap and written in batches
  (seconds for a full cap; milliseconds for a few hundred entries).

Sent at once instead, a user's newer write would overtake their older entries and break
the order above: a heartbeat reaching Redis before an outage ``all`` cleanup of that
user moves last_seen past the cleanup's cutoff and brings back a session the user
deleted; one on a session created during the outage and not yet restored is a 404, and
the mirror forgets the session, so it is never restored; one on a session deleted during
the outage and not yet replayed finds it in Redis and revives it. No new journal starts
meanwhile. If Redis fails again during the replay, the breaker opens again as before,
the waiting requests are served from memory, writes are journalled anew, and what is left
of the batch goes back into the journal ahead of them, for the next replay. While the
replay runs, ``status()`` says ready (Redis serves) with the writes still pending.

Memory is bounded by the mirror's ``max_sessions``. Mirrored sessions that Redis holds
anyway are let go least recently seen first, to keep mirroring in healthy times and to
make room for sessions created during an outage; only sessions that exist nowhere but
here (created or heartbeated during the outage) fill the cap, and past it a new session
gets :class:`StoreFull` (503). Journalled deletions count against the same cap.

What a process cannot promise:

- a session only Redis held, and that this process never saw (or let go), is unknown
  during the outage: 503 with Retry-After (the client keeps it and tries again), never
  404, which is kept for sessions known to be gone (deleted or ended here or announced
  by another process, the latest 10,000 remembered);
- a process that dies during an outage loses its journal: sessions it created are gone,
  and its heartbeats, deletes and cleanups never reach Redis (sessions it deleted are
  back as they were before the outage);
- two processes do not see each other's writes during an outage, only after it (a
  session ended through another process before the outage is gone from this mirror
  too: the end is announced on pub/sub);
- a heartbeat written back sets the session's fields (state, transport, data) as this
  process last saw them, even over a newer change made through another process during
  a partition; the client's next heartbeat sets them right;
- Redis that comes back without its data (no persistence) gets back only the sessions
  created during the outage: a heartbeat never recreates, because Redis cannot tell a
  session it lost from one deleted elsewhere; the same holds for a session that Redis
  expired by its own clock during an outage longer than the TTL;
- the write-back compares this process's clock with Redis's: they must agree (NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Final, TypeVar

from .. import metrics
from .._shutdown import settle, stop
from ..exceptions import StoreBusy, StoreFull, StoreMisconfigured, StoreUnavailable
from ..sessions import JSON, Session, State, Transport
from .base import UNSET, SessionRef
from .memory import MemoryStore
from .redis import WRITE_BACK_BATCH, RedisStore

logger = logging.getLogger("presence.store")

_T = TypeVar("_T")
_Item = TypeVar("_Item")

# Most probes a failed call is followed by: one that missed its bound because this
# process's event loop stalled is asked again, rather than taken for an outage.
_PROBES = 3
# Sessions remembered as gone (see FallbackStore._held).
_TOMBSTONES = 10_000


class _Away:
    """Returned instead of a result when Redis is away: serve from memory."""


_AWAY: Final = _Away()


class _Journal:
    """Writes made while Redis was away, coalesced, waiting to be written back."""

    __slots__ = ("cleanups", "created", "deleted", "touched")

    def __init__(self) -> None:
        # The mirror holds each one's latest state, so a ref is all a write needs.
        self.created: set[SessionRef] = set()
        self.touched: set[SessionRef] = set()
        # user -> {session id: reason}
        self.deleted: dict[str, dict[str, str]] = {}
        # user -> (cutoff, reason). Cleanups are written back after every write, so a
        # user's latest cutoff covers the earlier ones.
        self.cleanups: dict[str, tuple[float, str]] = {}

    def __len__(self) -> int:
        return len(self.created) + len(self.touched) + self.deletions

    def users(self) -> frozenset[str]:
        """Every user with an entry here."""
        return frozenset(
            [user for user, _ in self.created]
            + [user for user, _ in self.touched]
            + list(self.deleted)
            + list(self.cleanups)
        )

    @property
    def deletions(self) -> int:
        return sum(len(ids) for ids in self.deleted.values()) + len(self.cleanups)

    def holds(self, ref: SessionRef) -> bool:
        return ref in self.created or ref in self.touched

    def drop(self, user: str, session_ids: Sequence[str]) -> None:
        for sid in session_ids:
            self.created.discard((user, sid))
            self.touched.discard((user, sid))

    def cleanup(self, user: str, cutoff: float, reason: str) -> None:
        if user not in self.cleanups or cutoff > self.cleanups[user][0]:
            self.cleanups[user] = (cutoff, reason)

    def absorb(self, newer: _Journal) -> None:
        """Takes in a newer journal's entries (after a write-back stopped part-way)."""
        self.created |= newer.created
        self.touched |= newer.touched
        for user, ids in newer.deleted.items():
            self.deleted.setdefault(user, {}).update(ids)
        for user, (cutoff, reason) in newer.cleanups.items():
            self.cleanup(user, cutoff, reason)


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
        #: When the breaker last opened (POSIX seconds), while it is open.
        self.away_since: float | None = None
        self._journal = _Journal()
        # The batch being replayed right now, if any, and the users who have entries in
        # it: their operations wait for the replay to end (see the module docstring).
        self._writing: _Journal | None = None
        self._held_back: frozenset[str] = frozenset()
        # Set when no replay runs, or when the breaker opened again during one.
        self._replay_over = asyncio.Event()
        self._replay_over.set()
        self._closed = False
        # Mirrored sessions that Redis also holds, least recently seen first: the ones
        # the mirror may let go when it needs room.
        self._lru: OrderedDict[SessionRef, None] = OrderedDict()
        self._probe: asyncio.Task[None] | None = None
        # The probe that decides whether a failed call means Redis is away, if running.
        self._probing: asyncio.Future[bool] | None = None
        # Sessions recently known to be gone, so that while Redis is away they are "not
        # found" rather than "try again".
        self._gone: OrderedDict[SessionRef, None] = OrderedDict()
        #: Calls that failed while Redis answered a probe (this process was busy).
        self.busy_failures = 0
        self._recovered = asyncio.Event()

    @property
    def pending_writes(self) -> int:
        """Journalled writes that still have to reach Redis."""
        return len(self._journal) + (len(self._writing) if self._writing else 0)

    async def open(self) -> None:
        """Opens both stores. Redis unreachable: the fallback serves, and says so.

        Raises:
            ConfigError: Redis answers but refuses what the service needs (see
                :meth:`RedisStore.open`): serving from memory would hide it for good.
        """
        await self.fallback.open()
        try:
            await self.primary.open()
        except BaseException:
            await self.fallback.close()
            raise
        try:
            await self.primary.ping()
        except StoreUnavailable:
            self._trip("Redis is unreachable at start-up")

    async def close(self) -> None:
        """Writes back what it can and closes. Returns within about twenty call bounds
        (10 s at the default timeout), whatever Redis does; what is not written back by
        then is lost, with a warning."""
        self._closed = True
        # A replay under way puts what it has not written back into the journal.
        if not await stop(self._probe, self.primary.bound):
            logger.warning("the Redis probe did not stop at close; abandoned")
        self._probe = None
        if self.pending_writes:
            # A last attempt, so that a process stopped just after Redis came back does
            # not take its journal with it.
            await settle(self._write_back_at_close(), self.primary.bound * 4)
            if self.pending_writes:
                logger.warning(
                    "Redis is unreachable at shutdown: %d journalled writes are lost",
                    self.pending_writes,
                )
        await self.primary.close()
        await self.fallback.close()

    async def _write_back_at_close(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.primary.ping()
            # No request comes any more: the breaker may close with the journal unwritten.
            self.degraded = False
            batch, self._journal = self._journal, _Journal()
            await self._replay_batch(batch)

    async def status(self) -> dict[str, JSON]:
        # Readiness must not wait for a request to fail first.
        if not self.degraded:
            try:
                await self.primary.ping()
            except StoreUnavailable as exc:
                with contextlib.suppress(StoreMisconfigured):
                    await self._redis_is_away(exc)
            except StoreMisconfigured:
                pass
        # While degraded the probe pings, and a refusal it met is remembered; otherwise
        # a remembered one is checked again.
        error = self.primary.refusal if self.degraded else await self.primary.refused()
        status: dict[str, JSON] = {
            "store": "memory" if self.degraded else "redis",
            "degraded": self.degraded or error is not None,
            "pending_writes": self.pending_writes,
        }
        if error is not None:
            status["error"] = error
        if self.degraded and self.away_since is not None:
            status["unreachable_since"] = self.away_since
        return status

    async def create(self, user: str, session_id: str, *, data: JSON = None) -> Session:
        session = await self._on_redis(
            user, lambda: self.primary.create(user, session_id, data=data)
        )
        if not isinstance(session, _Away):
            self._mirror(session)
            return session
        self._make_room()
        session = await self.fallback.create(user, session_id, data=data)
        self._journal.created.add((user, session_id))
        return session

    async def get(self, user: str, session_id: str) -> Session | None:
        found = await self._on_redis(user, lambda: self.primary.get(user, session_id), retry=True)
        if not isinstance(found, _Away):
            self._follow(user, session_id, found)
            return found
        return self._held(user, session_id, await self.fallback.get(user, session_id))

    async def list_sessions(self, user: str) -> list[Session]:
        listed = await self._on_redis(user, lambda: self.primary.list_sessions(user), retry=True)
        if not isinstance(listed, _Away):
            return listed
        return await self.fallback.list_sessions(user)

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
        found = await self._on_redis(
            user,
            lambda: self.primary.touch(
                user, session_id, transport=transport, state=state, data=data, unseen_for=unseen_for
            ),
            retry=True,
        )
        if not isinstance(found, _Away):
            self._follow(user, session_id, found)
            return found
        session = await self.fallback.touch(
            user, session_id, transport=transport, state=state, data=data, unseen_for=unseen_for
        )
        if session is not None:
            self._journal_touch((user, session_id))
        return self._held(user, session_id, session)

    async def delete(self, user: str, session_ids: Sequence[str], reason: str) -> list[str]:
        deleted = await self._on_redis(user, lambda: self.primary.delete(user, session_ids, reason))
        if not isinstance(deleted, _Away):
            self._forget(user, session_ids)
            return deleted
        ids = list(dict.fromkeys(session_ids))
        if not ids:
            return []
        # Journal every id asked for, not only those the mirror knew: Redis may hold
        # ones this process never saw, and the user asked for them to go.
        pending = self._journal.deleted.get(user, {})
        self._check_journal_room(sum(1 for sid in ids if sid not in pending))
        deleted = await self.fallback.delete(user, ids, reason)
        self._forget(user, ids)
        self._journal.drop(user, ids)
        self._journal.deleted.setdefault(user, {}).update(dict.fromkeys(ids, reason))
        return deleted

    async def delete_all(self, user: str, reason: str) -> list[str]:
        deleted = await self._on_redis(user, lambda: self.primary.delete_all(user, reason))
        if not isinstance(deleted, _Away):
            self._forget(user, deleted)
            return deleted
        # "All" is everything seen up to now. The cutoff also passes every session held
        # here (whatever the clocks say), so that all of them go; a session created
        # after this moment is a newer write and survives the write-back.
        held = await self.fallback.list_sessions(user)
        cutoff = max([self.fallback.clock(), *(s.last_seen for s in held)]) + 0.001
        return await self.delete_seen_before(user, cutoff, reason)

    async def delete_inactive(self, user: str, inactive_for: float, reason: str) -> list[str]:
        deleted = await self._on_redis(
            user, lambda: self.primary.delete_inactive(user, inactive_for, reason)
        )
        if not isinstance(deleted, _Away):
            self._forget(user, deleted)
            return deleted
        return await self.delete_seen_before(user, self.fallback.clock() - inactive_for, reason)

    async def delete_seen_before(self, user: str, cutoff: float, reason: str) -> list[str]:
        deleted = await self._on_redis(
            user, lambda: self.primary.delete_seen_before(user, cutoff, reason)
        )
        if not isinstance(deleted, _Away):
            self._forget(user, deleted)
            return deleted
        self._check_journal_room(0 if user in self._journal.cleanups else 1)
        deleted = await self.fallback.delete_seen_before(user, cutoff, reason)
        self._forget(user, deleted)
        self._journal.drop(user, deleted)
        self._journal.cleanup(user, cutoff, reason)
        return deleted

    async def refresh(self, refs: Sequence[SessionRef]) -> list[SessionRef]:
        try:
            missing = await self._on_redis(
                {user for user, _ in refs}, lambda: self.primary.refresh(refs), retry=True
            )
        except (StoreBusy, StoreMisconfigured):
            # Redis answers but did not take this tick in time, or refuses it (logged by
            # RedisStore): nothing is known to be gone, and the next tick extends every
            # TTL again (ticks run well inside it).
            return []
        if not isinstance(missing, _Away):
            gone: set[SessionRef] = set(missing)
            for ref in gone:
                self._forget(ref[0], [ref[1]])
            lru = self._lru
            for ref, held in zip(refs, self.fallback.seen(refs), strict=True):
                if held and ref in lru:
                    # Open sockets' sessions are the last the mirror lets go.
                    lru.move_to_end(ref)
            return missing
        # During an outage a socket's session may be one the mirror lacks; nothing here
        # can tell whether it still exists, so no socket is closed for it: Redis decides
        # on the first tick after recovery.
        for ref, held in zip(refs, self.fallback.seen(refs), strict=True):
            if held:
                self._journal_touch(ref)
        return []

    async def on_ended(self, user: str, session_id: str, reason: str) -> None:
        """A session ended by another process (or this one) must not live on in this
        mirror, where an outage would serve it again."""
        self._forget(user, [session_id])
        self._journal.touched.discard((user, session_id))

    async def wait_recovered(self) -> None:
        """Returns once the breaker has closed again and the journal is written back (for
        tests and tooling)."""
        while self.degraded or self._writing is not None:
            self._recovered.clear()
            await self._recovered.wait()

    async def _on_redis(
        self,
        users: str | Collection[str],
        call: Callable[[], Awaitable[_T]],
        *,
        retry: bool = False,
    ) -> _T | _Away:
        """Runs ``call`` (an operation on the sessions of ``users``) on Redis, or returns
        :data:`_AWAY` when the breaker is open. While the journal is replayed, a call
        for a user with entries in the replayed batch waits for the replay to end.

        A call that fails opens the breaker only if a probe on a connection of its own
        fails too; otherwise this process, not Redis, was the trouble (every pooled
        connection taken, or the event loop stalled past the call's bound). The call is
        then tried once more if ``retry`` (it can safely run twice), and otherwise, or
        if that fails too, the request gets :class:`StoreBusy` (503, try again).
        """
        if self._held_back:
            await self._after_replay(users)
        cause: StoreUnavailable | None = None
        for _ in range(2 if retry else 1):
            if self.degraded:
                return _AWAY
            try:
                return await call()
            except StoreUnavailable as exc:
                if await self._redis_is_away(exc):
                    return _AWAY
                cause = exc
        raise StoreBusy("the session store is busy; try again shortly") from cause

    async def _after_replay(self, users: str | Collection[str]) -> None:
        while not self.degraded and (
            users in self._held_back
            if isinstance(users, str)
            else not self._held_back.isdisjoint(users)
        ):
            await self._replay_over.wait()

    async def _redis_is_away(self, failure: StoreUnavailable) -> bool:
        """After a failed call: probes Redis and opens the breaker if it does not answer.
        Calls that fail together share one probe."""
        if self.degraded:
            return True
        if self._probing is None:
            self._probing = asyncio.ensure_future(self._confirm(failure))
        # Shielded: a request that goes away must not cancel the probe others wait on.
        return await asyncio.shield(self._probing)

    async def _confirm(self, failure: StoreUnavailable) -> bool:
        try:
            loop = asyncio.get_running_loop()
            for _ in range(_PROBES):
                started = loop.time()
                try:
                    await self.primary.probe()
                except StoreUnavailable:
                    if loop.time() - started > 1.5 * self.primary.probe_bound:
                        # The probe's own timer fired late: the loop stalled, and the
                        # failure says nothing about Redis. Ask again.
                        continue
                    self._trip(f"Redis stopped answering ({failure})")
                    return True
                self.busy_failures += 1
                logger.warning("a Redis call failed (%s) but Redis answers: not an outage", failure)
                return False
            self._trip(f"Redis stopped answering ({failure}) and the event loop is stalling")
            return True
        finally:
            self._probing = None

    def _follow(self, user: str, session_id: str, session: Session | None) -> None:
        """The mirror follows what Redis answered for one session."""
        if session is None:
            self._forget(user, [session_id])
        else:
            self._mirror(session)

    def _held(self, user: str, session_id: str, session: Session | None) -> Session | None:
        """What the fallback answers for one session while Redis is away: a session it
        does not hold is "not found" only if it is known to be gone; otherwise it may
        well be in Redis, so the request is to be tried again."""
        if session is not None or self._known_gone(user, session_id):
            return session
        raise StoreBusy(
            "the session store is unreachable and this server does not hold this "
            "session; try again shortly"
        )

    def _known_gone(self, user: str, session_id: str) -> bool:
        if (user, session_id) in self._gone:
            return True
        return any(
            session_id in journal.deleted.get(user, ())
            for journal in (self._journal, self._writing)
            if journal is not None
        )

    def _mirror(self, session: Session) -> None:
        ref = (session.user, session.id)
        if not self.fallback.put(session):
            self._make_room()
            if not self.fallback.put(session):
                return
        self._lru[ref] = None
        self._lru.move_to_end(ref)
        self._gone.pop(ref, None)
        # Refs of sessions the mirror dropped by itself (expired) linger here; keep the
        # order no longer than the cap.
        while len(self._lru) > self.fallback.max_sessions:
            self._let_go_oldest()

    def _make_room(self) -> None:
        """Lets go of the least recently seen sessions that Redis also holds until one
        more session fits; sessions known only here are never let go."""
        while len(self.fallback) >= self.fallback.max_sessions and self._lru:
            self._let_go_oldest()

    def _let_go_oldest(self) -> None:
        (user, sid), _ = self._lru.popitem(last=False)
        if not self._dirty((user, sid)):
            self.fallback.forget(user, [sid])

    def _dirty(self, ref: SessionRef) -> bool:
        return self._journal.holds(ref) or (self._writing is not None and self._writing.holds(ref))

    def _forget(self, user: str, session_ids: Sequence[str]) -> None:
        """Drops sessions known to be gone (deleted, expired or ended, here or in Redis)
        and remembers the latest of them as gone."""
        self.fallback.forget(user, session_ids)
        for sid in session_ids:
            ref = (user, sid)
            self._lru.pop(ref, None)
            self._gone[ref] = None
            self._gone.move_to_end(ref)
        while len(self._gone) > _TOMBSTONES:
            self._gone.popitem(last=False)

    def _journal_touch(self, ref: SessionRef) -> None:
        # A session created during the outage is written back whole, latest state
        # included; one being restored right now gets its heartbeat in the next pass.
        if ref not in self._journal.created:
            self._journal.touched.add(ref)

    def _check_journal_room(self, more: int) -> None:
        if self._journal.deletions + more > self.fallback.max_sessions:
            raise StoreFull(
                "too many deletions are waiting for Redis to come back; try again shortly"
            )

    def _trip(self, why: str) -> None:
        if self.degraded:
            return
        self.degraded = True
        self.away_since = time.time()
        metrics.REDIS_BREAKER_TRIPS.inc()
        # Requests waiting for a replay are served from memory now.
        self._replay_over.set()
        logger.warning("%s: serving from memory until it is back", why)
        # A probe that failed after close() began must not start one that outlives it.
        if not self._closed and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self._probe_until_back(), name="redis-probe")

    async def _probe_until_back(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.probe_interval)
            await self._prune_journal()
            try:
                await self.primary.ping()
            except (StoreUnavailable, StoreMisconfigured):
                # Away still, or back but refusing (RedisStore logs that, once a minute).
                continue
            if await self._replay():
                return

    async def _replay(self) -> bool:
        """Closes the breaker and writes the journal back (see the module docstring).
        Returns False if the breaker opened again meanwhile."""
        batch, self._journal = self._journal, _Journal()
        started = asyncio.get_running_loop().time()
        pending = len(batch)
        self._held_back = batch.users()
        self._replay_over.clear()
        # No await since the journal was frozen: every write made while the breaker was
        # open is in the batch, and every later one waits for it or has nothing in it.
        self.degraded = False
        self.away_since = None
        logger.warning(
            "Redis is back: writing back %d journalled writes; users without any are "
            "served from Redis again",
            pending,
        )
        try:
            await self._replay_batch(batch)
        finally:
            self._held_back = frozenset()
            self._replay_over.set()
            self._recovered.set()
        if self.degraded:
            return False
        logger.warning(
            "journalled writes written back in %.2f s",
            asyncio.get_running_loop().time() - started,
        )
        return True

    async def _replay_batch(self, batch: _Journal) -> None:
        """Writes ``batch`` to Redis until it is empty or the breaker opens again; what
        is left then goes back into the journal, ahead of the writes made since."""
        self._writing = batch
        busy = 0
        try:
            while batch and not self.degraded:
                try:
                    await self._write(batch)
                except StoreUnavailable as exc:
                    if await self._redis_is_away(exc):
                        break
                    # Redis answers: this process was busy. Entries written stay written;
                    # the rest is tried again, a few times.
                    busy += 1
                    if busy >= _PROBES:
                        self._trip(f"the write-back to Redis keeps failing ({exc})")
                except Exception:
                    logger.exception("write-back to Redis failed; retrying")
                    self._trip("the write-back to Redis failed")
        finally:
            self._writing = None
            if batch:
                batch.absorb(self._journal)
                self._journal = batch

    async def _prune_journal(self) -> None:
        # In an outage longer than the TTL, sessions created or heartbeated here expire
        # from memory; their refs need not wait for Redis any longer.
        journal = self._journal
        if len(journal.created) + len(journal.touched) <= self.fallback.max_sessions:
            return
        for refs in (journal.created, journal.touched):
            for ref in list(refs):
                if await self.fallback.get(*ref) is None:
                    refs.discard(ref)

    async def _write(self, batch: _Journal) -> None:
        # Each chunk's entries leave the batch once Redis has them, so a failure part-way
        # resumes where it stopped (writing an entry twice is harmless: each is written
        # with its own times). Entries are read from the mirror as they are written, so a
        # session deleted or ended meanwhile is not written at all.
        batch.touched -= batch.created  # written whole, latest state included, below
        for refs in _chunks(sorted(batch.touched)):
            held = [s for s in [await self.fallback.get(*ref) for ref in refs] if s is not None]
            for session, written in zip(held, await self.primary.replay_touches(held), strict=True):
                ref = (session.user, session.id)
                if written is None:
                    # Redis no longer has it (deleted elsewhere, expired by its clock,
                    # or lost in a restart): the mirror follows Redis.
                    self._forget(session.user, [session.id])
                else:
                    self._lru[ref] = None
            batch.touched.difference_update(refs)
        deletions: list[tuple[str, list[str], str]] = []
        for user, ids in batch.deleted.items():
            by_reason: dict[str, list[str]] = {}
            for sid, reason in ids.items():
                by_reason.setdefault(reason, []).append(sid)
            for reason, sids in by_reason.items():
                deletions += [(user, part, reason) for part in _chunks(sids)]
        # At most a batch's worth of ids a round trip.
        chunks: list[list[tuple[str, list[str], str]]] = [[]]
        size = 0
        for deletion in deletions:
            if size + len(deletion[1]) > WRITE_BACK_BATCH:
                chunks.append([])
                size = 0
            chunks[-1].append(deletion)
            size += len(deletion[1])
        for chunk in chunks:
            await self.primary.delete_many(chunk)
            for user, sids, _ in chunk:
                ids = batch.deleted[user]
                for sid in sids:
                    del ids[sid]
                if not ids:
                    del batch.deleted[user]
        for cleanups in _chunks(list(batch.cleanups.items())):
            await self.primary.delete_seen_before_many(
                [(user, cutoff, reason) for user, (cutoff, reason) in cleanups]
            )
            for user, _ in cleanups:
                del batch.cleanups[user]
        for refs in _chunks(sorted(batch.created)):
            held = [s for s in [await self.fallback.get(*ref) for ref in refs] if s is not None]
            deadlines = [self.fallback.deadline_of(session) for session in held]
            restored = await self.primary.restore_many(
                [
                    (session, None if math.isinf(deadline) else deadline)
                    for session, deadline in zip(held, deadlines, strict=True)
                ]
            )
            for session, kept in zip(held, restored, strict=True):
                if kept:
                    self._lru[(session.user, session.id)] = None
                else:
                    self._forget(session.user, [session.id])
            batch.created.difference_update(refs)


def _chunks(items: list[_Item]) -> list[list[_Item]]:
    return [items[i : i + WRITE_BACK_BATCH] for i in range(0, len(items), WRITE_BACK_BATCH)]
