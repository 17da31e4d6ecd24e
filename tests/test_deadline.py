"""presence.stores.redis.within: a call's bound that a stall of the event loop cannot
turn into a timeout when the reply had arrived."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from presence.stores.redis import within


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
