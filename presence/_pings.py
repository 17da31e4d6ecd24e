"""One keepalive schedule for every WebSocket of a process, in place of each socket's own
timers.

uvicorn keeps a socket alive with two timer handles (``asyncio.TimerHandle``) a ping:
``call_later`` for the next ping, and ``call_later`` again for its pong's deadline,
cancelled when the pong comes. With thousands of idle sockets that is thousands of
handles in the event loop's heap, each made, compared (``TimerHandle.__lt__``, in
Python, about log2(N) times a push or pop) and collected: about a fifth of the idle
profile (``bench/RESULTS.md``).

:class:`PingSchedule` files each socket under a **tick** (its due time rounded up to
``resolution`` seconds) in a set of that tick's sockets, and keeps one loop timer, for
the earliest tick that has any. When it fires, every socket due is called once
(:meth:`Pinger.keepalive_due`): it sends its ping, or, its pong not come, times out.
Filing and unfiling are a set's ``add`` and ``discard``; the heap holds one int a
tick, not a handle a socket.

A socket's ping and timeout keep their meaning, rounded up to the next tick: a ping is
sent ``ping_interval - rtt`` after the previous pong (as uvicorn does) and at most one
``resolution`` later; a socket whose pong has not come ``ping_timeout`` after its ping is
closed at most one ``resolution`` later.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import weakref
from typing import Protocol

__all__ = ["MAX_RESOLUTION", "PingSchedule", "Pinger", "resolution_for", "schedule_for"]

#: The coarsest tick: a tenth of a second, small beside any ping interval or timeout
#: worth having (Presence's defaults are 30 s and 20 s), and coarse enough that at
#: 10,000 sockets pinged every 5 s one timer serves some 200 of them.
MAX_RESOLUTION = 0.1


class Pinger(Protocol):
    """What the schedule needs of a socket: the tick it is filed under (None: not
    filed; the schedule sets it back to None as it calls), and the call."""

    keepalive_tick: int | None

    def keepalive_due(self) -> None: ...


def resolution_for(ping_interval: float | None, ping_timeout: float | None) -> float:
    """The tick for these keepalive settings: :data:`MAX_RESOLUTION`, or a tenth of the
    shorter of the two when that is finer (a test's pings every few tenths of a second)."""
    shortest = min((t for t in (ping_interval, ping_timeout) if t), default=MAX_RESOLUTION * 10)
    return min(MAX_RESOLUTION, shortest / 10)


class PingSchedule:
    """The keepalive deadlines of one event loop's sockets, in ticks of ``resolution``
    seconds, with one timer for the earliest tick that has sockets."""

    __slots__ = (
        "_buckets",
        "_firing",
        "_floor",
        "_loop",
        "_ticks",
        "_timer",
        "_timer_tick",
        "resolution",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float) -> None:
        self._loop = loop
        self.resolution = resolution
        # Sockets by the tick they are due at; the ticks in a heap.
        self._buckets: dict[int, set[Pinger]] = {}
        self._ticks: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_tick: int | None = None
        self._firing = False
        # While firing: the first tick not being served (what is filed now goes there
        # at the earliest, so a pass always ends).
        self._floor = 0

    def __len__(self) -> int:
        """Sockets filed."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(self, pinger: Pinger, when: float) -> None:
        """Files ``pinger`` to be called once the loop's clock reaches ``when`` (rounded
        up to a tick). It must not be filed already (:meth:`discard` first)."""
        tick = max(math.ceil(when / self.resolution), self._floor)
        pinger.keepalive_tick = tick
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.add(pinger)
            return
        self._buckets[tick] = {pinger}
        heapq.heappush(self._ticks, tick)
        if not self._firing:
            self._arm(tick)

    def discard(self, pinger: Pinger) -> None:
        """Unfiles ``pinger``, if it is filed."""
        tick = pinger.keepalive_tick
        if tick is None:
            return
        pinger.keepalive_tick = None
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.discard(pinger)
        # An emptied bucket stays until its tick comes: its timer may be armed already.

    def _arm(self, tick: int) -> None:
        if self._timer_tick is not None and self._timer_tick <= tick:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_tick = tick
        self._timer = self._loop.call_at(tick * self.resolution, self._fire)

    def _fire(self) -> None:
        armed = self._timer_tick
        self._timer = None
        self._timer_tick = None
        # The loop runs a timer up to its clock's resolution early: the tick it was
        # armed for is due whatever the clock says.
        last = max(armed or 0, math.floor(self._loop.time() / self.resolution))
        ticks, buckets = self._ticks, self._buckets
        self._firing, self._floor = True, last + 1
        try:
            while ticks and ticks[0] <= last:
                tick = heapq.heappop(ticks)
                for pinger in buckets.pop(tick, ()):
                    if pinger.keepalive_tick != tick:
                        continue  # Unfiled by a call before it in this pass.
                    pinger.keepalive_tick = None
                    try:
                        pinger.keepalive_due()
                    except Exception as exc:  # One socket's failure is not the others'.
                        self._loop.call_exception_handler(
                            {"message": "keepalive of a WebSocket failed", "exception": exc}
                        )
        finally:
            self._firing, self._floor = False, 0
        if ticks:
            self._arm(ticks[0])


_schedules: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, PingSchedule]] = (
    weakref.WeakKeyDictionary()
)


def schedule_for(loop: asyncio.AbstractEventLoop, resolution: float) -> PingSchedule:
    """The loop's schedule of ticks of ``resolution`` (made on first use)."""
    by_resolution = _schedules.get(loop)
    if by_resolution is None:
        by_resolution = _schedules[loop] = {}
    schedule = by_resolution.get(resolution)
    if schedule is None:
        schedule = by_resolution[resolution] = PingSchedule(loop, resolution)
    return schedule
