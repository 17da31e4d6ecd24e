"""presence.stores._packing: commands packed by hiredis are the bytes redis-py packs,
what hiredis refuses is packed (or refused) by redis-py as before, and a store's pool
uses it against a real Redis."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, ConnectionPool, UnixDomainSocketConnection
from redis.exceptions import DataError

from presence.sessions import new_session_id
from presence.stores import RedisStore
from presence.stores._packing import packing_with_hiredis

ARGS = [
    ("SET", "k", "v"),
    ("EVALSHA", "f" * 40, 2, "a", "b", 0.1, 1 / 3, 1e20, -0.0, float("inf"), 2**70, -5),
    ("SET", "ключ", "é", b"\x00\xff\r\n", memoryview(b"view")),
    ("SET", "k", bytearray(b"array")),  # hiredis refuses a bytearray: redis-py packs it
    ("CLIENT SETNAME", "presence"),  # a name of two words, split by redis-py
    (b"CONFIG GET", b"maxmemory"),
    ("SET", "", ""),
]


def _pair() -> tuple[Connection, Connection]:
    pool = packing_with_hiredis(ConnectionPool())
    return pool.make_connection(), Connection()


@pytest.mark.parametrize("args", ARGS, ids=[str(i) for i in range(len(ARGS))])
def test_a_command_is_packed_into_the_bytes_redis_py_packs(args) -> None:
    packed, stock = _pair()
    assert type(packed).__name__ == "HiredisPackedConnection"
    assert b"".join(packed.pack_command(*args)) == b"".join(stock.pack_command(*args))


@pytest.mark.parametrize("bad", [None, True, [1], {"a": 1}], ids=repr)
def test_what_redis_py_refuses_is_refused_as_redis_py_refuses_it(bad) -> None:
    packed, stock = _pair()
    with pytest.raises(DataError) as ours:
        packed.pack_command("SET", "k", bad)
    with pytest.raises(DataError) as theirs:
        stock.pack_command("SET", "k", bad)
    assert str(ours.value) == str(theirs.value)


def test_a_lone_surrogate_is_refused_as_redis_py_refuses_it() -> None:
    packed, _ = _pair()
    with pytest.raises(UnicodeEncodeError):
        packed.pack_command("SET", "k", "\ud800")


def test_a_pool_keeps_its_kind_of_connection() -> None:
    pool = packing_with_hiredis(ConnectionPool(connection_class=UnixDomainSocketConnection))
    assert issubclass(pool.connection_class, UnixDomainSocketConnection)
    again = packing_with_hiredis(ConnectionPool(connection_class=UnixDomainSocketConnection))
    assert again.connection_class is pool.connection_class


@pytest.mark.redis
async def test_a_store_refreshes_thousands_of_sessions_packed_by_hiredis(redis_url) -> None:
    """The refresher's one large call, through the store's pool, on a real Redis."""
    store = RedisStore(redis_url, ttl=60.0)
    await store.open()
    try:
        assert store.client.connection_pool.connection_class.__name__.startswith("HiredisPacked")
        refs = []
        for i in range(2_000):
            session = await store.create(f"packing-{i % 400}", new_session_id())
            refs.append((session.user, session.id))
        gone = (f"packing-{len(refs)}", new_session_id())
        assert await store.refresh([*refs, gone]) == [gone]
    finally:
        await store.close()
