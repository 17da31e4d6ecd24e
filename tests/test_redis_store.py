"""What only the Redis backend promises: its keys, TTLs, index and round trips."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from presence.sessions import new_session_id
from presence.stores import RedisStore

from .utils import UNIT

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


async def test_keys_share_the_users_hash_tag_and_carry_the_ttl(store, client):
    """A session is one string key and one index entry, both under {user}, with the TTL."""
    session = await store.create("alice", new_session_id())
    key = f"presence:{{alice}}:s:{session.id}"
    index = "presence:{alice}:idx"
    assert sorted(await client.keys("*")) == sorted([key, index])
    assert 59_000 < await client.pttl(key) <= 60_000
    assert 59_000 < await client.pttl(index) <= 60_000
    score = await client.zscore(index, session.id)
    assert score == pytest.approx(session.last_seen * 1000, abs=5)


async def test_expired_sessions_leave_no_dangling_index_entries(redis_url, client):
    """Once sessions expire, the next write of that user prunes their ids, and the index
    key itself expires with the last of them."""
    short = RedisStore(redis_url, ttl=5 * UNIT)
    await short.open()
    try:
        old = [await short.create("alice", new_session_id()) for _ in range(3)]
        await asyncio.sleep(8 * UNIT)
        assert await client.exists("presence:{alice}:idx") == 0
        fresh = await short.create("alice", new_session_id())
        members = await client.zrange("presence:{alice}:idx", 0, -1)
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


async def test_inactive_cleanup_reads_only_the_inactive_range(store, client):
    """Inactive cleanup touches the k stale ids, not every session of the user."""
    stale = [await store.create("alice", new_session_id()) for _ in range(3)]
    await asyncio.sleep(5 * UNIT)
    store.max_sessions_per_user = 100
    for _ in range(40):
        await store.create("alice", new_session_id())
    deleted = await store.delete_inactive("alice", 3 * UNIT, "cleanup")
    assert sorted(deleted) == sorted(s.id for s in stale)
    assert await client.zcard("presence:{alice}:idx") == 40


async def test_a_touch_racing_a_delete_cannot_recreate(store, client):
    """Concurrent heartbeats and a delete end with the session gone, never recreated."""
    session = await store.create("alice", new_session_id())
    results = await asyncio.gather(
        *[store.touch("alice", session.id) for _ in range(20)],
        store.delete("alice", [session.id], "deleted"),
        *[store.touch("alice", session.id) for _ in range(20)],
    )
    assert results[20] == [session.id]
    assert await client.exists(f"presence:{{alice}}:s:{session.id}") == 0
    assert await client.zscore("presence:{alice}:idx", session.id) is None


async def test_a_late_heartbeat_never_moves_the_ttl_backwards(store, client):
    """A heartbeat replayed with an older time leaves last_seen and the TTL as they are."""
    session = await store.create("alice", new_session_id())
    await asyncio.sleep(2 * UNIT)
    fresh = await store.touch("alice", session.id)
    pttl = await client.pttl(f"presence:{{alice}}:s:{session.id}")
    late = await store.touch("alice", session.id, at=session.created_at)
    assert late.last_seen == pytest.approx(fresh.last_seen, abs=0.002)
    assert await client.pttl(f"presence:{{alice}}:s:{session.id}") >= pttl - 50
