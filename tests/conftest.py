from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis

from presence.stores import MemoryStore, RedisStore

from .proxy import Proxy
from .utils import UNIT, RedisCluster, RedisServer, redis_binary

# Every test's bound, fixtures included, so that a hang fails with every thread's stack
# (pytest-timeout, thread method) instead of blocking the run: six times the slowest
# test (the idle benchmark's smoke test, ~20 s on a shared 2-core machine), scaled by
# PRESENCE_TEST_TIMEOUT_FACTOR as every timeout here is. A test may set its own with
# @pytest.mark.timeout; --timeout or PYTEST_TIMEOUT sets them all.
TEST_TIMEOUT = 1200 * UNIT


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("timeout") is not None or os.environ.get("PYTEST_TIMEOUT"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


def _need_redis_server() -> None:
    """Skips the test, with the reason, when redis-server is missing; fails instead
    under PRESENCE_REQUIRE_REDIS=1 (CI)."""
    if redis_binary() is not None:
        return
    if os.environ.get("PRESENCE_REQUIRE_REDIS") == "1":
        pytest.fail("PRESENCE_REQUIRE_REDIS=1 but redis-server is not installed")
    pytest.skip("redis-server is not installed; set PRESENCE_REQUIRE_REDIS=1 to fail instead")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test run's own on a free port (never the shared 6379)."""
    _need_redis_server()
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared test redis-server's URL, flushed before each test."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for one test alone, for tests that pause, kill or restart it."""
    _need_redis_server()
    server = RedisServer()
    server.start()
    yield server
    server.stop()


class Clock:
    """A clock that tests advance by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A three-primary Redis Cluster of the test run's own."""
    _need_redis_server()
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """The test cluster's URL (redis+cluster://), flushed before each test."""
    redis_cluster.flush()
    return redis_cluster.url


STORE_KINDS = ["memory", "fakeredis", "redis", "cluster"]


@pytest.fixture(params=STORE_KINDS)
async def make_store(request: pytest.FixtureRequest):
    """A factory of opened stores of one kind; each is closed on teardown."""
    kind = request.param
    opened = []

    async def factory(**options):
        options.setdefault("ttl", 60.0)
        if kind == "memory":
            store = MemoryStore(**options)
        elif kind == "fakeredis":
            import fakeredis

            client = fakeredis.FakeAsyncRedis(decode_responses=True)
            store = RedisStore(client=client, **options)
        elif kind == "redis":
            url = request.getfixturevalue("redis_url")
            store = RedisStore(url, **options)
        else:
            url = request.getfixturevalue("redis_cluster_url")
            store = RedisStore(url.replace("+cluster", ""), cluster=True, **options)
        await store.open()
        opened.append(store)
        return store

    factory.kind = kind
    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
def make_redis() -> Iterator[Callable[..., RedisServer]]:
    """A factory of started redis-servers for one test alone (``appendonly=True`` for
    one whose data survives a kill); each is stopped on teardown."""
    _need_redis_server()
    started: list[RedisServer] = []

    def factory(*, appendonly: bool = False) -> RedisServer:
        server = RedisServer(appendonly=appendonly)
        started.append(server)
        server.start()
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
async def redis_proxy(own_redis: RedisServer) -> AsyncIterator[Proxy]:
    """A fault-injecting TCP proxy in front of the test's own redis-server."""
    proxy = Proxy("127.0.0.1", own_redis.port)
    await proxy.start()
    yield proxy
    await proxy.close()
