"""A call's bound that counts only the time this process could have heard the answer.

``asyncio.timeout`` measures wall time, and an event loop is not always listening: a
garbage collection of the oldest generation stops the process for 0.5-1 s once it holds
10,000 sockets, and a pass of the loop that takes in a burst of handshakes runs for
hundreds of milliseconds. A Redis call caught in such a stall has its reply waiting in
the socket, yet its timer fires first, and the service answers 503 for a Redis that
answered in time: thousands of times in the reconnect storm benchmark, through the
calls' own timers and redis-py's connect and read timers alike.

:class:`within` keeps the bound, less those stalls:

- **Collections give their time back.** Every collection's pause is added up
  (``gc.callbacks``); when the deadline comes, the time collections took since the call
  began is granted again, so a call that needs several steps (a connection to make, a
  command, its reply) has its whole bound of time in which the process was running.
- **A reply that arrived is read first.** The deadline, once due, fires one pass of the
  loop later (``Timeout.reschedule`` to a time past is a ``call_soon``), behind the
  wake-ups that pass queued: after any other stall, a reply that had arrived wins.

A Redis that does not answer still fails the call, later by the collections meanwhile
(at most ``max_extension`` times the bound in all).
"""

from __future__ import annotations

import asyncio
import gc
import time
from types import TracebackType
from typing import Any


class _Collections:
    """The running total of seconds the garbage collector has stopped this process."""

    __slots__ = ("_installed", "_started", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        """Starts counting (once per process; further calls do nothing)."""
        if not self._installed:
            self._installed = True
            gc.callbacks.append(self._watch)

    def _watch(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started


pauses = _Collections()


class within:  # lower case: used as asyncio.timeout is
    """``asyncio.timeout(seconds)`` for time in which this process was running (see the
    module's docstring): collections' pauses do not count, and a reply already received
    when the deadline comes still wins.

    Args:
        seconds: the bound.
        max_extension: the most the collections may add, as a multiple of ``seconds``.
    """

    __slots__ = ("_collected", "_extended", "_handle", "_max", "_seconds", "_timeout")

    def __init__(self, seconds: float, *, max_extension: float = 8.0) -> None:
        pauses.install()
        self._seconds = seconds
        self._max = seconds * max_extension
        self._extended = 0.0
        self._collected = 0.0
        self._timeout = asyncio.timeout(None)
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()
        self._collected = pauses.total
        self._handle = asyncio.get_running_loop().call_later(self._seconds, self._expire)

    def _expire(self) -> None:
        collected = pauses.total
        owed = min(collected - self._collected, self._max - self._extended)
        if owed > 0.001:
            # The collector took this much of the bound: the call gets it again.
            self._collected = collected
            self._extended += owed
            self._handle = asyncio.get_running_loop().call_later(owed, self._expire)
            return
        # A deadline in the past: asyncio.Timeout fires it with call_soon, behind the
        # wake-ups this pass of the loop has queued.
        self._timeout.reschedule(0)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
        await self._timeout.__aexit__(exc_type, exc, tb)
