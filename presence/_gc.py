"""The garbage collector's policy while the service runs: no full collection walks the
objects of the sockets already open.

A socket of the service holds about a hundred objects that the collector tracks (its
protocol, parser, queues, task, presence rows). A full (generation-2) collection walks
every tracked object and stops the process meanwhile: 158 ms at 2,000 sockets, 427 ms
at 5,000, 1.0-1.3 s at 10,000-15,000, and 4.5-7.8 s in each process of the capacity
benchmark (17,000 sockets with presence each). CPython runs one whenever the oldest
generation has grown by a quarter, so a process filling with sockets runs them again
and again, and a reconnect storm always does (``bench/analysis.md``, "Stalls").

**Freeze what survives a full collection** (:func:`running`): right after each one
(``gc.callbacks``, phase ``stop``, when the younger generations are empty), every object
that survived it is moved to the permanent generation (``gc.freeze``), which no
collection walks. CPython sets the next full collection's trigger from what the last
one kept in the oldest generation, which is now only what arrived since the freeze
before; so each full collection walks only the objects kept since the last one, and
:data:`THRESHOLDS` make them frequent and short. Frozen objects are still freed when
their last reference goes.

**Collect on a pace, too** (:meth:`Policy.pace`): CPython collects when allocations
outnumber deallocations by a threshold, and idle sockets' traffic allocates and frees
in near pairs (which objects replace which was not traced), so live objects pile up in
the youngest generation without a collection, until something else
tips the count: at 15,000 sockets, the refresher's tick, every 5 s, ran a 40 ms
collection of the middle generation and a 45 ms full one, and the longest ``/healthz``
wait was 144 ms. The younger generations are now collected every
:data:`PACE_INTERVAL` seconds and the oldest every :data:`PACE_FULL_EVERY`-th time
(what it holds is only what came since the last freeze): there, the longest wait became
38 ms, the longest collection 7 ms, and the process's CPU fell from 139 to 115 ms/s.

What a freeze costs is the cycles: a reference cycle of frozen objects is never
collected. So the connections must not die in cycles:

- **asyncio's transport** keeps a bound method of its own (``_read_ready_cb``), so every
  closed connection (WebSocket and HTTP alike) left five objects (the transport, the
  method, its dict, the ``TransportSocket`` and the socket: about 1 KiB) for the
  collector. :func:`_patch_transports` replaces that attribute by a plain function that
  does nothing once the connection is lost (CPython 3.11 keeps the bound method; the
  selector no longer calls the transport by then, its reader being removed first).
- **uvicorn's HTTP protocol** and its parser point at each other; ``presence._http``
  drops the parser once the socket is upgraded (nothing drops it then otherwise).
- **our WebSocket protocol** breaks its own two cycles in ``connection_lost``
  (``presence.wsproto``).

Measured on a server process of 1,000 sockets, each joined to a room and watching it:
frozen, then every socket closed, then unfrozen and collected with ``DEBUG_SAVEALL``:
5,201 garbage objects before the transport patch (five for each socket), 140-168 after,
none of them a socket's (redis-py's connection set-up errors, the same at any size).
``tests/test_gc.py`` closes frozen sockets and counts what they leave.

**A guard for what is left** (:class:`Policy.guard`): a cycle the code makes elsewhere
(an exception kept with its traceback, uvicorn's stock protocol) would leak for good. So
when the process's RSS has grown by ``growth`` times since the last pass (or start),
one full collection of everything runs (unfreeze, collect; the callback freezes
again): the pause that the freeze avoids (about 1 s at 8,000 sockets with presence),
so at most once an hour, and once a pass found little to free only at each quadrupling,
then eightfold growth: memory that only leaks is bounded, memory that is only used is
not walked again and again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from asyncio import selector_events
from collections.abc import AsyncIterator
from typing import Any

logger = logging.getLogger("presence")

#: The collector's thresholds once started, in place of CPython's (700, 10, 10).
#:
#: With what each full collection keeps frozen, a full collection walks only what the
#: younger generations passed on since the last one, so the shorter the time between
#: two, the shorter each: the oldest generation is considered at every second
#: collection of the middle one (``1``), which comes every 5 collections of the
#: youngest (1,000 allocations net each). The collector's whole work hardly changes:
#: a long-lived object is walked once in each generation and then never again.
#:
#: Measured in a service process filling with 8,000 sockets (5 s pings, Redis; the
#: guard off), its full collections: (3000, 10, 1): 18, median 55 ms, max 113 ms;
#: (1000, 10, 1): 54, median 17 ms, max 66 ms; (1000, 5, 1): 92, median 9 ms, p90 29 ms,
#: max 65 ms. On (7000, 10, 10), the thresholds chosen before the freeze (when every
#: full collection walked every socket, they made them rare), the same ramp had a few,
#: each walking up to ~700,000 objects: 456-523 ms in the idle benchmark at 15,000.
THRESHOLDS = (1_000, 5, 1)

#: Seconds between two paced collections of the younger generations, and how many of
#: those come to one of the oldest (``Policy.pace``).
PACE_INTERVAL = 0.5
PACE_FULL_EVERY = 2

#: Seconds between two looks at the process's RSS.
GUARD_INTERVAL = 30.0
#: Seconds at least between two guard passes (and from start to the first): each is
#: the full pause the freeze avoids (about 1 s at 8,000 sockets with presence), and a
#: process filling with sockets doubles its RSS in minutes without leaking anything.
GUARD_MIN_INTERVAL = 3600.0
#: The RSS growth (a multiple of the RSS after the last guard pass) that calls for one.
GUARD_GROWTH = 2.0
#: The growth is doubled, up to this, after a pass that found less than 5 % to free.
GUARD_MAX_GROWTH = 8.0
#: No guard pass for growth smaller than this many bytes (start-up's own RSS is small).
GUARD_MIN_BYTES = 64 * 1024 * 1024

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss() -> int | None:
    """This process's resident set in bytes, or None where ``/proc`` does not say."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _lost() -> None:
    """A closed transport's read callback: nothing is read any more."""


def _patch_transports() -> None:
    """Clears a closed socket transport's bound method of its own, so that its objects go
    with their last reference instead of waiting for (or, frozen, escaping) the
    collector. Called once per process, by :func:`start_up`."""
    cls: Any = getattr(selector_events, "_SelectorSocketTransport", None)
    original = getattr(cls, "_call_connection_lost", None)
    if original is None or not hasattr(cls, "_read_ready__data_received"):
        return

    def _call_connection_lost(self: Any, exc: BaseException | None) -> None:
        try:
            original(self, exc)
        finally:
            self._read_ready_cb = _lost

    cls._call_connection_lost = _call_connection_lost


class Policy:
    """Freezes what each full collection keeps, and guards against what that leaks."""

    def __init__(
        self,
        *,
        interval: float = GUARD_INTERVAL,
        growth: float = GUARD_GROWTH,
        max_growth: float = GUARD_MAX_GROWTH,
        min_bytes: int = GUARD_MIN_BYTES,
        min_interval: float = GUARD_MIN_INTERVAL,
    ) -> None:
        self.interval = interval
        self.growth = growth
        self._base_growth = growth
        self.max_growth = max_growth
        self.min_bytes = min_bytes
        self.min_interval = min_interval
        self._last = time.monotonic()
        #: The RSS after the last guard pass (or at start).
        self.baseline = rss()
        #: Guard passes run.
        self.passes = 0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            self._installed = True
            gc.callbacks.append(self._after_collection)

    def uninstall(self) -> None:
        if self._installed:
            self._installed = False
            gc.callbacks.remove(self._after_collection)

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        # At the end of a full collection the younger generations are empty: the freeze
        # takes exactly what the collection kept.
        if phase == "stop" and info.get("generation") == 2:
            gc.freeze()

    def due(self) -> bool:
        if time.monotonic() - self._last < self.min_interval:
            return False
        now = rss()
        if now is None or self.baseline is None:
            return False
        return now >= max(self.baseline * self.growth, self.baseline + self.min_bytes)

    def guard(self) -> int:
        """One full collection of every object, frozen ones included; returns how many
        it freed."""
        started = time.perf_counter()
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        freed = gc.collect()  # the callback freezes what it kept
        self.passes += 1
        self.baseline = rss()
        self._last = time.monotonic()
        if freed < 0.05 * frozen:
            self.growth = min(self.growth * 2, self.max_growth)
        else:
            self.growth = self._base_growth
        logger.info(
            "collector: a full collection of %d frozen objects freed %d in %.0f ms",
            frozen,
            freed,
            (time.perf_counter() - started) * 1000,
        )
        return freed

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.due():
                self.guard()

    async def pace(
        self, interval: float = PACE_INTERVAL, full_every: int = PACE_FULL_EVERY
    ) -> None:
        """Collects the younger generations every ``interval`` seconds, and the oldest
        (all it holds being what came since the last freeze) every ``full_every``-th
        time, whatever the allocation counts say (the module's docstring says why)."""
        count = 0
        while True:
            await asyncio.sleep(interval)
            count += 1
            gc.collect(2 if count % full_every == 0 else 1)


_started = False


def start_up() -> None:
    """Once per process, right after start-up: start-up's garbage is collected, every
    object then alive (modules, classes, the store's clients) frozen, and the thresholds
    set."""
    global _started
    if _started:
        return
    _started = True
    _patch_transports()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


@contextlib.asynccontextmanager
async def running(policy: Policy | None = None) -> AsyncIterator[Policy]:
    """The policy in force while the app runs (its lifespan); none of it once it ends:
    nothing stays frozen, only the thresholds and the transports' patch remain."""
    start_up()
    policy = policy or Policy()
    policy.install()
    task = asyncio.create_task(policy.watch(), name="presence-gc-guard")
    pacer = asyncio.create_task(policy.pace(), name="presence-gc-pace")
    try:
        yield policy
    finally:
        task.cancel()
        pacer.cancel()
        policy.uninstall()
        # What was frozen goes back to the collector: the app's own objects (routes,
        # services, sockets) are cycles that die with it, and a process that starts an
        # app again (the tests do, hundreds of times) would keep every one for good.
        gc.unfreeze()
        for each in (task, pacer):
            with contextlib.suppress(asyncio.CancelledError):
                await each
