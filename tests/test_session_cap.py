"""The per-user session cap against a real redis-server: kept by the write-back after an
outage, and freed by sessions that no socket holds any longer (a crashed process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from presence import keys
from presence.sessions import new_session_id
from presence.stores import FallbackStore, MemoryStore, RedisStore

from .utils import JWT_SECRET, UNIT, listen_ended, make_settings, serve, server_process, token

pytestmark = pytest.mark.redis

BASE = "/api/v1/chat"
HANG = 30 * UNIT
RECOVERY = 100 * UNIT
TTL = 60.0


@contextlib.asynccontextmanager
async def _process_store(url: str, cap: int) -> AsyncIterator[FallbackStore]:
    """One process's store, as production builds it, with a quicker probe."""
    store = FallbackStore(
        RedisStore(url, ttl=TTL, max_sessions_per_user=cap),
        MemoryStore(ttl=TTL, max_sessions_per_user=cap),
        probe_interval=UNIT,
    )
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _stored(url: str, user: str) -> set[str]:
    """The ids of the user's sessions in Redis, read from the keys themselves."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        sids = {key.rsplit(":", 1)[1] for key in await client.keys(f"presence:{{{user}}}:s:*")}
        lone = await client.get(keys.lone_key("presence", user))
        if lone is not None:
            sids.add(lone.split("|", 1)[0])
        return sids
    finally:
        await client.aclose()


async def _until(predicate, seconds: float = HANG) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - polls state that has no event
            await asyncio.sleep(UNIT / 5)


async def test_the_write_back_of_outage_sessions_from_several_processes_keeps_the_cap(
    own_redis, redis_proxy
):
    """Sessions created during a partition by two processes that did not know of the
    user's sessions in Redis (each under the cap in its own memory) are written back
    within the cap: Redis keeps the most recently seen, and every other one is
    announced as replaced. (A partition drops what is sent meanwhile; a stalled Redis
    would run the creates that timed out once it resumes, as Redis's own.)"""
    cap = 3
    ended: list[tuple[str, str]] = []

    async def on_ended(user: str, sid: str, reason: str) -> None:
        ended.append((sid, reason))

    watcher = RedisStore(own_redis.url, ttl=TTL)
    await watcher.open()
    try:
        await listen_ended(watcher, on_ended)
        async with (
            _process_store(redis_proxy.url, cap) as one,
            _process_store(redis_proxy.url, cap) as two,
            _process_store(redis_proxy.url, cap) as three,
        ):
            before = [await one.create("alice", new_session_id()) for _ in range(cap)]
            redis_proxy.blackhole()
            try:
                during = []
                for store in (two, three):
                    for _ in range(cap):
                        await asyncio.sleep(UNIT / 10)  # each seen at a time of its own
                        during.append(await store.create("alice", new_session_id()))
                assert two.degraded and three.degraded
            finally:
                redis_proxy.heal()
            for store in (two, three):
                await asyncio.wait_for(store.wait_recovered(), RECOVERY)
            everything = before + during
            newest = sorted(everything, key=lambda s: s.last_seen)[-cap:]
            assert await _stored(own_redis.url, "alice") == {s.id for s in newest}
            others = {s.id for s in everything} - {s.id for s in newest}
            await _until(lambda: len(ended) == len(others))
            assert sorted(ended) == sorted((sid, "replaced") for sid in others)
    finally:
        await watcher.close()


async def test_sessions_of_a_crashed_process_free_the_cap_once_no_longer_renewed(redis_url):
    """A process holding a socket open on each of a user's sessions is killed: until
    the held-open window has passed, another process refuses a new session (429); once
    it has, the new session replaces the least recently seen of them, where before
    they kept the user at the cap for a whole TTL."""
    interval = 3 * UNIT  # the refresh interval; the window is three of them
    env = {
        "REDIS_URL": redis_url,
        "PRESENCE_JWT_SECRET": JWT_SECRET,
        "HEARTBEAT_INTERVAL": str(interval),
        "INACTIVE_THRESHOLD": "3600",
        "PRESENCE_MAX_SESSIONS_PER_USER": "2",
        "LOG_LEVEL": "warning",
    }
    settings = make_settings(
        redis_url=redis_url, heartbeat_interval=interval, max_sessions_per_user=2
    )
    auth = {"authorization": f"Bearer {token('alice')}"}
    with server_process(env) as doomed:
        async with (
            serve(settings) as survivor,
            httpx.AsyncClient(base_url=doomed.http + BASE, headers=auth, timeout=HANG) as via,
            httpx.AsyncClient(base_url=survivor.http + BASE, headers=auth) as client,
            contextlib.AsyncExitStack() as sockets,
        ):
            sids = [(await via.post("/sessions")).json()["id"] for _ in range(2)]
            for sid in sids:
                url = f"{doomed.ws}{BASE}/sessions/{sid}/ws?token={token('alice')}"
                websocket = await sockets.enter_async_context(connect(url, ping_interval=None))
                await asyncio.wait_for(websocket.recv(), HANG)  # the snapshot
            assert doomed.process is not None
            os.kill(doomed.process.pid, signal.SIGKILL)
            doomed.process.wait()
            refused = await client.post("/sessions")
            assert refused.status_code == 429, refused.text
            await asyncio.sleep(3 * interval + 2 * UNIT)
            created = await client.post("/sessions")
            assert created.status_code == 201, created.text
            listed = {s["id"] for s in (await client.get("/sessions")).json()["sessions"]}
            assert created.json()["id"] in listed and len(listed & set(sids)) == 1
