"""The presence store contract, on every store: memory, fakeredis, a real redis-server
and a real three-primary Redis Cluster.

The state machine drives random sequences of open, close (by socket or timeout), hide,
show, idle, join, leave, meta updates, crashes and graces running out, over six
sessions of three users held by two processes, and checks after every step that each
watcher's view (a sync, then every diff applied in order) equals the store's members,
that the members follow the rules (sessions counted, the latest meta, one status per
user across tabs), that every leave carries its reason and when the user was last seen,
and that nobody is left behind once everyone has gone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis as sync_redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from presence.rooms import View
from presence.stores import RedisStore
from presence.stores.presence_memory import MemoryPresenceStore
from presence.stores.presence_redis import RedisPresenceStore

from .conftest import Clock

USERS = ("ann", "bob", "cy")
SESSIONS = {f"{user}-{n}": user for user in USERS for n in range(2)}
ROOMS = ("lobby", "dev:1")
HOLDERS = ("p1", "p2")
KINDS = ["memory", "fakeredis", "redis", "cluster"]


class _Stores:
    """Builds presence stores of one kind, each in the caller's event loop."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.url = None
        if kind == "redis":
            self.url = request.getfixturevalue("redis_url")
        elif kind == "cluster":
            self.url = request.getfixturevalue("redis_cluster_url").replace("+cluster", "")
            self.cluster = request.getfixturevalue("redis_cluster")

    def flush(self) -> None:
        if self.kind == "redis":
            with sync_redis.Redis.from_url(self.url) as client:
                client.flushall()
        elif self.kind == "cluster":
            self.cluster.flush()

    async def open(self, clock: Clock):
        if self.kind == "memory":
            return MemoryPresenceStore(clock=clock), None
        if self.kind == "fakeredis":
            import fakeredis

            sessions = RedisStore(client=fakeredis.FakeAsyncRedis(decode_responses=True), ttl=60.0)
        else:
            sessions = RedisStore(self.url, ttl=60.0, cluster=self.kind == "cluster")
        await sessions.open()
        store = RedisPresenceStore(sessions, keep=60.0)
        await store.open()
        return store, sessions

    def run(self, clock: Clock, scenario: Callable[[Any], Awaitable[None]]) -> None:
        """Runs ``scenario(store)`` on a fresh store of this kind, on an event loop of
        its own, and closes the store after."""
        loop = asyncio.new_event_loop()
        self.flush()
        store, sessions = loop.run_until_complete(self.open(clock))
        try:
            loop.run_until_complete(scenario(store))
        finally:
            if sessions is not None:
                loop.run_until_complete(sessions.close())
            loop.close()


@pytest.fixture(params=KINDS)
def stores(request) -> _Stores:
    return _Stores(request.param, request)


@dataclass
class _Session:
    user: str
    holder: str | None = None
    gen: int = 0
    state: str = "online"
    rooms: dict[str, tuple[object, int]] = field(default_factory=dict)  # meta, its order
    leaving: float | None = None  # the whole tab, since
    reason: str = "closed"
    room_leaving: dict[str, float] = field(default_factory=dict)


class PresenceMachine(RuleBasedStateMachine):
    """A model of the rules beside a presence store, compared after every step."""

    stores: _Stores

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock(1_000.0)
        self.stores.flush()
        self.store, self.sessions = self.run(self.stores.open(self.clock))
        self.model: dict[str, _Session] = {}
        self.holders = {process: f"{process}.0" for process in HOLDERS}
        self.order = 0  # metas set, in order
        self.pending: list[tuple[str, float]] = []  # (sid, since) of graces running
        # (room, user) -> the reason and last_seen their leave must carry
        self.leaves: dict[tuple[str, str], tuple[str, float | None]] = {}
        self.views = {room: View(room) for room in ROOMS}
        for room in ROOMS:
            self.views[room].sync(self.run(self.store.room(room)))

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        if self.sessions is not None:
            self.run(self.sessions.close())
        self.loop.close()

    def tick(self) -> None:
        self.clock.advance(1.0)  # the memory store's clock; Redis keeps its own

    # -- rules --------------------------------------------------------------------------

    @rule(sid=st.sampled_from(sorted(SESSIONS)), process=st.sampled_from(HOLDERS))
    def open(self, sid, process):
        """A socket opens (or reopens inside the grace) on one of the processes."""
        self.tick()
        holder = self.holders[process]
        session = self.model.setdefault(sid, _Session(SESSIONS[sid]))
        session.gen, _ = self.run(self.store.hold(session.user, sid, holder=holder, state="online"))
        session.holder, session.state, session.leaving = holder, "online", None

    def held(self) -> list[str]:
        return sorted(
            sid for sid, s in self.model.items() if s.holder is not None and s.leaving is None
        )

    @precondition(lambda self: self.held())
    @rule(data=st.data(), reason=st.sampled_from(["closed", "timeout"]))
    def close(self, data, reason, sid=None):
        """A socket closes: the tab leaves after the grace unless it comes back."""
        self.tick()
        if sid is None:
            sid = data.draw(st.sampled_from(self.held()))
        session = self.model[sid]
        since = self.run(
            self.store.release(session.user, sid, reason, holder=session.holder, gen=session.gen)
        )
        assert since is not None
        session.leaving, session.reason = since, reason
        self.pending.append((sid, since))

    @rule(sid=st.sampled_from(sorted(SESSIONS)))
    def stale_release(self, sid):
        """A release of an older hold (a timer that fired late) changes nothing."""
        session = self.model.get(sid)
        if session is None or session.holder is None:
            return
        assert (
            self.run(
                self.store.release(
                    session.user, sid, "closed", holder=session.holder, gen=session.gen - 1
                )
            )
            is None
        )

    @precondition(lambda self: self.held())
    @rule(data=st.data(), state=st.sampled_from(["online", "away"]))
    def visibility(self, data, state):
        """A tab is hidden, shown, goes idle or comes back."""
        self.tick()
        sid = data.draw(st.sampled_from(self.held()))
        session = self.model[sid]
        self.run(self.store.set_state(session.user, sid, state, holder=session.holder))
        session.state = state

    @precondition(lambda self: self.held())
    @rule(
        data=st.data(),
        room=st.sampled_from(ROOMS),
        meta=st.one_of(st.none(), st.integers(0, 3), st.just({"nick": "x"}), st.just([])),
        update=st.booleans(),
    )
    def join(self, data, room, meta, update):
        """A held tab joins a room, or sets its meta there (by a join or an update)."""
        self.tick()
        sid = data.draw(st.sampled_from(self.held()))
        session = self.model[sid]
        present = room in session.rooms and room not in session.room_leaving
        if update:
            changed = self.run(self.store.update(session.user, sid, room, meta))
            assert (changed is not None) == present
            if not present:
                return
        else:
            result, _ = self.run(self.store.join(session.user, sid, room, meta, max_rooms=20))
            assert result == ("updated" if present else "joined")
        self.order += 1
        session.rooms[room] = (meta, self.order)
        session.room_leaving.pop(room, None)

    def joined(self) -> list[tuple[str, str]]:
        return sorted(
            (sid, room)
            for sid, s in self.model.items()
            for room in s.rooms
            if room not in s.room_leaving
        )

    @precondition(lambda self: self.joined())
    @rule(data=st.data())
    def leave(self, data):
        """A tab leaves a room: gone after the grace unless it joins again."""
        self.tick()
        sid, room = data.draw(st.sampled_from(self.joined()))
        session = self.model[sid]
        left = self.run(self.store.leave(session.user, sid, room, "left"))
        assert left is not None
        session.room_leaving[room] = left[0]
        self.pending.append((sid, left[0]))

    @precondition(lambda self: self.model)
    @rule(process=st.sampled_from(HOLDERS))
    def crash(self, process):
        """A process dies and is reaped: its tabs go at once. It comes back under a new
        name, as a process run does (a reaped name is never held again)."""
        self.tick()
        holder = self.holders[process]
        self.holders[process] = f"{process}.{int(holder.split('.')[1]) + 1}"
        _, reaped = self.run(self.store.reap(holder))
        assert sorted(reaped) == sorted(
            (s.user, sid) for sid, s in self.model.items() if s.holder == holder
        )
        for sid in [s for s, session in self.model.items() if session.holder == holder]:
            session = self.model[sid]
            for room in list(session.rooms):
                # What was leaving already keeps the first reason it had to go.
                left = session.room_leaving.get(room)
                if left is not None and (session.leaving is None or left <= session.leaving):
                    self._removing(sid, [room], "left", left)
                elif session.leaving is not None:
                    self._removing(sid, [room], session.reason, session.leaving)
                else:
                    self._removing(sid, [room], "node_down", None)
                del session.rooms[room]
            del self.model[sid]
        self.pending = [(sid, since) for sid, since in self.pending if sid in self.model]

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def grace_runs_out(self, data):
        """One running grace ends: what left before it and did not come back goes."""
        self.tick()
        sid, since = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        self.run(self.store.depart(SESSIONS[sid], sid, since=since))
        session = self.model.get(sid)
        if session is None:
            return
        if session.leaving is not None and session.leaving <= since:
            self._tab_goes(sid, session)
            return
        for room, left in list(session.room_leaving.items()):
            if left <= since:
                self._removing(sid, [room], "left", left)
                del session.room_leaving[room]
                del session.rooms[room]

    @precondition(lambda self: self.model)
    @rule()
    def everyone_leaves(self):
        """Every tab closes and every grace runs out: nobody is left behind."""
        for sid in self.held():
            self.close(None, "closed", sid=sid)
        while self.pending:
            sid, since = self.pending.pop(0)
            self.run(self.store.depart(SESSIONS[sid], sid, since=since))
            session = self.model.get(sid)
            if session is not None and session.leaving is not None and session.leaving <= since:
                self._tab_goes(sid, session)
            elif session is not None:
                for room, left in list(session.room_leaving.items()):
                    if left <= since:
                        self._removing(sid, [room], "left", left)
                        del session.room_leaving[room]
                        del session.rooms[room]
        assert not self.model
        self.every_view_equals_the_store_and_the_rules()
        for room in ROOMS:
            assert self.run(self.store.room(room)).count == 0
        for user in USERS:
            presence = self.run(self.store.user(user))
            assert (presence.status, presence.sessions, presence.rooms) == ("offline", 0, ())

    def _tab_goes(self, sid: str, session: _Session) -> None:
        """A leaving tab goes with its rooms, each for the first of the reasons it had
        to go: its own leaving, or the tab's."""
        for room in list(session.rooms):
            left = session.room_leaving.get(room)
            if left is not None and left <= session.leaving:
                self._removing(sid, [room], "left", left)
            else:
                self._removing(sid, [room], session.reason, session.leaving)
            del session.rooms[room]
        del self.model[sid]

    def _removing(self, sid: str, rooms: list[str], reason: str, when: float | None) -> None:
        """Notes the leave that removing ``sid`` from ``rooms`` must announce, for each
        room where it was its user's last session."""
        user = SESSIONS[sid]
        for room in rooms:
            others = [
                s
                for other, s in self.model.items()
                if other != sid and s.user == user and room in s.rooms
            ]
            if not others:
                self.leaves[(room, user)] = (reason, when)

    # -- checks -------------------------------------------------------------------------

    def expected(self, room: str) -> dict[str, tuple[str, int, object]]:
        by_user: dict[str, list[_Session]] = {}
        for session in self.model.values():
            by_user.setdefault(session.user, []).append(session)
        members = {}
        for user, sessions in by_user.items():
            status = "online" if any(s.state == "online" for s in sessions) else "away"
            here = [s for s in sessions if room in s.rooms]
            if here:
                meta = max((s.rooms[room] for s in here), key=lambda pair: pair[1])[0]
                members[user] = (status, len(here), meta)
        return members

    @invariant()
    def every_view_equals_the_store_and_the_rules(self):
        """Flushed, every room's diffs bring its watcher's view to the store's members,
        which are what the rules say (count, meta, status across all tabs), and every
        leave says why and since when."""
        for room in ROOMS:
            diff = self.run(self.store.flush(room))
            if diff is None:
                continue
            for leave in diff.leaves:
                reason, when = self.leaves.pop((room, leave.user))
                assert leave.reason == reason
                if when is not None:
                    assert leave.last_seen == pytest.approx(when, abs=0.001)
            self.views[room].apply(diff)
        for room in ROOMS:
            page = self.run(self.store.room(room))
            view = self.views[room]
            assert view.seq == page.seq
            assert {u: (m.status, m.sessions, m.meta) for u, m in view.members.items()} == {
                m.user: (m.status, m.sessions, m.meta) for m in page.members
            }
            assert view.count == page.count == len(page.members)
            got = {m.user: (m.status, m.sessions, m.meta) for m in page.members}
            assert got == self.expected(room)
        counts = {room: len(self.expected(room)) for room in ROOMS}
        assert sorted(self.run(self.store.rooms(10))) == sorted(
            (room, count) for room, count in counts.items() if count
        )

    @invariant()
    def statuses_follow_the_rules(self):
        """A user is online while a tab of theirs is, away while all are away, offline
        without a tab."""
        for user in USERS:
            sessions = [s for s in self.model.values() if s.user == user]
            want = (
                "offline"
                if not sessions
                else "online"
                if any(s.state == "online" for s in sessions)
                else "away"
            )
            presence = self.run(self.store.user(user))
            assert presence.status == want
            assert presence.sessions == len(sessions)
            assert set(presence.rooms) == {r for s in sessions for r in s.rooms}


# fakeredis runs scripts in an interpreter of its own, several times slower than Redis.
_EXAMPLES = {"memory": 100, "fakeredis": 15, "redis": 40, "cluster": 25}
_STEPS = {"memory": 40, "fakeredis": 30, "redis": 40, "cluster": 40}


def _machine_settings(kind: str):
    return settings(
        max_examples=_EXAMPLES[kind],
        stateful_step_count=_STEPS[kind],
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def test_every_watchers_view_follows_the_store_and_the_rules(stores):
    """Random opens, closes, hides, joins, leaves, metas, crashes and graces: views,
    members, statuses and leaves stay right, on every store."""

    class Machine(PresenceMachine):
        pass

    Machine.stores = stores
    run_state_machine_as_test(Machine, settings=_machine_settings(stores.kind))


def test_a_holder_that_renewed_since_it_lapsed_is_not_reaped(stores):
    """The reap is fenced on the lease: a holder whose lease is not lapsed is left
    alone by another's reap (``if_lapsed``), its tab and rooms intact; once it lapses
    it is reaped, and from then on its renewal says so."""
    clock = Clock(1_000.0)

    async def scenario(store) -> None:
        assert await store.renew("p1", 0.2)
        await store.hold("ann", "ann-0", holder="p1", state="online")
        await store.join("ann", "ann-0", "lobby", {"n": 1}, max_rooms=20)
        await store.flush("lobby")
        assert await store.reap("p1", if_lapsed=True) == ([], [])
        assert (await store.room("lobby")).count == 1
        assert await store.renew("p1", 0.2)  # still its own
        clock.advance(1.0)
        await asyncio.sleep(0.3 if stores.kind != "memory" else 0)
        changed, reaped = await store.reap("p1", if_lapsed=True)
        assert (changed, reaped) == (["lobby"], [("ann", "ann-0")])
        diff = await store.flush("lobby")
        assert diff is not None and [x.reason for x in diff.leaves] == ["node_down"]
        assert not await store.renew("p1", 0.2)

    stores.run(clock, scenario)


def test_a_view_synced_inside_a_window_ends_where_the_store_does(stores):
    """Pages are read from the members as they are, diffs only at a window's end: a
    view synced in the middle of a window (a watcher that came then) ends equal to the
    room once the window's diff is applied, as one synced before it does, whatever the
    window did to who is in the room. A member who joined and was reaped in it is a
    leave with node_down; a meta changed and changed back is no diff (a watcher synced
    in between keeps the meta between until the next change); webhooks tell only what
    was told before: no member.left, no room.occupied or room.vacated for the member
    never told.
    """
    clock = Clock(1_000.0)
    emitted: list[str] = []
    stream = "presence:test:webhooks"

    def told() -> list[str]:
        if stores.kind == "redis":
            with sync_redis.Redis.from_url(stores.url) as client:
                emitted[:] = [json.loads(e[1][b"e"])["type"] for e in client.xrange(stream)]
        return [kind for kind in emitted if kind.startswith(("member.", "room."))]

    async def scenario(store) -> None:
        # The rooms' webhook events (fakeredis's Lua has no sha1hex; on a cluster the
        # streams live in slots of their own, which tests/test_webhooks.py covers).
        if isinstance(store, MemoryPresenceStore):
            store.emit = lambda kind, scope, fields: emitted.append(kind)
        elif stores.kind == "redis":
            store.webhook_streams = [stream]

        async def views_after(room: str, window) -> tuple[View, View]:
            early, late = View(room), View(room)
            early.sync(await store.room(room))
            await window()
            late.sync(await store.room(room))  # read in the middle of the window
            return early, late

        assert await store.renew("p1", 60.0) and await store.renew("p2", 60.0)
        await store.hold("bob", "bob-0", holder="p2", state="online")
        await store.join("bob", "bob-0", "lobby", {"n": 1}, max_rooms=20)
        await store.flush("lobby")
        first_told = told()
        if stores.kind in ("memory", "redis"):
            assert first_told == ["room.occupied", "member.joined"]

        # ann joins on p1, a watcher syncs, p1 dies and is reaped: all in one window.
        async def ann_joins() -> None:
            await store.hold("ann", "ann-0", holder="p1", state="online")
            await store.join("ann", "ann-0", "lobby", {"n": 1}, max_rooms=20)

        early, late = await views_after("lobby", ann_joins)
        assert set(late.members) == {"ann", "bob"} and set(early.members) == {"bob"}
        await store.reap("p1")
        diff = await store.flush("lobby")
        assert diff is not None
        assert [(x.user, x.reason) for x in diff.leaves] == [("ann", "node_down")]
        assert not diff.joins and diff.count == 1
        page = await store.room("lobby")
        for view in (early, late):
            view.apply(diff)
            assert view.members == {m.user: m for m in page.members} and view.count == 1
        assert told() == first_told  # ann was never told: no member.left either

        # bob's meta changed, a watcher syncs, and it is changed back: one window.
        async def bob_changes() -> None:
            await store.update("bob", "bob-0", "lobby", {"n": 2})

        early, late = await views_after("lobby", bob_changes)
        assert late.members["bob"].meta == {"n": 2}
        await store.update("bob", "bob-0", "lobby", {"n": 1})
        assert await store.flush("lobby") is None
        assert early.members["bob"].meta == {"n": 1}

        # cy joins an empty room and goes in one window: a leave, no room.vacated.
        async def cy_joins() -> None:
            await store.hold("cy", "cy-0", holder="p1.1", state="online")
            await store.join("cy", "cy-0", "dev:1", None, max_rooms=20)

        assert await store.renew("p1.1", 60.0)
        early, late = await views_after("dev:1", cy_joins)
        await store.reap("p1.1")
        diff = await store.flush("dev:1")
        assert diff is not None and [x.user for x in diff.leaves] == ["cy"]
        for view in (early, late):
            view.apply(diff)
            assert view.members == {} and view.count == 0
        assert told() == first_told
        assert sorted(await store.rooms(10)) == [("lobby", 1)]

    stores.run(clock, scenario)


@asynccontextmanager
async def _redis_presence(
    url: str, bound: float = 5.0, flush: bool = True
) -> AsyncIterator[RedisPresenceStore]:
    """A Redis presence store on ``url`` (Redis emptied first, unless not ``flush``),
    over a session store whose calls are bound by ``bound`` s; closed after."""
    if flush:
        with sync_redis.Redis.from_url(url) as client:
            client.flushall()
    sessions = RedisStore(url, ttl=60.0, timeout=bound)
    await sessions.open()
    store = RedisPresenceStore(sessions, keep=60.0)
    await store.open()
    try:
        yield store
    finally:
        await sessions.close()


async def _hold_many(store: RedisPresenceStore, holder: str, users: list[str]) -> None:
    assert await store.renew(holder, 60.0)
    for n, user in enumerate(users):
        await store.hold(user, f"{user}-0", holder=holder, state="online")
        await store.join(user, f"{user}-0", ROOMS[n % 2], {"n": 1}, max_rooms=20)
    for room in ROOMS:
        await store.flush(room)


async def _leaves(store: RedisPresenceStore) -> list[str]:
    """Flushes the rooms; the users whose leave their diffs tell (all ``node_down``)."""
    left = []
    for room in ROOMS:
        diff = await store.flush(room)
        if diff is not None:
            assert {x.reason for x in diff.leaves} == {"node_down"}
            left += [x.user for x in diff.leaves]
    return left


async def test_a_large_reap_tells_its_rooms_batch_by_batch_and_loses_no_member(redis_url):
    """A holder of more users than one batch of the reap: the rooms changed are told
    while the reap goes on (more than once), so that their leaves can be flushed in
    several diffs before it ends; every member leaves, once, with ``node_down``."""
    users = [f"u{n:03}" for n in range(350)]
    async with _redis_presence(redis_url) as store:
        await _hold_many(store, "p1", users)
        told: list[list[str]] = []
        left: list[str] = []
        flushes: list[asyncio.Task[list[str]]] = []

        def progress(rooms: list[str]) -> None:
            told.append(rooms)
            flushes.append(asyncio.ensure_future(_leaves(store)))

        changed, reaped = await store.reap("p1", progress=progress)
        for flush in flushes:
            left += await flush
        left += await _leaves(store)
        assert len(told) > 1
        assert sorted({room for rooms in told for room in rooms}) == changed == sorted(ROOMS)
        assert sorted(reaped) == [(user, f"{user}-0") for user in users]
        assert sorted(left) == users  # each once
        assert [(await store.room(room)).count for room in ROOMS] == [0, 0]


async def test_a_reap_cut_off_by_a_redis_outage_resumes_and_loses_no_member(redis_proxy, caplog):
    """Redis goes away between two batches of a reap (every connection reset, new ones
    too) and comes back half a second later: the reap waits it out and goes on where
    it was; every member of the dead holder leaves, none is left behind in a room."""
    users = [f"u{n:03}" for n in range(350)]
    async with _redis_presence(redis_proxy.url, bound=1.0, flush=False) as store:
        await _hold_many(store, "p1", users)
        cut: list[bool] = []

        def progress(rooms: list[str]) -> None:
            if not cut:  # after the first batch: nothing of the reap's is in flight
                cut.append(True)
                redis_proxy.reset()
                asyncio.get_running_loop().call_later(0.5, redis_proxy.heal)

        changed, reaped = await store.reap("p1", progress=progress)
        assert cut and "reap: Redis unavailable" in caplog.text  # it was cut off
        assert changed == sorted(ROOMS)
        assert sorted(reaped) == [(user, f"{user}-0") for user in users]
        assert sorted(await _leaves(store)) == users
        assert [(await store.room(room)).count for room in ROOMS] == [0, 0]
        user = await store.user(users[-1])
        assert user.status == "offline" and not user.rooms


async def test_a_reap_whose_script_reply_was_lost_sends_the_same_rows_again(redis_url):
    """A user's reap script ran but its reply never reached the reaper (a timeout, Redis
    gone meanwhile): the reap tried again gets the same rows, with the same version, so
    the member the first reply would have removed leaves, once, and a member who came
    back elsewhere since is not undone by the old rows."""
    async with _redis_presence(redis_url) as store:
        await _hold_many(store, "p1", ["ann", "bob"])  # ann in lobby, bob in dev:1
        # Both users' scripts run, their replies lost: nothing reached the rooms.
        for user in ("ann", "bob"):
            lost = await store._user(user, "reap", "p1", "0")
            assert lost[0] == "ok"
        assert [(await store.room(room)).count for room in ROOMS] == [1, 1]
        # Bob comes back on another process meanwhile, in his room again.
        assert await store.renew("p2", 60.0)
        await store.hold("bob", "bob-1", holder="p2", state="online")
        await store.join("bob", "bob-1", "dev:1", {"n": 2}, max_rooms=20)
        changed, reaped = await store.reap("p1")
        assert sorted(reaped) == [("ann", "ann-0"), ("bob", "bob-0")]
        assert "lobby" in changed
        lobby = await store.flush("lobby")
        assert lobby is not None and [(x.user, x.reason) for x in lobby.leaves] == [
            ("ann", "node_down")
        ]
        assert (await store.room("lobby")).count == 0
        dev = await store.room("dev:1")
        assert [(m.user, m.meta) for m in dev.members] == [("bob", {"n": 2})]
