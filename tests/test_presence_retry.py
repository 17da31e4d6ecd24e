"""Holds and joins that Redis was too slow to answer, as in a reconnect storm: the room
service tries them again, a bounded number of times, rather than refuse them; a tab
whose hold was refused is held here before it joins, so that the reaper of the process
that held it before does not end it as ``node_down``. Against a real redis-server,
made slow by a script that spins, or stopped (SIGSTOP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from presence import keys, metrics
from presence.asgi import protocol
from presence.auth import Identity
from presence.bus import EventBus
from presence.bus.memory import MemoryBackend
from presence.exceptions import StoreUnavailable
from presence.rooms import _RETRIES, RoomService
from presence.sessions import Session
from presence.stores import RedisStore
from presence.stores.presence_redis import RedisPresenceStore

from .utils import hold_redis, make_settings

ROOM = "lobby"
BOUND = 0.25  # the store's call bound (REDIS_TIMEOUT's default)


@asynccontextmanager
async def _service(
    url: str, *, degraded: Callable[[], bool] = lambda: False, **settings: Any
) -> AsyncIterator[tuple[RoomService, RedisPresenceStore]]:
    sessions = RedisStore(url, ttl=60.0, timeout=BOUND)
    await sessions.open()
    store = RedisPresenceStore(sessions, keep=60.0)
    await store.open()
    service = RoomService(
        make_settings(diff_window=3600.0, **settings),
        store,
        EventBus(MemoryBackend()),
        channel=lambda room: keys.room_channel("presence", room),
        encode_sync=protocol.presence_sync,
        encode_diff=protocol.presence_diff,
        degraded=degraded,
    )
    try:
        yield service, store
    finally:
        await service.stop()
        await sessions.close()


def _counted(store: RedisPresenceStore, name: str) -> list[int]:
    """Counts the calls of the store's ``name``."""
    calls = [0]
    original = getattr(store, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await original(*args, **kwargs)

    setattr(store, name, counted)
    return calls


def _retries() -> float:
    return metrics.PRESENCE_RETRIES._value.get()


async def _members(store: RedisPresenceStore) -> list[str]:
    return [m.user for m in (await store.room(ROOM)).members]


async def test_a_join_redis_was_too_slow_for_is_tried_again_not_refused(own_redis):
    """Redis busy for longer than a call's bound, then answering: the join waits and
    is made, rather than refused store_unavailable."""
    async with _service(own_redis.url) as (service, store):
        tab = await service.open_tab("ann", "ann-tab")
        joins = _counted(store, "join")
        before = _retries()
        spinning = asyncio.ensure_future(hold_redis(own_redis.url, 2.5 * BOUND))
        await asyncio.sleep(0.1)
        result = await service.join(Identity("ann", "bearer", None), tab, ROOM, {"n": 1})
        await spinning
        assert result in ("joined", "updated")
        assert joins[0] >= 2 and _retries() > before
        assert await _members(store) == ["ann"]


async def test_a_tab_whose_hold_was_refused_is_held_here_before_it_joins(own_redis):
    """After a restart the tab is still held in Redis by the old process's name. Its
    hold from the new process is refused (Redis too slow, past the retries' budget);
    its join once Redis answers holds it here first, so the reaper of the old name
    leaves it alone and tells no leave: the member stays."""
    async with _service(own_redis.url, offline_grace=0.4) as (service, store):
        await store.hold("ann", "ann-tab", holder="p-old", state="online")
        await store.join("ann", "ann-tab", ROOM, None, max_rooms=20)
        assert await _members(store) == ["ann"]
        spinning = asyncio.ensure_future(hold_redis(own_redis.url, 4 * BOUND))
        await asyncio.sleep(0.15)
        with pytest.raises(StoreUnavailable):
            await service.open_tab("ann", "ann-tab")  # the socket lives on, unheld
        await spinning
        tab = service._tabs[("ann", "ann-tab")]
        assert tab.unheld
        await service.join(Identity("ann", "bearer", None), tab, ROOM, None)
        assert not tab.unheld
        _, reaped = await store.reap("p-old")
        assert reaped == []
        assert await _members(store) == ["ann"]


async def test_a_release_redis_was_too_slow_for_is_tried_again(own_redis):
    """A socket closes while Redis is busy for longer than a call's bound (as when
    thousands close at once): its release is made once Redis answers, rather than lost,
    which left the tab held by this live process for good, a member never leaving."""
    async with _service(own_redis.url, offline_grace=1.5) as (service, store):
        tab = await service.open_tab("ann", "ann-tab")
        await service.join(Identity("ann", "bearer", None), tab, ROOM, None)
        assert await _members(store) == ["ann"]
        releases = _counted(store, "release")
        before = _retries()
        spinning = asyncio.ensure_future(hold_redis(own_redis.url, 2.5 * BOUND))
        await asyncio.sleep(0.1)
        await service.close_tab(tab, "closed")
        await spinning
        assert releases[0] >= 2 and _retries() > before
        for _ in range(100):  # the member leaves after the grace
            if not await _members(store):
                break
            await asyncio.sleep(0.05)
        assert await _members(store) == []


async def test_a_join_against_a_stopped_redis_is_tried_a_bounded_number_of_times(own_redis):
    """Redis stopped (SIGSTOP: connections open, nothing answers) and the breaker not
    open (no session call has failed yet): the join is tried at most 1 + _RETRIES times,
    then refused; it never loops."""
    async with _service(own_redis.url) as (service, store):
        tab = await service.open_tab("ann", "ann-tab")
        joins = _counted(store, "join")
        own_redis.pause()
        try:
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(
                    service.join(Identity("ann", "bearer", None), tab, ROOM, None), 30
                )
        finally:
            own_redis.resume()
        assert 1 <= joins[0] <= 1 + _RETRIES


async def test_no_retry_once_redis_is_known_to_be_away(own_redis):
    """With the session store's breaker open (Redis away), a refused hold is not tried
    again: the switch to this process's memory is due, not a wait."""
    async with _service(own_redis.url, degraded=lambda: True) as (service, store):
        holds = _counted(store, "hold")
        own_redis.pause()
        try:
            with pytest.raises(StoreUnavailable):
                await service.open_tab("ann", "ann-tab")
        finally:
            own_redis.resume()
        assert holds[0] == 1
        assert service._tabs[("ann", "ann-tab")].unheld


# --- one pipeline a pass of the loop -----------------------------------------------------


def _count_calls(store: RedisPresenceStore) -> list[int]:
    """Counts the calls the presence store makes through the session store's bound."""
    calls = [0]
    original = store.sessions.call

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await original(*args, **kwargs)

    store.sessions.call = counted  # type: ignore[method-assign]
    return calls


async def test_the_holds_and_joins_of_one_pass_go_to_redis_together(own_redis):
    """A crowd reconnecting at once (a restart): the scripts of one pass of the event
    loop, holds and their joins and every APPLY, go in one pipeline each step, not one
    call each; every member is in its room as if sent one by one."""
    users = [f"u{i}" for i in range(50)]
    async with _service(own_redis.url) as (service, store):
        calls = _count_calls(store)

        async def reconnect(user: str) -> None:
            tab = await service.open_tab(user, f"{user}-tab")
            await service.join(Identity(user, "bearer", None), tab, ROOM, {"u": user})

        await asyncio.gather(*(reconnect(user) for user in users))
        # Per step (SADD, hold, join, APPLY) one pipeline for all 50, not 50 calls.
        assert calls[0] <= 8
        assert sorted(await _members(store)) == sorted(users)


async def test_a_script_that_fails_in_a_batch_fails_only_its_caller(own_redis):
    """One script of a pipeline raises (a bad argument): its caller gets the error, the
    others of the batch their replies."""
    async with _service(own_redis.url) as (service, store):
        tab = await service.open_tab("ann", "ann-tab")
        good = service.join(Identity("ann", "bearer", None), tab, ROOM, None)
        bad = store._run("USER", [keys.tabs_key("presence", "bob")], ["join", "x", "y"])
        results = await asyncio.gather(good, bad, return_exceptions=True)
        assert results[0] == "joined"
        assert isinstance(results[1], Exception)
        assert not isinstance(results[1], StoreUnavailable)
        assert await _members(store) == ["ann"]


async def test_scripts_lost_from_redis_are_loaded_again(own_redis):
    """Redis lost its script cache (a restart, SCRIPT FLUSH): the scripts of the batch
    that did not run are loaded and sent again."""
    async with _service(own_redis.url) as (service, store):
        tab = await service.open_tab("ann", "ann-tab")
        client = aioredis.Redis.from_url(own_redis.url)
        try:
            await client.script_flush()
        finally:
            await client.aclose()
        assert await service.join(Identity("ann", "bearer", None), tab, ROOM, None) == "joined"
        assert await _members(store) == ["ann"]


async def test_a_rest_tab_whose_hold_was_refused_is_held_at_its_next_heartbeat(own_redis):
    """A REST session's hold refused (Redis too slow): its next heartbeat holds it,
    though nothing about it changed (a heartbeat that changes nothing holds nothing)."""
    now = time.time()
    session = Session("ann-rest", "ann", now, now, now + 60.0)
    async with _service(own_redis.url) as (service, store):
        holds = _counted(store, "hold")
        await service.rest_join(Identity("ann", "bearer", None), session, ROOM, None)
        await service.rest_heartbeat(session)
        assert holds[0] == 1  # held once: the heartbeat changed nothing
        tab = service._tabs[("ann", "ann-rest")]
        spinning = asyncio.ensure_future(hold_redis(own_redis.url, 4 * BOUND))
        await asyncio.sleep(0.15)
        tab.state = "away"  # a heartbeat saying active again: held again, refused
        with pytest.raises(StoreUnavailable):
            await service.rest_heartbeat(session)
        await spinning
        assert tab.unheld
        await service.rest_heartbeat(session)
        assert not tab.unheld and holds[0] == 3
