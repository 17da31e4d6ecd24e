"""presence.stores._deadline.within: a call's bound that counts only the time the process
was running, so a stall of the event loop (a collection, a long pass) cannot turn a
reply that Redis sent in time into a timeout."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import weakref

import pytest

from presence.stores._deadline import within


async def _reply_during_a_stall(bound, stall: float) -> bytes:
    """Waits under ``bound`` for a reply on a real socket; the reply is sent at once, but
    the event loop is blocked for ``stall`` before it can read it."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        reader, writer = await asyncio.open_connection(sock=ours)

        async def call() -> bytes:
            async with bound:
                return await reader.read(100)

        task = asyncio.ensure_future(call())
        await asyncio.sleep(0)  # the task is waiting for its reply
        theirs.sendall(b"+PONG\r\n")
        time.sleep(stall)  # noqa: ASYNC251 - the stall is what is under test
        try:
            return await task
        finally:
            writer.close()


async def test_a_reply_received_during_a_stall_wins_over_the_deadline():
    assert await _reply_during_a_stall(within(0.05), stall=0.3) == b"+PONG\r\n"


async def test_asyncio_timeout_alone_would_have_timed_out():
    """The fault this guards against, shown on asyncio.timeout itself."""
    with pytest.raises(TimeoutError):
        await _reply_during_a_stall(asyncio.timeout(0.05), stall=0.3)


async def test_no_reply_is_still_a_timeout_soon_after_the_deadline():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        reader, writer = await asyncio.open_connection(sock=ours)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with within(0.05):
                await reader.read(100)
        assert time.monotonic() - started < 5  # a bound, not a hang
        writer.close()


async def test_a_quick_call_leaves_nothing_scheduled():
    loop = asyncio.get_running_loop()
    async with within(10):
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    pending = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    assert not any(getattr(h, "_callback", None).__qualname__ == "within._expire" for h in pending)


async def test_an_exception_inside_passes_through():
    with pytest.raises(KeyError):
        async with within(10):
            raise KeyError("x")


def _a_heap_that_takes_a_while_to_collect() -> list[list[object]]:
    # Objects the collector must walk: enough for a collection well over the bounds used
    # below (checked by each test, so that a faster machine cannot make them vacuous).
    return [[None] for _ in range(1_000_000)]  # ~0.1 s to collect here


async def _collect_then_step(bound) -> float:
    """A call of two steps with a full collection between them, as a new connection
    (connect, then the command) caught by a collection would be; returns how long the
    collection took."""
    heap = _a_heap_that_takes_a_while_to_collect()
    async with bound:
        await asyncio.sleep(0)
        started = time.perf_counter()
        gc.collect()
        pause = time.perf_counter() - started
        await asyncio.sleep(0.01)  # the second step, after the collection
    del heap
    return pause


async def test_time_taken_by_collections_is_given_back():
    pause = await _collect_then_step(within(0.01))
    assert pause > 0.01 + 0.01  # the collection alone outlasted the bound and the step


async def test_asyncio_timeout_alone_counts_collections_against_the_call():
    with pytest.raises(TimeoutError):
        await _collect_then_step(asyncio.timeout(0.01))


async def test_what_collections_may_add_is_capped():
    """A Redis that never answers still fails the call, however much the collector
    runs meanwhile: at most ``max_extension`` bounds later."""
    heap = _a_heap_that_takes_a_while_to_collect()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with within(0.01, max_extension=2):
            while True:  # a collection in every step, and no reply ever
                gc.collect()
                await asyncio.sleep(0.001)
    del heap
    # 0.01 s of bound, at most 0.02 s given back, plus the collection in progress.
    assert time.monotonic() - started < 5


async def _late_loop_then_step(bound, stall: float) -> None:
    """A call of two steps whose second comes after the event loop ran ``stall`` late
    (another callback held it, as a fan-out to thousands of sockets or a CPU shared
    with other processes does), with no collection involved."""
    loop = asyncio.get_running_loop()
    async with bound:
        await asyncio.sleep(0)
        loop.call_soon(time.sleep, stall)  # the loop is held, not this call
        await asyncio.sleep(0.01)  # the second step, after the loop is back


async def test_time_the_loop_ran_late_is_given_back():
    """A call whose loop was held past its bound, by work that is not the call's nor
    Redis's, still completes."""
    await _late_loop_then_step(within(0.05), stall=0.3)


async def test_asyncio_timeout_alone_counts_a_late_loop_against_the_call():
    with pytest.raises(TimeoutError):
        await _late_loop_then_step(asyncio.timeout(0.05), stall=0.3)


async def test_what_a_late_loop_may_add_is_capped():
    """A Redis that never answers still fails the call, however late the loop runs
    meanwhile: at most ``max_extension`` bounds later."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with within(0.02, max_extension=2):
            while True:  # the loop held in every step, and no reply ever
                loop.call_soon(time.sleep, 0.03)
                await asyncio.sleep(0.001)
    assert time.monotonic() - started < 5


async def test_an_idle_loop_is_not_looked_at():
    """Once no call is in flight, nothing is left ticking on the loop."""
    loop = asyncio.get_running_loop()
    async with within(10):
        await asyncio.sleep(0.12)
    await asyncio.sleep(0.12)
    pending = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    assert not any(
        getattr(getattr(h, "_callback", None), "__qualname__", "") == "_Lateness._tick"
        for h in pending
    )


def test_what_it_keeps_of_a_loop_goes_with_the_loop():
    """The lateness kept for each loop does not keep the loop alive once it is gone (a
    test suite makes a loop per test)."""
    loops = []

    async def call() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        async with within(10):
            await asyncio.sleep(0.01)

    for _ in range(3):
        asyncio.run(call())  # each closed with its look still scheduled
    gc.collect()
    assert all(loop() is None for loop in loops)
