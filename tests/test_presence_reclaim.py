"""Crashed processes are reclaimed in seconds; a process only cut off is not reaped twice.

Real ``python -m presence serve`` processes on one real redis-server, with the default
lease and grace (the bound under test is theirs): a process holding 500 members (50
users, each with one socket carrying ten sessions, each session in one of ten rooms)
is killed with SIGKILL, and every watcher on the other processes is told each leave,
with reason ``node_down``, within 10 s; Redis then holds none of them, and their
sessions are ``disconnected``. A process stopped (SIGSTOP) past its lease, then
continued, keeps or re-asserts its live sockets' members, without being reaped twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from presence import keys

from .test_presence import CHAT, GRACE, PRESENCE, Tab, User, changes, env, name, until
from .utils import UNIT, RedisServer, ServerProcess, server_process

pytestmark = pytest.mark.slow

#: The issue's bound, with the default lease (3 s) and grace (5 s): from SIGKILL to
#: every watcher having every leave.
RECLAIMED = 100 * UNIT
USERS = 50
ROOMS = 10  # one per session of a socket: 50 users x 10 rooms = 500 members
WATCHERS = 2  # on each surviving process
PREFIX = "presence"


def reclaim_env(redis_url: str) -> dict[str, str]:
    """The default grace and keepalive: the bound is for the defaults."""
    values = env(redis_url)
    for setting in ("PRESENCE_OFFLINE_GRACE", "HEARTBEAT_INTERVAL", "PRESENCE_PING_TIMEOUT"):
        del values[setting]
    return values


@pytest.fixture
def fresh_redis(redis_server: RedisServer) -> str:
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def three(fresh_redis: str) -> Iterator[list[ServerProcess]]:
    with (
        server_process(reclaim_env(fresh_redis)) as a,
        server_process(reclaim_env(fresh_redis)) as b,
        server_process(reclaim_env(fresh_redis)) as c,
    ):
        yield [a, b, c]


async def _user_with_sessions(
    server: ServerProcess, rooms: list[str], user: User | None = None
) -> tuple[User, Tab, list[str]]:
    """A user with one socket carrying a session per room, each joined to its room."""
    user = user or User()
    async with httpx.AsyncClient(base_url=server.http, headers=user.headers) as client:
        sids = [(await client.post(f"{CHAT}/sessions")).json()["id"] for _ in rooms]
    tab = await user.tab(server, sids[0], views=False)
    for sid in sids[1:]:
        mark = len(tab.messages)
        await tab.send({"type": "session.attach", "session": sid})
        await tab.next("snapshot", where=lambda m, sid=sid: m["session"]["id"] == sid, after=mark)
    for sid, room in zip(sids, rooms, strict=True):
        await tab.send({"type": "presence.join", "room": room, "meta": None, "session": sid})
    return user, tab, sids


async def _watchers(servers: list[ServerProcess], rooms: list[str]) -> list[Tab]:
    watchers = []
    for server in servers:
        for _ in range(WATCHERS):
            tab = await User().tab(server)
            for room in rooms:
                await tab.watch(room)
            watchers.append(tab)
    return watchers


def _counts(watchers: list[Tab], rooms: list[str]) -> list[int]:
    return [w.views[room].count for w in watchers for room in rooms]


async def test_a_killed_process_members_leave_with_node_down_within_the_bound(three, fresh_redis):
    """SIGKILL a process holding 500 members: every watcher on the other two processes
    is told all 500 leaves, each with node_down, within 10 s; the other process's members
    stay; Redis holds none of the dead process's tabs, memberships, users or lease; and
    all 500 sessions are disconnected."""
    a, b, c = three
    rooms = [name("reclaim") for _ in range(ROOMS)]
    watchers = await _watchers([b, c], rooms)
    dead = []
    for _ in range(0, USERS, 10):  # ten at a time: a shared 2-core machine
        dead += await asyncio.gather(*(_user_with_sessions(a, rooms) for _ in range(10)))
    # Members that live on another process and must not be reaped with them.
    alive = [await _user_with_sessions(b, rooms) for _ in range(3)]
    await until(
        lambda: _counts(watchers, rooms) == [USERS + 3] * len(watchers) * ROOMS,
        100 * UNIT,
        "every watcher sees every member",
    )
    with redis.Redis.from_url(fresh_redis, decode_responses=True) as client:
        holders = client.zrange(keys.lease_keys(PREFIX)[0], 0, -1)
    assert len(holders) == 3

    killed = time.monotonic()
    a.kill()
    await until(
        lambda: _counts(watchers, rooms) == [3] * len(watchers) * ROOMS,
        RECLAIMED,
        "every watcher has every leave",
    )
    assert time.monotonic() - killed < RECLAIMED
    dead_users = {user.name for user, _, _ in dead}
    for watcher in watchers:
        assert not watcher.gaps
        for room in rooms:
            leaves = [x for d in watcher.received("presence.diff", room) for x in d["leaves"]]
            assert {x["user"] for x in leaves} == dead_users
            assert {x["reason"] for x in leaves} == {"node_down"}
            assert len(leaves) == USERS
            assert set(watcher.views[room].members) == {user.name for user, _, _ in alive}

    with redis.Redis.from_url(fresh_redis, decode_responses=True) as client:
        for user in dead_users:
            fields = client.hkeys(keys.tabs_key(PREFIX, user))
            assert not [f for f in fields if f[:2] in ("t:", "r:", "s:", "e:")], fields
        for room in rooms:
            members, users = keys.room_keys(PREFIX, room)[:2]
            assert set(client.hkeys(members)) == {user.name for user, _, _ in alive}
            assert set(client.zrange(users, 0, -1)) == {user.name for user, _, _ in alive}
            assert client.zscore(keys.rooms_key(PREFIX), room) == 3
        expiry, renewed, reaped = keys.lease_keys(PREFIX)
        living = client.zrange(expiry, 0, -1)
        assert len(living) == 2 and set(living) < set(holders)
        [gone] = set(holders) - set(living)
        assert client.hget(renewed, gone) is None
        assert client.zscore(reaped, gone) is not None
        assert not client.exists(keys.holder_users_key(PREFIX, gone))

    async def disconnected(user: User, sids: list[str]) -> None:
        async with httpx.AsyncClient(base_url=b.http, headers=user.headers) as client:
            for sid in sids:
                session = (await client.get(f"{CHAT}/sessions/{sid}")).json()
                assert (session["state"], session["transport"]) == ("disconnected", "none")
            presence = (await client.get(f"{PRESENCE}/users/{user.name}")).json()
        assert (presence["status"], presence["sessions"], presence["rooms"]) == ("offline", 0, [])

    for start in range(0, USERS, 10):
        await asyncio.gather(*(disconnected(u, sids) for u, _, sids in dead[start : start + 10]))
    for tab in watchers + [tab for _, tab, _ in alive]:
        await tab.close()


async def test_members_a_process_never_told_leave_every_view_when_it_is_killed(fresh_redis):
    """A process killed before it flushed its members' joins (inside a diff window,
    10 s there): a watcher elsewhere that synced meanwhile holds them from the room's
    page, and is told each one's node_down leave once they are reaped; one that watched
    before holds nobody of theirs and drops nobody. (Told as nothing, the first watcher
    kept them for good: bench/analysis.md, the quick reclaim's lost leaves.)"""
    rooms = [name("unflushed")]
    late_env = {**reclaim_env(fresh_redis), "PRESENCE_DIFF_WINDOW_MS": "10000"}
    with (
        server_process(reclaim_env(fresh_redis)) as survivor,
        server_process(late_env) as victim,
    ):
        early = await User().tab(survivor)
        await early.watch(rooms[0])
        users = [await _user_with_sessions(victim, rooms) for _ in range(3)]
        async with httpx.AsyncClient(base_url=survivor.http, headers=users[0][0].headers) as rest:
            for _ in range(100):
                listed = (await rest.get(f"{PRESENCE}/rooms/{rooms[0]}")).json()
                if listed["count"] == 3:
                    break
                await asyncio.sleep(UNIT / 2)
        late = await User().tab(survivor)
        sync = await late.watch(rooms[0])
        assert sync["count"] == 3  # the page has them; no diff has told of them
        assert not early.received("presence.diff", rooms[0])
        victim.kill()
        await until(lambda: late.views[rooms[0]].count == 0, RECLAIMED, "the leaves")
        await asyncio.sleep(5 * UNIT)  # anything more would be here by now
        for watcher in (early, late):
            assert not watcher.gaps
            assert watcher.views[rooms[0]].members == {}
            for user, _, _ in users:
                assert changes(watcher, rooms[0], user.name) == [("leave", "node_down")]
        for tab in (early, late):
            await tab.close()


def _claimed(redis_url: str, holder: str) -> bool:
    """Whether a surviving process has claimed ``holder`` for reaping (its lease lapsed
    and was found so)."""
    with redis.Redis.from_url(redis_url) as client:
        return bool(client.exists(keys.lease_keys(PREFIX)[2] + ":claim:" + holder))


def _holders(redis_url: str) -> tuple[list[str], list[str]]:
    """The processes holding a lease, and those reaped."""
    expiry, _, reaped = keys.lease_keys(PREFIX)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        return client.zrange(expiry, 0, -1), client.zrange(reaped, 0, -1)


@contextlib.contextmanager
def _stopped(server: ServerProcess) -> Iterator[None]:
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


async def test_a_process_stopped_past_its_lease_but_back_inside_the_grace_is_not_reaped(
    three, fresh_redis
):
    """SIGSTOP a process until another has found its lease lapsed and claimed it, then
    SIGCONT it before the grace since its last renewal is over: it renews its lease, the
    claim comes to nothing, and no watcher is told a leave or a join of its members;
    their sockets are still open and served."""
    a, b, c = three
    rooms = [name("fence") for _ in range(2)]
    watchers = await _watchers([b, c], rooms)
    before, _ = _holders(fresh_redis)
    held = [await _user_with_sessions(a, rooms) for _ in range(5)]
    await until(
        lambda: _counts(watchers, rooms) == [5] * len(watchers) * len(rooms),
        50 * UNIT,
        "every watcher sees every member",
    )
    joined = {w: [changes(w, room, u.name) for room in rooms for u, _, _ in held] for w in watchers}
    # The holder of the five: the one whose users set names them.
    with redis.Redis.from_url(fresh_redis, decode_responses=True) as client:
        [holder] = [
            h
            for h in before
            if held[0][0].name in client.smembers(keys.holder_users_key(PREFIX, h))
        ]
    with _stopped(a):
        await until(lambda: _claimed(fresh_redis, holder), 100 * UNIT, "the lapse is found")
    # Past the reap the claim was for (the grace from its last renewal), and another
    # lease and grace.
    await asyncio.sleep(100 * UNIT)
    for watcher in watchers:
        assert not watcher.gaps
        after = [changes(watcher, room, u.name) for room in rooms for u, _, _ in held]
        assert after == joined[watcher], "members flapped"
        assert _counts([watcher], rooms) == [5, 5]
    living, reaped = _holders(fresh_redis)
    assert holder in living and holder not in reaped
    for _, tab, sids in held:
        mark = len(tab.messages)
        await tab.send({"type": "visibility", "state": "visible", "session": sids[1]})
        snapshot = await tab.next("snapshot", after=mark)
        assert snapshot["session"]["transport"] == "websocket"
    for tab in watchers + [tab for _, tab, _ in held]:
        await tab.close()


async def test_a_process_stopped_until_reaped_comes_back_under_a_new_name_once(three, fresh_redis):
    """SIGSTOP a process until its members were reaped (node_down at every watcher),
    then SIGCONT it: it learns it was taken for dead, holds its live sockets' tabs again
    under a new name, and each member joins again, once; it is not reaped a second
    time, its old name stays reaped, and its sockets' sessions are theirs again."""
    a, b, c = three
    rooms = [name("fence") for _ in range(2)]
    watchers = await _watchers([b, c], rooms)
    before, _ = _holders(fresh_redis)
    held = [await _user_with_sessions(a, rooms) for _ in range(5)]
    count = len(watchers) * len(rooms)
    await until(lambda: _counts(watchers, rooms) == [5] * count, 50 * UNIT, "every member seen")
    with redis.Redis.from_url(fresh_redis, decode_responses=True) as client:
        [holder] = [
            h
            for h in before
            if held[0][0].name in client.smembers(keys.holder_users_key(PREFIX, h))
        ]
    with _stopped(a):
        await until(lambda: _counts(watchers, rooms) == [0] * count, RECLAIMED, "reaped")
    await until(lambda: _counts(watchers, rooms) == [5] * count, 50 * UNIT, "held again")
    # Another lease and grace: a second reap would come within it.
    await asyncio.sleep(100 * UNIT)
    for watcher in watchers:
        assert not watcher.gaps
        for room in rooms:
            for user, _, _ in held:
                told = [
                    kind if kind != "leave" else v for kind, v in changes(watcher, room, user.name)
                ]
                assert told == ["join", "node_down", "join"], (room, user.name, told)
    living, reaped = _holders(fresh_redis)
    assert holder in reaped and holder not in living and len(living) == 3
    for user, _, sids in held:
        for sid in sids:  # held again: the sessions are their sockets' once more
            got = (await user.call(b, "GET", f"{CHAT}/sessions/{sid}")).json()
            assert (got["transport"], got["state"]) == ("websocket", "active")
    for _, tab, sids in held:
        for sid in sids:
            mark = len(tab.messages)
            await tab.send({"type": "visibility", "state": "visible", "session": sid})
            snapshot = await tab.next("snapshot", after=mark)
            assert (snapshot["session"]["transport"], snapshot["session"]["state"]) == (
                "websocket",
                "active",
            )
    for tab in watchers + [tab for _, tab, _ in held]:
        await tab.close()


async def _status(server: ServerProcess) -> str:
    async with httpx.AsyncClient(base_url=server.http) as client:
        return str((await client.get("/readyz", timeout=50 * UNIT)).json()["status"])


async def test_after_a_redis_outage_no_live_member_is_reaped_and_a_room_left_stays_left(
    own_redis,
):
    """Redis stopped (SIGSTOP) for longer than a lease, then continued: every process's
    lease lapsed meanwhile, and none takes another's for a death (no node_down leave at
    any watcher); members stay; a room one of them left during the outage is left in
    Redis too, and a member whose socket closed during it leaves with reason closed;
    no sync says it is whole until every process has held its tabs again; every
    watcher's view ends equal to Redis's."""
    url = own_redis.url
    with server_process(reclaim_env(url)) as a, server_process(reclaim_env(url)) as b:
        rooms = [name("outage") for _ in range(2)]
        watchers = await _watchers([a, b], rooms)
        ann, ann_tab, ann_sids = await _user_with_sessions(a, rooms)
        bob, bob_tab, _ = await _user_with_sessions(b, rooms)
        cy, cy_tab, _ = await _user_with_sessions(b, rooms)
        count = len(watchers) * len(rooms)
        await until(lambda: _counts(watchers, rooms) == [3] * count, 50 * UNIT, "members seen")
        # Every lease lapses: three seconds unrenewed, and a look for lapsed ones.
        own_redis.pause()
        try:
            for server in (a, b):
                deadline = time.monotonic() + 100 * UNIT
                while await _status(server) != "degraded":
                    assert time.monotonic() < deadline, "not degraded"
                    await asyncio.sleep(UNIT)
            # The room service follows the session store within a tick.
            await asyncio.sleep(20 * UNIT)
            mark = len(ann_tab.messages)
            await ann_tab.send({"type": "presence.leave", "room": rooms[1], "session": ann_sids[1]})
            await cy_tab.close()  # its leave, whenever it is told, says closed
            # A user who comes during the outage, to A, which alone knows of them then.
            dan, dan_tab, _ = await _user_with_sessions(a, rooms[:1])
            # Past the grace: cy's leave is told, partial, to B's watchers.
            await asyncio.sleep(60 * UNIT)
            assert ann_tab.received("error") == [], ann_tab.messages[mark:]
        finally:
            # A comes back a little after B (its breaker later, its loop busy): B's
            # watchers must not take a sync from Redis without A's tabs for whole.
            with _stopped(a):
                own_redis.resume()
                marks = [len(w.messages) for w in watchers]
                await asyncio.sleep(20 * UNIT)
        for server in (a, b):
            deadline = time.monotonic() + 100 * UNIT
            while await _status(server) != "ready":
                assert time.monotonic() < deadline, "not ready again"
                await asyncio.sleep(UNIT)
        # A lease, a look and a grace for any reap to come, and the room left to go.
        await asyncio.sleep(100 * UNIT)
        with redis.Redis.from_url(url, decode_responses=True) as client:
            in_redis = {room: set(client.hkeys(keys.room_keys(PREFIX, room)[0])) for room in rooms}
        assert in_redis == {rooms[0]: {ann.name, bob.name, dan.name}, rooms[1]: {bob.name}}
        for watcher in watchers:
            for room in rooms:
                for user in (ann, bob, cy):
                    told = changes(watcher, room, user.name)
                    assert ("leave", "node_down") not in told, (room, user.name, told)
                # Gone, by a leave or a sync without them; every leave told says closed,
                # and B's watchers, who had them in view then, were told one.
                left = [v for kind, v in changes(watcher, room, cy.name) if kind == "leave"]
                assert set(left) <= {"closed"} and (left or watcher not in watchers[WATCHERS:])
                assert set(watcher.views[room].members) == in_redis[room], (
                    room,
                    watcher.messages[-5:],
                )
        presence = (await ann.call(b, "GET", f"{PRESENCE}/users/{ann.name}")).json()
        assert presence["rooms"] == [rooms[0]]
        # No sync says it is whole before every process has held its tabs again: each
        # one since Redis came back that is not partial has the user who came meanwhile.
        for watcher, mark in zip(watchers, marks, strict=True):
            syncs = [m for m in watcher.messages[mark:] if m["type"] == "presence.sync"]
            whole = [m for m in syncs if m["room"] == rooms[0] and not m.get("partial")]
            assert whole, syncs
            for sync in whole:
                assert dan.name in {m["user"] for m in sync["members"]}, sync
        for tab in [*watchers, ann_tab, bob_tab, dan_tab]:
            await tab.close()


# -- a restart: a process stopped with SIGTERM ----------------------------------------

#: The restart grace these tests run with: longer than the offline grace (GRACE) and a
#: lease (3 s) put together, so that a socket back after both (when a stop without it
#: would have told a leave) is back within it.
RESTART = 120 * UNIT


def restart_env(redis_url: str, restart: float = RESTART) -> dict[str, str]:
    return env(redis_url, PRESENCE_RESTART_GRACE=str(restart))


@contextlib.asynccontextmanager
async def _watched(redis_url: str, room: str, restart: float = RESTART):
    """Two processes with this restart grace, and a watcher of ``room`` on the first:
    yields the second (the one the tests stop or close sockets on) and the watcher."""
    with (
        server_process(restart_env(redis_url, restart)) as watching,
        server_process(restart_env(redis_url, restart)) as other,
    ):
        watcher = await User().tab(watching)
        await watcher.watch(room)
        try:
            yield other, watcher
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watcher.close(), 20 * UNIT)


async def _member(server: ServerProcess, user: User, room: str, sid: str | None = None) -> Tab:
    tab = await user.tab(server, sid)
    await tab.join(room, {"nick": user.name})
    return tab


async def test_a_restart_keeps_the_members_whose_sockets_come_back(fresh_redis):
    """SIGTERM a process, as a restart or deploy does: a member whose socket comes back
    (to the process started again) after the offline grace and a lease are over, but
    within PRESENCE_RESTART_GRACE, is neither a leave nor a join to a watcher elsewhere;
    one who does not come back leaves with node_down once the restart grace is over
    (not before), and their session is disconnected."""
    room = name("restart")
    async with _watched(fresh_redis, room) as (restarted, watcher):
        ann, bob = User(), User()
        ann_sid, bob_sid = await ann.session(restarted), await bob.session(restarted)
        ann_tab = await _member(restarted, ann, room, ann_sid)
        bob_tab = await _member(restarted, bob, room, bob_sid)
        await until(lambda: watcher.views[room].count == 2, 50 * UNIT, "both joined")

        restarted.stop()
        stopped = time.monotonic()
        for tab in (ann_tab, bob_tab):
            await asyncio.wait_for(tab._reader, 50 * UNIT)
            assert tab.websocket.close_code == 1012  # closed by the stop
        # As a slow restart and a client's backoff make it: back once the offline grace,
        # a lease and a reaper's look are all over.
        await asyncio.sleep(GRACE + keys.LEASE_TTL + 2 * keys.LEASE_RENEW_INTERVAL)
        restarted.start()
        again = await _member(restarted, ann, room, ann_sid)

        await until(
            lambda: ("leave", "node_down") in changes(watcher, room, bob.name),
            RESTART + 50 * UNIT,
            "Bob's leave",
        )
        assert time.monotonic() - stopped >= RESTART - 20 * UNIT
        await asyncio.sleep(10 * UNIT)  # anything more would be here by now
        assert [kind for kind, _ in changes(watcher, room, ann.name)] == ["join"]
        assert [kind for kind, _ in changes(watcher, room, bob.name)] == ["join", "leave"]
        assert set(watcher.views[room].members) == {ann.name}
        assert not watcher.gaps
        session = (await bob.call(restarted, "GET", f"{CHAT}/sessions/{bob_sid}")).json()
        assert session["state"] == "disconnected"
        presence = (await ann.call(restarted, "GET", f"{PRESENCE}/users/{ann.name}")).json()
        assert (presence["status"], presence["rooms"]) == ("online", [room])
        await again.close()


async def test_with_no_restart_grace_a_stopped_process_members_leave_as_closed(fresh_redis):
    """PRESENCE_RESTART_GRACE=0: the sockets a SIGTERM closes are released as any closed
    socket is, and their members leave with closed after the offline grace."""
    room = name("no-restart-grace")
    async with _watched(fresh_redis, room, restart=0) as (stopped, watcher):
        ann = User()
        await _member(stopped, ann, room)
        await until(lambda: watcher.views[room].count == 1, 50 * UNIT, "the join")
        stopped.stop()
        await until(lambda: watcher.views[room].count == 0, RESTART, "the leave")
        assert changes(watcher, room, ann.name)[-1] == ("leave", "closed")


async def test_a_client_that_closes_with_1012_itself_is_not_taken_for_a_restart(fresh_redis):
    """A client may send close code 1012 (service restart) itself: its member leaves
    with closed after the offline grace, as any closed socket's does, not held for the
    restart grace of a process that is not stopping."""
    room = name("fake-restart")
    async with _watched(fresh_redis, room) as (server, watcher):
        ann = User()
        tab = await _member(server, ann, room)
        await until(lambda: watcher.views[room].count == 1, 50 * UNIT, "the join")
        closed = time.monotonic()
        await tab.websocket.close(code=1012)
        await until(lambda: watcher.views[room].count == 0, RESTART, "the leave")
        assert time.monotonic() - closed < RESTART - 20 * UNIT
        assert changes(watcher, room, ann.name)[-1] == ("leave", "closed")
        # The process goes on serving: the user comes back and is a member again.
        again = await _member(server, ann, room)
        await until(lambda: watcher.views[room].count == 1, 50 * UNIT, "the join again")
        await again.close()
