"""Hypothesis state machines over the session stores: random sequences of operations,
Redis going down and coming back, and the process restarting, with the invariants
checked after every step.

- :class:`FallbackMachine` runs the production store (Redis with the in-memory
  fallback) over a real redis-server behind the fault-injecting proxy. Redis keeps its
  own clock, so nothing here expires: TTL and lifetime are longer than a run.
- :class:`MemoryMachine` runs the in-memory store (the fallback's part) on a clock the
  test advances, where expiry and the absolute lifetime are exact.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from presence import keys
from presence.exceptions import StoreBusy, StoreFull
from presence.sessions import new_session_id
from presence.stores import FallbackStore, MemoryStore, RedisStore

from .conftest import Clock
from .proxy import Proxy
from .utils import UNIT

USERS = ("alice", "bob")
TTL = 120.0
MAX_LIFETIME = 60.0
# The slack allowed on the expiry a read reports: Redis answers with a PTTL, which the
# store adds to this process's clock when the answer arrives, late by its latency. The
# exact check is on the PTTL in Redis itself.
LATENCY = 10 * UNIT

SETTINGS = settings(
    max_examples=20,
    stateful_step_count=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

Ref = tuple[str, str]


class FallbackMachine(RuleBasedStateMachine):
    """The model: which sessions are alive, deleted or of unknown fate, which ones this
    process's mirror holds, and (for ``inactive`` cleanup) which were seen since the
    last checkpoint. Reads are checked against it while Redis is up, and against what
    the mirror can know while it is down; after every recovery Redis itself is read
    and must hold exactly the live sessions."""

    refs = Bundle("refs")

    def __init__(self, redis_url: str) -> None:
        super().__init__()
        address = urlsplit(redis_url)
        self.redis = redis.Redis(host=address.hostname, port=address.port, decode_responses=True)
        self.redis.flushall()
        self.loop = asyncio.new_event_loop()
        self.proxy = Proxy(address.hostname or "127.0.0.1", address.port or 6379)
        self.run(self.proxy.start())
        self.store = self.run(self._open_store())
        # ref -> seen since the last checkpoint (True when unsure)
        self.alive: dict[Ref, bool] = {}
        self.deleted: set[Ref] = set()
        # Sessions whose fate only Redis knows until the next recovery (see cleanup).
        self.uncertain: set[Ref] = set()
        self.known: set[Ref] = set()
        self.down = False
        self.checkpoint_at: float | None = None
        self.checkpoint_in_outage = False
        # alive and uncertain when the outage began: what Redis holds until it ends.
        self.before_outage: tuple[dict[Ref, bool], set[Ref]] = ({}, set())

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    async def _open_store(self) -> FallbackStore:
        primary = RedisStore(self.proxy.url, ttl=TTL, max_lifetime=MAX_LIFETIME)
        fallback = MemoryStore(ttl=TTL, max_lifetime=MAX_LIFETIME)
        store = FallbackStore(primary, fallback, probe_interval=UNIT / 2)
        await store.open()
        return store

    def teardown(self) -> None:
        try:
            self.proxy.heal()
            self.run(self._recovered())
            self._check_redis()
        finally:
            self.run(self.store.close())
            self.run(self.proxy.close())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            self.redis.close()

    # --- what the process can see --------------------------------------------------------

    def _visible(self, ref: Ref) -> bool:
        """Whether the store should answer for a live session: from Redis everything,
        from memory only what the mirror holds."""
        return ref in self.alive and (not self.store.degraded or ref in self.known)

    def _of(self, user: str) -> list[Ref]:
        return [ref for ref in self.alive if ref[0] == user]

    def _delete(self, ref: Ref) -> None:
        self.alive.pop(ref, None)
        self.uncertain.discard(ref)
        self.known.discard(ref)
        self.deleted.add(ref)

    # --- operations ----------------------------------------------------------------------

    @initialize(target=refs, users=st.lists(st.sampled_from(USERS), min_size=1, max_size=3))
    def sessions_to_begin_with(self, users: list[str]):
        return multiple(*(self.create(user) for user in users))

    @rule(target=refs, user=st.sampled_from(USERS))
    def create(self, user: str) -> Ref:
        session = self.run(self.store.create(user, new_session_id()))
        ref = (user, session.id)
        self.alive[ref] = True
        self.known.add(ref)
        return ref

    def _unknowable(self, ref: Ref) -> bool:
        """Whether the store may answer "try again" (503) for ``ref``: during an outage
        (a slow moment may open the breaker on its own), for a session the mirror lacks."""
        return self.store.degraded and ref not in self.known

    @rule(ref=refs, state=st.sampled_from(["active", "away"]))
    def heartbeat(self, ref: Ref, state: str) -> None:
        try:
            session = self.run(self.store.touch(*ref, transport="http", state=state))
        except StoreBusy:
            assert self._unknowable(ref) or ref in self.uncertain
            return
        if ref in self.uncertain:
            return
        assert (session is not None) == self._visible(ref)
        if session is not None:
            self.alive[ref] = True
            self.known.add(ref)
        elif not self.store.degraded:
            self.known.discard(ref)

    @rule(ref=refs)
    def get(self, ref: Ref) -> None:
        try:
            session = self.run(self.store.get(*ref))
        except StoreBusy:
            assert self._unknowable(ref) or ref in self.uncertain
            return
        if ref in self.uncertain:
            return
        assert (session is not None) == self._visible(ref)
        if session is not None:
            assert session.id == ref[1] and session.user == ref[0]
            self.known.add(ref)
        elif not self.store.degraded:
            self.known.discard(ref)

    @rule(ref=refs)
    def delete(self, ref: Ref) -> None:
        expected = self._visible(ref)
        deleted = self.run(self.store.delete(ref[0], [ref[1]], "deleted"))
        if ref not in self.uncertain:
            assert deleted == ([ref[1]] if expected else [])
        self._delete(ref)

    @rule(user=st.sampled_from(USERS))
    def cleanup_all(self, user: str) -> None:
        expected = {ref[1] for ref in self._of(user) if self._visible(ref)}
        deleted = set(self.run(self.store.delete_all(user, "cleanup")))
        uncertain = {ref[1] for ref in self.uncertain if ref[0] == user}
        assert expected <= deleted <= expected | uncertain
        for ref in self._of(user) + [ref for ref in self.uncertain if ref[0] == user]:
            self._delete(ref)

    @rule()
    def checkpoint(self) -> None:
        """Marks a moment that inactive cleanup cuts at, with a margin either side."""
        self.run(asyncio.sleep(UNIT / 5))
        self.checkpoint_at = time.time()
        self.checkpoint_in_outage = self.down
        self.run(asyncio.sleep(UNIT / 5))
        for ref in self.alive:
            self.alive[ref] = False

    @precondition(lambda self: self.checkpoint_at is not None)
    @rule(user=st.sampled_from(USERS))
    def cleanup_inactive(self, user: str) -> None:
        """Deletes what was not seen since the checkpoint: sessions last seen before it
        must go, those seen after it may (Redis measures the age on its own clock, a
        moment later), and no other."""
        assert self.checkpoint_at is not None
        inactive_for = time.time() - self.checkpoint_at
        must = {ref for ref in self._of(user) if not self.alive[ref]}
        may = set(self._of(user)) | {ref for ref in self.uncertain if ref[0] == user}
        deleted = {
            (user, sid)
            for sid in self.run(self.store.delete_inactive(user, inactive_for, "cleanup"))
        }
        visible = {ref for ref in may if ref in self.uncertain or self._visible(ref)}
        assert {ref for ref in must if self._visible(ref)} <= deleted <= visible
        for ref in deleted | must:
            self._delete(ref)
        if self.store.degraded:
            # The cutoff reaches the sessions the mirror lacks when it is written back;
            # whether one seen just after the checkpoint goes, Redis will tell.
            for ref in may - deleted - must:
                if not self._visible(ref) and ref in self.alive:
                    del self.alive[ref]
                    self.uncertain.add(ref)

    @rule(chosen=st.lists(refs, min_size=1, max_size=3, unique=True))
    def refresh(self, chosen: list[Ref]) -> None:
        """The refresher's tick for sockets held open on these sessions."""
        missing = self.run(self.store.refresh(chosen))
        if self.store.degraded:
            assert missing == []
            for ref in chosen:
                if self._visible(ref):
                    self.alive[ref] = True
            return
        certain = [ref for ref in chosen if ref not in self.uncertain]
        # The store answers grouped by user, not in the order asked.
        assert {ref for ref in missing if ref in certain} == {
            ref for ref in certain if ref not in self.alive
        }
        for ref in certain:
            if ref in self.alive:
                self.alive[ref] = True
            else:
                self.known.discard(ref)

    # --- faults --------------------------------------------------------------------------

    @precondition(lambda self: not self.down)
    @rule(how=st.sampled_from(["blackhole", "reset"]))
    def redis_down(self, how: str) -> None:
        # A slow moment may have opened the breaker on its own; start from a written-back
        # journal so that the model's "before the outage" is what Redis holds.
        self.run(self._recovered())
        self.proxy.blackhole() if how == "blackhole" else self.proxy.reset()
        self.down = True
        self.before_outage = (dict(self.alive), set(self.uncertain))
        self.checkpoint_in_outage = False

    @precondition(lambda self: self.down)
    @rule()
    def redis_up(self) -> None:
        self.proxy.heal()
        self.down = False
        self.run(self._recovered())
        self._check_redis()

    @rule()
    def restart(self) -> None:
        """A new process over the same Redis: the mirror, and during an outage the
        journal, are lost."""
        self.run(self.store.close())
        if self.down:
            # The documented loss: what this process did during the outage never reaches
            # Redis, which holds what it held when the outage began. Sessions created
            # meanwhile are gone; sessions deleted meanwhile are back.
            everything = set(self.alive) | self.uncertain | self.deleted
            alive, uncertain = self.before_outage
            self.alive = {
                ref: seen and not self.checkpoint_in_outage for ref, seen in alive.items()
            }
            self.uncertain = set(uncertain)
            self.deleted = everything - set(self.alive) - self.uncertain
        self.known = set()
        self.store = self.run(self._open_store())

    async def _recovered(self) -> None:
        if self.store.degraded:
            await asyncio.wait_for(self.store.wait_recovered(), timeout=100 * UNIT)

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def each_user_sees_their_own_live_sessions_only(self) -> None:
        for user in USERS:
            listed = self.run(self.store.list_sessions(user))
            ids = {(user, s.id) for s in listed}
            assert not ids & self.deleted, "a deleted session reappeared"
            certain = ids - self.uncertain
            expected = {ref for ref in self._of(user) if self._visible(ref)}
            assert certain == expected, "an acknowledged session is missing or extra"
            other = next(u for u in USERS if u != user)
            for session in listed:
                assert session.user == user
                try:
                    assert self.run(self.store.get(other, session.id)) is None
                except StoreBusy:
                    # Another user's session is not in this user's part of the mirror.
                    assert self.store.degraded
                assert session.expires_at <= session.last_seen + TTL + LATENCY
                assert session.expires_at <= session.created_at + MAX_LIFETIME + LATENCY

    def _check_redis(self) -> None:
        """Redis holds exactly the live sessions, each in the lone slot or with its index
        entry, and no TTL beyond the TTL or the absolute lifetime; the fate of uncertain
        ones is read."""
        stored: set[Ref] = set()
        limit = min(TTL, MAX_LIFETIME) * 1000
        for user in USERS:
            pattern = keys.session_key("presence", user, "*")
            sids = {key.rsplit(":", 1)[1] for key in self.redis.keys(pattern)}
            index = set(self.redis.zrange(keys.index_key("presence", user), 0, -1))
            assert index == sids, f"index and session keys of {user} disagree"
            for sid in sids:
                pttl = self.redis.pttl(keys.session_key("presence", user, sid))
                assert 0 < pttl <= limit
            lone = self.redis.get(keys.lone_key("presence", user))
            if lone is not None:
                sid = lone.split("|", 1)[0]
                assert sid not in sids, f"a session of {user} is stored twice"
                assert 0 < self.redis.pttl(keys.lone_key("presence", user)) <= limit
                sids.add(sid)
            stored |= {(user, sid) for sid in sids}
        for ref in self.uncertain:
            if ref in stored:
                self.alive[ref] = True
            else:
                self.deleted.add(ref)
        self.uncertain = set()
        assert not stored & self.deleted, "a deleted session is back in Redis"
        assert stored == set(self.alive), "Redis does not hold exactly the live sessions"


@pytest.mark.redis
@pytest.mark.slow
def test_fallback_store_keeps_its_promises_through_outages_and_restarts(redis_url):
    """Through any sequence of operations, Redis outages and process restarts, a user
    sees only their own live sessions, nothing deleted reappears, no acknowledged write
    is lost (bar the documented loss of a process restarted during an outage), and no
    TTL exceeds the TTL or the absolute lifetime."""
    run_state_machine_as_test(lambda: FallbackMachine(redis_url), settings=SETTINGS)


def _complete(coroutine):
    """Runs a coroutine of the memory store, which never suspends, to its result."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the memory store suspended")


class MemoryMachine(RuleBasedStateMachine):
    """The in-memory store on a hand-driven clock: the model predicts every session's
    expiry exactly, so expiry, the absolute lifetime and the caps are checked to the
    instant."""

    refs = Bundle("refs")
    ttl = 10.0
    max_lifetime = 25.0
    per_user = 3
    cap = 5

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.store = MemoryStore(
            ttl=self.ttl,
            max_lifetime=self.max_lifetime,
            max_sessions_per_user=self.per_user,
            max_sessions=self.cap,
            clock=self.clock,
        )
        # ref -> (created_at, last_seen, expires_at)
        self.model: dict[Ref, tuple[float, float, float]] = {}
        self.deleted: set[Ref] = set()

    def _live(self, user: str | None = None) -> list[Ref]:
        now = self.clock()
        return [
            ref
            for ref, (_, _, expires) in self.model.items()
            if expires > now and (user is None or ref[0] == user)
        ]

    @rule(target=refs, user=st.sampled_from(USERS))
    def create(self, user: str) -> Ref:
        sid = new_session_id()
        now = self.clock()
        live = self._live(user)
        try:
            # Never TooManySessions: no socket holds any of these sessions open.
            session = _complete(self.store.create(user, sid))
        except StoreFull:
            assert len(live) < self.per_user and len(self._live()) >= self.cap
            return (user, sid)
        if len(live) >= self.per_user:
            # At the cap, no session being held open, the least recently seen one went.
            listed = {s.id for s in _complete(self.store.list_sessions(user))}
            gone = [ref for ref in live if ref[1] not in listed]
            oldest = min(self.model[ref][1] for ref in live)
            assert len(gone) == 1 and self.model[gone[0]][1] == oldest
            del self.model[gone[0]]
            self.deleted.add(gone[0])
        else:
            assert len(self._live()) < self.cap
        expires = min(now + self.ttl, now + self.max_lifetime)
        assert session.expires_at == expires
        self.model[(user, sid)] = (now, now, expires)
        return (user, sid)

    @rule(ref=refs)
    def heartbeat(self, ref: Ref) -> None:
        session = _complete(self.store.touch(*ref, state="away"))
        assert (session is not None) == (ref in self._live())
        if session is not None:
            created, _, _ = self.model[ref]
            now = self.clock()
            expires = min(now + self.ttl, created + self.max_lifetime)
            assert (session.last_seen, session.expires_at) == (now, expires)
            self.model[ref] = (created, now, expires)

    @rule(ref=refs)
    def delete(self, ref: Ref) -> None:
        deleted = _complete(self.store.delete(ref[0], [ref[1]], "deleted"))
        assert deleted == ([ref[1]] if ref in self._live() else [])
        self.model.pop(ref, None)
        self.deleted.add(ref)

    @rule(user=st.sampled_from(USERS))
    def cleanup_all(self, user: str) -> None:
        deleted = _complete(self.store.delete_all(user, "cleanup"))
        assert set(deleted) == {sid for _, sid in self._live(user)}
        for ref in self._live(user):
            del self.model[ref]
            self.deleted.add(ref)

    @rule(user=st.sampled_from(USERS), inactive_for=st.sampled_from([0.0, 1.0, 5.0, 9.5]))
    def cleanup_inactive(self, user: str, inactive_for: float) -> None:
        deleted = _complete(self.store.delete_inactive(user, inactive_for, "cleanup"))
        cutoff = self.clock() - inactive_for
        stale = {ref for ref in self._live(user) if self.model[ref][1] < cutoff}
        assert {(user, sid) for sid in deleted} == stale
        for ref in stale:
            del self.model[ref]
            self.deleted.add(ref)

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 9.999, 10.0, 15.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def sweep(self) -> None:
        self.store.sweep()
        assert len(self.store) == len(self._live())

    @invariant()
    def reads_match_the_model_to_the_instant(self) -> None:
        for user in USERS:
            listed = _complete(self.store.list_sessions(user))
            assert {(user, s.id) for s in listed} == set(self._live(user))
            for session in listed:
                created, last_seen, expires = self.model[(user, session.id)]
                assert (session.created_at, session.last_seen) == (created, last_seen)
                assert session.expires_at == expires
                assert session.expires_at <= session.created_at + self.max_lifetime
                assert session.expires_at <= session.last_seen + self.ttl
        assert len(self.store) >= len(self._live())


def test_memory_store_expires_and_caps_exactly_as_modelled():
    """On a hand-driven clock the in-memory store expires sessions exactly at
    min(last_seen + TTL, created + lifetime), never lets a heartbeat pass the lifetime,
    keeps users apart, refuses past its size cap, and at the per-user cap replaces the
    least recently seen session."""
    run_state_machine_as_test(
        MemoryMachine, settings=settings(SETTINGS, max_examples=100, stateful_step_count=30)
    )
