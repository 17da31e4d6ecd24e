"""The event bus over each backend: in this process, a real redis-server, and a real
Redis Cluster (sharded channels on the node that owns their slot)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from presence.bus import EventBus, MemoryBackend, RedisBackend

from .utils import UNIT


class _Inbox:
    def __init__(self) -> None:
        self.got: list[str] = []
        self.changed = asyncio.Event()
        self.reconnects = 0

    async def __call__(self, data: str) -> None:
        self.got.append(data)
        self.changed.set()

    async def reconnected(self) -> None:
        self.reconnects += 1
        self.changed.set()

    async def until(self, predicate, seconds: float = 100 * UNIT) -> None:
        async with asyncio.timeout(seconds):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


async def test_the_memory_bus_delivers_in_order_to_every_listener_of_a_channel():
    """Messages reach each listener of their channel in the order published, and none
    reaches a channel nobody listens to."""
    bus = EventBus(MemoryBackend())
    await bus.open()
    try:
        one, two, other = _Inbox(), _Inbox(), _Inbox()
        await bus.listen("a", one)
        await bus.listen("a", two)
        await bus.listen("b", other)
        for n in range(5):
            await bus.publish("a", str(n))
        await bus.publish("c", "nobody")
        await one.until(lambda: len(one.got) == 5)
        await two.until(lambda: len(two.got) == 5)
        assert one.got == two.got == ["0", "1", "2", "3", "4"]
        assert other.got == []
        await bus.unlisten("a", one)
        await bus.publish("a", "5")
        await two.until(lambda: len(two.got) == 6)
        assert one.got[-1] == "4"
    finally:
        await bus.close()


@pytest.mark.redis
async def test_the_redis_bus_delivers_what_any_client_publishes(redis_url):
    """A message published by another Redis client (as a script does) reaches the
    listener once its subscription is confirmed; one unsubscribed is not delivered."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    bus = EventBus(RedisBackend(client, timeout=50 * UNIT))
    await bus.open()
    try:
        inbox = _Inbox()
        await bus.listen("presence:test", inbox)
        async with aioredis.Redis.from_url(redis_url) as other:
            for n in range(3):
                await other.publish("presence:test", f"m{n}")
            await inbox.until(lambda: len(inbox.got) == 3)
            assert inbox.got == ["m0", "m1", "m2"]
            await bus.unlisten("presence:test", inbox)
            assert await other.publish("presence:test", "late") == 0
    finally:
        await bus.close()
        await client.aclose()


@pytest.mark.redis
async def test_the_redis_bus_says_when_it_is_back_after_redis_restarts(own_redis):
    """Redis killed and started again: the bus subscribes its channels again, calls its
    reconnect listeners once they are back, and delivers what comes next."""
    client = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    bus = EventBus(RedisBackend(client, timeout=50 * UNIT))
    inbox = _Inbox()
    bus.on_reconnect(inbox.reconnected)
    await bus.open()
    try:
        await bus.listen("presence:test", inbox)
        own_redis.restart()
        await inbox.until(lambda: inbox.reconnects == 1)
        async with aioredis.Redis.from_url(own_redis.url) as other:
            assert await other.publish("presence:test", "after") == 1
        await inbox.until(lambda: inbox.got == ["after"])
    finally:
        await bus.close()
        await client.aclose()


@pytest.mark.redis
async def test_sharded_channels_on_a_cluster_reach_their_listeners(redis_cluster_url):
    """On a real three-primary cluster, SPUBLISH on rooms' channels (each in its own
    slot) reaches listeners subscribed with SSUBSCRIBE, and a plain PUBLISH reaches a
    plain listener."""
    url = redis_cluster_url.replace("+cluster", "")
    client = RedisCluster.from_url(url, decode_responses=True)
    await client.initialize()
    bus = EventBus(RedisBackend(client, cluster=True, timeout=50 * UNIT))
    await bus.open()
    try:
        rooms = [f"presence:room:{{r{n}}}" for n in range(12)]
        slots = {client.keyslot(room) for room in rooms}
        assert len({client.get_node_from_key(room).name for room in rooms}) == 3, slots
        inbox, plain = _Inbox(), _Inbox()
        for room in rooms:
            await bus.listen(room, inbox, sharded=True)
        await bus.listen("presence:ended", plain)
        for room in rooms:
            await client.spublish(room, room)
        await client.publish("presence:ended", "x")
        await inbox.until(lambda: len(inbox.got) == len(rooms))
        await plain.until(lambda: plain.got == ["x"])
        assert sorted(inbox.got) == sorted(rooms)
    finally:
        await bus.close()
        await client.aclose()
