"""Coalescing: the calls of one kind made during one pass of the event loop go to Redis
together, as one round trip.

Under load, many requests reach the same store call in the same pass of the loop: 64
REST heartbeats in flight, thousands of handshakes after a restart, every socket
closing at shutdown. Sent one by one, each pays redis-py's whole call path (command
packing, a pooled connection, a reply parser, a timer) and a round trip. Gathered, they
pay it once a batch. When the process is quiet a batch holds one call and goes out on the
next pass of the loop, so nothing waits longer than it would have.

Centrifugo's Redis engine batches its commands the same way; redis-py has no such mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


class Coalescer(Generic[_Item, _Result]):
    """Gathers the items submitted during one pass of the event loop and hands them to
    ``send`` together; each caller gets its own item's result.

    Args:
        send: takes a batch, returns one result per item in the same order. If it
            raises, every caller of that batch gets the exception (a copy of it each).
        max_batch: most items in one batch; a full batch goes out at once.
    """

    __slots__ = ("_in_flight", "_pending", "_scheduled", "_send", "max_batch")

    def __init__(
        self,
        send: Callable[[list[_Item]], Awaitable[Sequence[_Result]]],
        *,
        max_batch: int = 256,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._send = send
        self.max_batch = max_batch
        self._pending: list[tuple[_Item, asyncio.Future[_Result]]] = []
        self._scheduled = False
        # Batches being sent; the loop holds only weak references to tasks.
        self._in_flight: set[asyncio.Task[None]] = set()

    async def submit(self, item: _Item) -> _Result:
        """Sends ``item`` with the others of this pass and returns its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Result] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    async def drain(self) -> None:
        """Sends what is pending and waits for every batch under way (at close)."""
        self._flush()
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._deliver(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _deliver(self, batch: list[tuple[_Item, asyncio.Future[_Result]]]) -> None:
        # A caller that went away (its request cancelled) still has its item sent: the
        # batch is under way for the others.
        try:
            results = await self._send([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(results)} results")
        except BaseException as exc:  # every caller must hear of it, whatever it is
            for _, future in batch:
                if not future.done():
                    future.set_exception(_copy(exc))
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _copy(exc: BaseException) -> BaseException:
    """The same failure for one more caller: raising one exception object in several
    tasks would chain each one's traceback onto the others'."""
    if isinstance(exc, asyncio.CancelledError):
        return asyncio.CancelledError()
    try:
        clone = type(exc)(*exc.args)
    except Exception:  # an exception whose constructor takes other arguments
        return exc
    clone.__cause__ = exc.__cause__
    return clone
