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

- **A late loop gives its lateness back.** A process whose loop is behind (a fan-out to
  thousands of sockets, three busy processes on one CPU) reads a reply that came in
  microseconds hundreds of milliseconds later; a call of several steps (a pooled
  connection to make, then the command) pays that lag at each. While calls are in
  flight, a timer every :data:`_TICK` seconds measures how late the loop runs it (less
  the collections meanwhile, counted above); that lateness is granted again as the
  collections' is. The fan-out benchmark at 2,000 watchers saw joins refused
  ``store_unavailable`` and lease renewals failing, with redis-server nearly idle.

A Redis that does not answer still fails the call, later by the collections and the
lateness meanwhile (at most ``max_extension`` times the bound in all); a process whose
loop is on time meets the bound as before.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from types import TracebackType
from typing import Any

#: Seconds between two looks at the loop's lateness while calls are in flight.
_TICK = 0.05
#: Lateness of a look that is only the timer's granularity, not a stall.
_SLACK = 0.002


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


class _Lateness:
    """The running total of seconds one event loop ran late, beyond the collections
    (which :data:`pauses` counts): looked at every :data:`_TICK` seconds while a call
    under :class:`within` is in flight, and not at all while none is."""

    # Neither the loop nor its timer handle (which holds the loop) is kept: a value of
    # _lateness that held its key would keep every loop ever used alive. The loop is
    # the running one in every method, and the tick stops itself.
    __slots__ = ("_collected", "_due", "_ticking", "calls", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.calls = 0
        self._due = 0.0
        self._collected = 0.0
        self._ticking = False

    def enter(self) -> None:
        self.calls += 1
        if not self._ticking:
            self._ticking = True
            loop = asyncio.get_running_loop()
            self._collected = pauses.total
            self._due = loop.time() + _TICK
            loop.call_at(self._due, self._tick)

    def exit(self) -> None:
        self.calls -= 1

    def now(self) -> float:
        """The total, with the lateness of the look due by now counted already (a
        deadline run late in the same pass as the look is owed it too)."""
        if self._ticking:
            now = asyncio.get_running_loop().time()
            if now > self._due:
                collected = pauses.total
                late = now - self._due - (collected - self._collected) - _SLACK
                if late > 0:
                    self.total += late
                self._collected = collected
                self._due = now
        return self.total

    def _tick(self) -> None:
        self.now()
        if self.calls <= 0:
            self._ticking = False
            return
        loop = asyncio.get_running_loop()
        self._due = loop.time() + _TICK
        loop.call_at(self._due, self._tick)


_lateness: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lateness] = (
    weakref.WeakKeyDictionary()
)


def _lateness_of(loop: asyncio.AbstractEventLoop) -> _Lateness:
    found = _lateness.get(loop)
    if found is None:
        found = _lateness[loop] = _Lateness()
    return found


class within:  # lower case: used as asyncio.timeout is
    """``asyncio.timeout(seconds)`` for time in which this process was running (see the
    module's docstring): collections' pauses and the loop's lateness do not count, and a
    reply already received when the deadline comes still wins.

    Args:
        seconds: the bound.
        max_extension: the most the collections may add, as a multiple of ``seconds``.
    """

    __slots__ = (
        "_collected",
        "_extended",
        "_handle",
        "_late",
        "_lateness",
        "_max",
        "_seconds",
        "_timeout",
    )

    def __init__(self, seconds: float, *, max_extension: float = 8.0) -> None:
        pauses.install()
        self._seconds = seconds
        self._max = seconds * max_extension
        self._extended = 0.0
        self._collected = 0.0
        self._late = 0.0
        self._lateness: _Lateness | None = None
        self._timeout = asyncio.timeout(None)
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()
        loop = asyncio.get_running_loop()
        lateness = self._lateness = _lateness_of(loop)
        lateness.enter()
        self._collected = pauses.total
        self._late = lateness.total
        self._handle = loop.call_later(self._seconds, self._expire)

    def _expire(self) -> None:
        collected = pauses.total
        late = self._late if self._lateness is None else self._lateness.now()
        owed = min(collected - self._collected + late - self._late, self._max - self._extended)
        if owed > 0.001:
            # The collector, or a loop running late, took this much of the bound: the
            # call gets it again.
            self._collected = collected
            self._late = late
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
        if self._lateness is not None:
            self._lateness.exit()
            self._lateness = None
        await self._timeout.__aexit__(exc_type, exc, tb)
