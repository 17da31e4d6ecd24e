"""What only the Redis backend promises: its keys, TTLs, index and round trips."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
import redis.asyncio as aioredis

from presence.sessions import Session, new_session_id
from presence.stores import RedisStore

from .utils import UNIT, listen_ended

pytestmark = pytest.mark.redis


@pytest.fixture
async def store(redis_url):
    store = RedisStore(redis_url, ttl=60.0)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def client(redis_url):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def _commands(client) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


LONE = "presence:{alice}:one"
INDEX = "presence:{alice}:idx"


def _key(sid: str) -> str:
    return f"presence:{{alice}}:s:{sid}"


async def test_a_users_only_session_is_one_key_with_the_ttl(store, client):
    """A user's first session is the lone slot under {user}, holding its id and
    last_seen, with the session's TTL; there is no index."""
    session = await store.create("alice", new_session_id(), data={"n": 1})
    assert await client.keys("*") == [LONE]
    assert 59_000 < await client.pttl(LONE) <= 60_000
    sid, seen, value = (await client.get(LONE)).split("|", 2)
    assert sid == session.id
    assert int(seen) == pytest.approx(session.last_seen * 1000, abs=5)
    assert value == f"{seen}||na|" + '{"n":1}'


async def test_later_sessions_have_keys_of_their_own_and_an_index(store, client):
    """A user's later sessions are a string key each and an index entry, all under
    {user}, with the TTL."""
    first = await store.create("alice", new_session_id())
    second = await store.create("alice", new_session_id())
    assert sorted(await client.keys("*")) == sorted([LONE, _key(second.id), INDEX])
    assert (await client.get(LONE)).startswith(first.id + "|")
    assert 59_000 < await client.pttl(_key(second.id)) <= 60_000
    assert 59_000 < await client.pttl(INDEX) <= 60_000
    score = await client.zscore(INDEX, second.id)
    assert score == pytest.approx(second.last_seen * 1000, abs=5)


async def test_the_lone_slot_is_taken_again_once_free(store, client):
    """With the lone session deleted the others keep their keys, and the next session
    goes to the free slot; deleting them all leaves no key behind."""
    first = await store.create("alice", new_session_id())
    second = await store.create("alice", new_session_id())
    await store.delete("alice", [first.id], "deleted")
    assert sorted(await client.keys("*")) == sorted([_key(second.id), INDEX])
    third = await store.create("alice", new_session_id())
    assert (await client.get(LONE)).startswith(third.id + "|")
    assert await client.zrange(INDEX, 0, -1) == [second.id]
    await store.delete("alice", [second.id], "deleted")
    assert await client.keys("*") == [LONE]
    await store.delete_all("alice", "cleanup")
    assert await client.keys("*") == []


async def test_heartbeats_of_the_lone_session_move_its_last_seen(store, client):
    """A touch and a refresh of the lone session store its new last_seen and TTL."""
    session = await store.create("alice", new_session_id())
    await asyncio.sleep(2 * UNIT)
    touched = await store.touch("alice", session.id)
    assert touched.last_seen > session.last_seen
    seen = int((await client.get(LONE)).split("|")[1])
    assert seen == pytest.approx(touched.last_seen * 1000, abs=1)
    await asyncio.sleep(2 * UNIT)
    assert await store.refresh([("alice", session.id)]) == []
    refreshed = await store.get("alice", session.id)
    assert refreshed.last_seen > touched.last_seen
    assert refreshed.expires_at == pytest.approx(refreshed.last_seen + 60.0, abs=0.05)
    assert 59_000 < await client.pttl(LONE) <= 60_000


async def test_expired_sessions_leave_no_dangling_index_entries(redis_url, client):
    """Once sessions expire, the next write of that user prunes their ids, and the index
    key itself expires with the last of them."""
    short = RedisStore(redis_url, ttl=5 * UNIT)
    await short.open()
    try:
        old = [await short.create("alice", new_session_id()) for _ in range(4)]
        await asyncio.sleep(8 * UNIT)
        assert await client.keys("*") == []
        lone = await short.create("alice", new_session_id())
        fresh = await short.create("alice", new_session_id())
        assert (await client.get(LONE)).startswith(lone.id + "|")
        members = await client.zrange(INDEX, 0, -1)
        assert members == [fresh.id]
        assert all(s.id not in members for s in old)
    finally:
        await short.close()


async def test_each_operation_is_one_round_trip_without_keys_or_scan(store, client):
    """Every store operation is a single EVALSHA; none uses KEYS or SCAN."""
    await client.config_resetstat()
    session = await store.create("alice", new_session_id())
    await store.get("alice", session.id)
    await store.touch("alice", session.id, state="away")
    await store.list_sessions("alice")
    await store.refresh([("alice", session.id)])
    await store.delete_inactive("alice", 3600, "cleanup")
    await store.delete("alice", [session.id], "deleted")
    await store.delete_all("alice", "cleanup")
    commands = await _commands(client)
    # commandstats also counts the commands a script runs; the client sent only these.
    assert commands["evalsha"] == 8
    assert "eval" not in commands and "script|load" not in commands
    assert not {"keys", "scan"} & set(commands)


async def test_refresh_of_many_sockets_is_one_round_trip(store, client):
    """Renewing 500 open sessions of 50 users costs one Redis call."""
    refs = []
    for n in range(50):
        for _ in range(10):
            session = await store.create(f"user{n}", new_session_id())
            refs.append((session.user, session.id))
    await client.config_resetstat()
    assert await store.refresh(refs) == []
    commands = await _commands(client)
    assert commands.get("evalsha") == 1


async def test_heartbeats_made_together_are_one_round_trip(store, client):
    """Heartbeats of many users made in one pass of the event loop (64 REST requests in
    flight, a burst of handshakes, sockets closing at shutdown) share one EVALSHA."""
    sessions = [await store.create(f"user{n}", new_session_id()) for n in range(50)]
    await client.config_resetstat()
    touched = await asyncio.gather(*(store.touch(s.user, s.id, state="away") for s in sessions))
    assert [t.id for t in touched] == [s.id for s in sessions]
    assert all(t.state == "away" for t in touched)
    assert (await _commands(client)).get("evalsha") == 1


async def test_a_burst_of_heartbeats_goes_in_batches_of_bounded_size(store, client):
    """A burst larger than one batch goes in several, none over the bound, so that no
    single script holds Redis for long."""
    from presence.stores.redis import _TOUCH_BATCH

    sessions = [await store.create(f"user{n}", new_session_id()) for n in range(300)]
    await client.config_resetstat()
    touched = await asyncio.gather(*(store.touch(s.user, s.id) for s in sessions))
    assert all(t is not None for t in touched)
    assert (await _commands(client)).get("evalsha") == -(-300 // _TOUCH_BATCH)


async def test_a_failed_batch_fails_each_of_its_heartbeats():
    """When Redis does not answer a batch, every heartbeat in it raises
    StoreUnavailable, each its own exception."""
    from presence.exceptions import StoreUnavailable

    from .utils import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", ttl=60.0)  # nothing listens
    await store.open()
    try:
        results = await asyncio.gather(
            *(store.touch(f"user{n}", new_session_id()) for n in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert len({id(r) for r in results}) == len(results)
    finally:
        await store.close()


async def test_inactive_cleanup_reads_only_the_inactive_range(store, client):
    """Inactive cleanup touches the k stale ids, not every session of the user."""
    stale = [await store.create("alice", new_session_id()) for _ in range(3)]
    await asyncio.sleep(5 * UNIT)
    store.max_sessions_per_user = 100
    for _ in range(40):
        await store.create("alice", new_session_id())
    deleted = await store.delete_inactive("alice", 3 * UNIT, "cleanup")
    assert sorted(deleted) == sorted(s.id for s in stale)
    assert await client.zcard(INDEX) == 40


async def test_a_touch_racing_a_delete_cannot_recreate(store, client):
    """Concurrent heartbeats and a delete end with the session gone, never recreated."""
    session = await store.create("alice", new_session_id())
    results = await asyncio.gather(
        *[store.touch("alice", session.id) for _ in range(20)],
        store.delete("alice", [session.id], "deleted"),
        *[store.touch("alice", session.id) for _ in range(20)],
    )
    assert results[20] == [session.id]
    assert await client.keys("*") == []


async def test_a_touch_racing_a_delete_of_a_later_session_cannot_recreate(store, client):
    """The same race on a session beside the lone one leaves no key or index entry."""
    lone = await store.create("alice", new_session_id())
    session = await store.create("alice", new_session_id())
    results = await asyncio.gather(
        *[store.touch("alice", session.id) for _ in range(20)],
        store.delete("alice", [session.id], "deleted"),
        *[store.touch("alice", session.id) for _ in range(20)],
    )
    assert results[20] == [session.id]
    assert await client.keys("*") == [LONE]
    assert (await client.get(LONE)).startswith(lone.id + "|")


@pytest.mark.parametrize("lone", [True, False], ids=["lone", "indexed"])
async def test_a_late_heartbeat_never_moves_the_ttl_backwards(store, client, lone):
    """A heartbeat replayed with an older time leaves last_seen and the TTL as they are."""
    if not lone:
        await store.create("alice", new_session_id())
    session = await store.create("alice", new_session_id())
    key = LONE if lone else _key(session.id)
    await asyncio.sleep(2 * UNIT)
    fresh = await store.touch("alice", session.id)
    pttl = await client.pttl(key)
    late = await store.touch("alice", session.id, at=session.created_at)
    assert late.last_seen == pytest.approx(fresh.last_seen, abs=0.002)
    assert (await store.get("alice", session.id)).last_seen == late.last_seen
    assert await client.pttl(key) >= pttl - 50


async def test_restore_writes_to_the_free_lone_slot(store, client):
    """A session written back to a user with none in Redis is the lone slot, with its
    fields, its last_seen and the TTL left from it."""
    now = time.time()
    session = Session(
        id=new_session_id(),
        user="alice",
        created_at=now - 30,
        last_seen=now - 10,
        expires_at=now + 50,
        transport="websocket",
        state="away",
        data=[1],
    )
    assert await store.restore(session, None)
    assert await client.keys("*") == [LONE]
    assert 49_000 < await client.pttl(LONE) <= 50_100
    got = await store.get("alice", session.id)
    assert got is not None
    assert (got.transport, got.state, got.data) == ("websocket", "away", [1])
    assert got.created_at == pytest.approx(session.created_at, abs=0.002)
    assert got.last_seen == pytest.approx(session.last_seen, abs=0.002)


async def test_restore_beside_the_lone_session_uses_a_key_and_the_index(store, client):
    """With the slot taken, a written-back session gets its own key and index entry."""
    lone = await store.create("alice", new_session_id())
    now = time.time()
    session = Session(
        id=new_session_id(), user="alice", created_at=now, last_seen=now, expires_at=now + 60
    )
    assert await store.restore(session, None)
    assert sorted(await client.keys("*")) == sorted([LONE, _key(session.id), INDEX])
    assert (await client.get(LONE)).startswith(lone.id + "|")
    assert {s.id for s in await store.list_sessions("alice")} == {lone.id, session.id}


async def test_restore_of_a_session_redis_holds_only_moves_it_forward(store, client):
    """Writing back a session Redis still holds, in the slot or under its own key,
    keeps Redis's fields and moves last_seen and the TTL only forward; it never makes
    a second copy."""
    first = await store.create("alice", new_session_id())
    second = await store.create("alice", new_session_id())
    await store.delete("alice", [first.id], "deleted")
    third = await store.create("alice", new_session_id())
    await asyncio.sleep(2 * UNIT)
    for session in (second, third):
        await store.touch("alice", session.id, state="away")
        touched = await store.get("alice", session.id)
        # Older than Redis's copy: nothing moves.
        assert await store.restore(dataclasses.replace(session, state="disconnected"), None)
        got = await store.get("alice", session.id)
        assert got.state == "away"
        assert got.last_seen == pytest.approx(touched.last_seen, abs=0.002)
        # Newer: last_seen moves forward, the fields stay Redis's.
        await asyncio.sleep(UNIT)
        later = time.time()
        assert await store.restore(dataclasses.replace(session, last_seen=later), None)
        got = await store.get("alice", session.id)
        assert got.state == "away"
        assert got.last_seen > touched.last_seen
    assert sorted(await client.keys("*")) == sorted([LONE, _key(second.id), INDEX])
    assert (await client.get(LONE)).startswith(third.id + "|")
    assert await client.zrange(INDEX, 0, -1) == [second.id]


async def test_a_session_id_with_a_bar_is_refused(store):
    """The lone slot stores the id before a "|": an id holding one is refused."""
    with pytest.raises(ValueError, match="may not contain"):
        await store.create("alice", "a|b")


def _written_back(seen: float, transport: str = "none") -> Session:
    """A session as the fallback writes it back: created during an outage, last seen
    at ``seen``."""
    return Session(
        id=new_session_id(),
        user="alice",
        created_at=seen,
        last_seen=seen,
        expires_at=seen + 60,
        transport=transport,  # type: ignore[arg-type]
    )


async def test_restore_at_the_cap_replaces_the_oldest_session_without_a_socket(redis_url, client):
    """A session written back to a user at the cap takes the place of the least recently
    seen session that no socket holds open, which is announced as replaced; one held
    open is passed over."""
    store = RedisStore(redis_url, ttl=60.0, max_sessions_per_user=3)
    await store.open()
    try:
        ended: list[tuple[str, str]] = []

        async def on_ended(user: str, sid: str, reason: str) -> None:
            ended.append((sid, reason))

        await listen_ended(store, on_ended)
        held = await store.create("alice", new_session_id())
        await store.touch("alice", held.id, transport="websocket")
        sessions = []
        for _ in range(2):  # seen at times of their own, milliseconds apart
            await asyncio.sleep(UNIT / 5)
            sessions.append(await store.create("alice", new_session_id()))
        oldest, newer = sessions
        await asyncio.sleep(UNIT / 5)
        restored = _written_back(time.time())
        assert await store.restore(restored, None)
        listed = {s.id for s in await store.list_sessions("alice")}
        assert listed == {held.id, newer.id, restored.id}
        async with asyncio.timeout(30 * UNIT):
            while not ended:  # noqa: ASYNC110 - polls state that has no event
                await asyncio.sleep(UNIT / 10)
        assert ended == [(oldest.id, "replaced")]
    finally:
        await store.close()


async def test_restore_of_the_least_recently_seen_session_at_the_cap_writes_nothing(
    redis_url, client
):
    """At the cap, a written-back session older than every session Redis holds without
    a socket is itself the one to go: not written (restore is False), and announced as
    replaced so that a socket on it closes; held open, it is written and the oldest
    other one goes instead."""
    store = RedisStore(redis_url, ttl=60.0, max_sessions_per_user=2)
    await store.open()
    try:
        first = await store.create("alice", new_session_id())
        await asyncio.sleep(UNIT / 5)
        second = await store.create("alice", new_session_id())
        stale = _written_back(time.time() - 10)
        assert not await store.restore(stale, None)
        assert await store.get("alice", stale.id) is None
        assert {s.id for s in await store.list_sessions("alice")} == {first.id, second.id}
        held = _written_back(time.time() - 10, transport="websocket")
        assert await store.restore(held, None)
        assert {s.id for s in await store.list_sessions("alice")} == {second.id, held.id}
    finally:
        await store.close()


async def test_new_connections_do_not_read_the_package_metadata(redis_url, client, monkeypatch):
    """redis-py >= 7 looks its own version up in the package metadata for every
    connection it makes unless it is given it; at a burst's start that was 22 % of a
    process's samples. The store hands every connection one DriverInfo."""
    import redis.utils

    await client.ping()  # this test's own client connects before the count
    reads = 0
    real = redis.utils.get_lib_version

    def counted() -> str:
        nonlocal reads
        reads += 1
        return real()

    monkeypatch.setattr(redis.utils, "get_lib_version", counted)
    store = RedisStore(redis_url, ttl=60.0)
    await store.open()
    try:
        # Forty calls at once: the pool opens a connection for many of them, and keeps
        # them (this test's client is one more).
        await asyncio.gather(*(store.get("nobody", new_session_id()) for _ in range(40)))
        assert (await client.info("clients"))["connected_clients"] >= 10
    finally:
        await store.close()
    assert reads == 0
