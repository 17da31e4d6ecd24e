"""presence.stores._batch.Coalescer: calls of one pass of the event loop go together."""

from __future__ import annotations

import asyncio

import pytest

from presence.exceptions import StoreUnavailable
from presence.stores._batch import Coalescer


class Recorder:
    """A ``send`` that records its batches and answers each item doubled."""

    def __init__(self, fail: BaseException | None = None, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.delay = delay

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [item * 2 for item in items]


async def test_calls_made_in_one_pass_go_as_one_batch_in_order():
    send = Recorder()
    coalescer = Coalescer(send)
    assert await asyncio.gather(*(coalescer.submit(n) for n in range(10))) == [
        n * 2 for n in range(10)
    ]
    assert send.batches == [list(range(10))]


async def test_calls_in_different_passes_go_apart():
    send = Recorder()
    coalescer = Coalescer(send)
    assert await coalescer.submit(1) == 2
    assert await coalescer.submit(2) == 4
    assert send.batches == [[1], [2]]


async def test_a_full_batch_goes_at_once_and_the_rest_after():
    send = Recorder()
    coalescer = Coalescer(send, max_batch=4)
    assert await asyncio.gather(*(coalescer.submit(n) for n in range(10))) == [
        n * 2 for n in range(10)
    ]
    assert send.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_a_failure_reaches_every_caller_as_its_own_exception():
    cause = ConnectionError("reset")
    failure = StoreUnavailable("redis unavailable: ConnectionError")
    failure.__cause__ = cause
    coalescer = Coalescer(Recorder(fail=failure))
    results = await asyncio.gather(*(coalescer.submit(n) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert all(str(r) == str(failure) and r.__cause__ is cause for r in results)
    assert len({id(r) for r in results}) == 3


async def test_a_caller_that_goes_away_leaves_the_others_answered():
    send = Recorder(delay=0.05)
    coalescer = Coalescer(send)
    gone = asyncio.ensure_future(coalescer.submit(1))
    stays = asyncio.ensure_future(coalescer.submit(2))
    await asyncio.sleep(0.01)
    gone.cancel()
    assert await stays == 4
    assert send.batches == [[1, 2]]
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_a_short_answer_is_an_error_not_a_wrong_result():
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    coalescer: Coalescer[int, int] = Coalescer(short)
    results = await asyncio.gather(*(coalescer.submit(n) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_drain_waits_for_batches_under_way():
    send = Recorder(delay=0.05)
    coalescer = Coalescer(send)
    pending = asyncio.ensure_future(coalescer.submit(3))
    await asyncio.sleep(0)
    await coalescer.drain()
    assert pending.done() and pending.result() == 6


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        Coalescer(Recorder(), max_batch=0)
