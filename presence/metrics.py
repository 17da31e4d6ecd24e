"""Prometheus metrics: the families ``GET /metrics`` exposes, and the small calls that
move them.

Each layer moves its own family with one call where the thing happens (a request ends,
a socket closes, a diff is published, a Redis call returns, the breaker opens, a
refresher tick ends); what is a state rather than an event (sockets open, sessions and
users held, the breaker, the journal) is read by :class:`Sampler` once a second, which
also measures the event loop's lag, so that no request pays for it. Rooms and members
are Redis's (every process's) and are read when ``/metrics`` is scraped.

No label carries a user, a session or a room: labels are route templates, methods,
statuses, close codes, reasons, transports and states, each from a closed set.

Under ``presence serve --workers N`` each worker writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode; the CLI makes the
folder when it is not set) and a scrape, answered by any worker, adds them up: counters
and histograms summed over every worker that ever ran, gauges summed over the live ones
(rooms and members: the latest reading).

Cost on the hottest path, the REST heartbeat: the access middleware's wrapper, the
route's template and one histogram observation (its child cached) add 2.7 us of CPU a
request, measured on a bare ASGI app; a Redis call's observation 0.7 us (one call per
batch of heartbeats). A heartbeat costs 140-200 us of CPU in ``bench/rest.py`` (16
connections, 200 sessions, 5 s rounds), so about 2%: under the noise of that benchmark
on the shared 2-core host, where A/B runs of the code before and after gave 0.161 and
0.177 ms a request against floors of 0.076 and 0.080 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from .models import Diff, TabState

logger = logging.getLogger("presence.metrics")

__all__ = [
    "CONTENT_TYPE",
    "DIFFS",
    "DIFF_MESSAGES",
    "EVENT_LOOP_LAG",
    "HTTP_REQUESTS",
    "JOURNAL_WRITES",
    "MEMBER_LEAVES",
    "REDIS_BREAKER_OPEN",
    "REDIS_BREAKER_TRIPS",
    "REDIS_CALLS",
    "REFRESHER_TICKS",
    "ROOMS",
    "ROOM_MEMBERS",
    "SESSIONS",
    "SOCKETS",
    "USERS",
    "WEBHOOK_DEAD_LETTERS",
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_FAILURES",
    "WEBHOOK_LAG",
    "WEBHOOK_RETRIES",
    "WEBSOCKET_CLOSES",
    "Sampler",
    "authorized",
    "render",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Latencies of a request or a Redis call: most are a millisecond or less, a bound is
# 0.5 s (twice PRESENCE_REDIS_TIMEOUT), a stall seconds.
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# -- what this process holds (the sampler sets them; summed over live workers) ----------

SOCKETS = Gauge(
    "presence_sockets",
    "WebSockets open (or being opened) on the process.",
    multiprocess_mode="livesum",
)
SESSIONS = Gauge(
    "presence_sessions",
    "Sessions the process holds (a socket open here, or a REST session in a room whose "
    "latest heartbeat came here), by transport (websocket, http) and state (active, away).",
    ["transport", "state"],
    multiprocess_mode="livesum",
)
USERS = Gauge(
    "presence_users",
    "Users with a session the process holds, by their status across those sessions "
    "(online, away); a user held by two processes counts on both.",
    ["status"],
    multiprocess_mode="livesum",
)
REDIS_BREAKER_OPEN = Gauge(
    "presence_redis_breaker_open",
    "1 while the process's circuit breaker is open (Redis away, serving from memory); "
    "summed, the processes whose breaker is open.",
    multiprocess_mode="livesum",
)
JOURNAL_WRITES = Gauge(
    "presence_journal_writes",
    "Writes made during a Redis outage that are waiting to be written back.",
    multiprocess_mode="livesum",
)

# -- every process's (read from the presence store when scraped) ------------------------

ROOMS = Gauge(
    "presence_rooms",
    "Rooms with members, as of their latest diff (every process's).",
    multiprocess_mode="mostrecent",
)
ROOM_MEMBERS = Gauge(
    "presence_room_members",
    "Members summed over the rooms, as of their latest diff (every process's).",
    multiprocess_mode="mostrecent",
)

# -- events ------------------------------------------------------------------------------

DIFFS = Counter("presence_diffs", "Room diffs published (counted by the process that flushed).")
DIFF_MESSAGES = Counter(
    "presence_diff_messages", "Diff messages sent to watching sockets (fan-out)."
)
MEMBER_LEAVES = Counter(
    "presence_member_leaves",
    "Members gone from a room (reaped after the grace), by reason (left, closed, timeout, "
    "ended, expired, node_down).",
    ["reason"],
)
HTTP_REQUESTS = Histogram(
    "presence_http_request_duration_seconds",
    "HTTP requests by method, route template and status, and how long they took.",
    ["method", "route", "status"],
    buckets=_FAST,
)
WEBSOCKET_CLOSES = Counter(
    "presence_websocket_closes",
    "WebSockets closed, by close code (1000-1015; 'other' for an application's code, "
    "'none' for a connection lost without one).",
    ["code"],
)
REDIS_CALLS = Histogram(
    "presence_redis_call_duration_seconds",
    "Redis calls (a script, a command, a batch) and how long each took, failures included.",
    buckets=_FAST,
)
PRESENCE_RETRIES = Counter(
    "presence_store_retries",
    "Holds and joins tried again after Redis did not answer within the call's bound "
    "(Redis not known to be away: a burst).",
)
REDIS_BREAKER_TRIPS = Counter(
    "presence_redis_breaker_trips", "Times the circuit breaker opened (Redis went away)."
)
REFRESHER_TICKS = Histogram(
    "presence_refresher_tick_duration_seconds",
    "Refresher ticks (every open socket's session renewed in one call) and how long each took.",
    buckets=_FAST,
)
EVENT_LOOP_LAG = Histogram(
    "presence_event_loop_lag_seconds",
    "How late the event loop ran a timer due every second (time it was busy elsewhere).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# -- webhooks (presence.webhooks moves these) --------------------------------------------

WEBHOOK_DELIVERIES = Counter(
    "presence_webhook_deliveries", "Webhook events delivered (the receiver answered 2xx)."
)
WEBHOOK_FAILURES = Counter(
    "presence_webhook_failures",
    "Webhook POSTs that failed (no answer, a timeout, or a status other than 2xx).",
)
WEBHOOK_RETRIES = Counter(
    "presence_webhook_retries", "Webhook events scheduled for another attempt after a failure."
)
WEBHOOK_DEAD_LETTERS = Counter(
    "presence_webhook_dead_letters",
    "Webhook events given up on after PRESENCE_WEBHOOK_RETRY_HOURS (to the dead-letter stream).",
)
WEBHOOK_LAG = Histogram(
    "presence_webhook_lag_seconds",
    "From a webhook event's creation to its delivery.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)

# HTTP methods as labels: any other word a client sends is "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_done(method: str, route: str, status: int, seconds: float) -> None:
    """An HTTP request ended (``route`` is its template, never its path)."""
    child = _requests.get((method, route, status))
    if child is None:
        label = method if method in _METHODS else "other"
        child = _requests[method, route, status] = HTTP_REQUESTS.labels(label, route, str(status))
    child.observe(seconds)


# The histogram's children by (method, route, status): labels() takes a lock and builds
# its key on every call, a third of the cost of a request's observation. As bounded as
# the labels (methods outside _METHODS, a handful that llhttp parses, share "other").
_requests: dict[tuple[str, str, int], Histogram] = {}


def socket_closed(code: int | None) -> None:
    """A WebSocket closed with ``code`` (the client's, uvicorn's or ours)."""
    if code is None:
        label = "none"
    elif 1000 <= code <= 1015:
        label = str(code)
    else:
        label = "other"  # 3000-4999 are the application's: any number a client likes
    WEBSOCKET_CLOSES.labels(label).inc()


def diff_published(diff: Diff) -> None:
    """This process flushed a room's diff (once per diff, whoever watches it)."""
    DIFFS.inc()
    for leave in diff.leaves:
        MEMBER_LEAVES.labels(leave.reason).inc()


def fanned_out(messages: int) -> None:
    """A diff went out to ``messages`` watching sockets of this process."""
    if messages:
        DIFF_MESSAGES.inc(messages)


# -- the sampler -------------------------------------------------------------------------


class _Tab(Protocol):
    user: str
    state: TabState
    sockets: int


class _Holder(Protocol):
    """What the sampler reads of the services (``presence.asgi.services.Services``)."""

    @property
    def sockets(self) -> int: ...

    def held_tabs(self) -> Iterable[_Tab]: ...

    def store_state(self) -> tuple[bool, int]: ...

    async def room_counts(self) -> list[tuple[str, int]]: ...


class Sampler:
    """Once a second, how late the loop ran this timer (the event loop's lag); every
    ``gauges_interval``, and at each scrape of this process, the gauges of what it holds.
    Runs while the app does (:meth:`running`).

    The gauges walk every tab held here: at 15,000 idle sockets, sampled each second,
    that walk was 10 % of the process's CPU (``bench profile``, 2026-12-02). A scrape
    samples the process it reaches; the background samples are for the other workers
    of a multiprocess folder, whose gauges a scrape reads from their files.

    Args:
        holder: what is read (sockets, tabs, the store's breaker and journal).
        folder: the multiprocess folder (``PROMETHEUS_MULTIPROC_DIR``), if any.
        interval: seconds between the loop's lag samples.
        gauges_interval: seconds between the background samples of the gauges.
    """

    def __init__(
        self,
        holder: _Holder,
        folder: str | None,
        interval: float = 1.0,
        gauges_interval: float = 5.0,
    ) -> None:
        self.holder = holder
        self.folder = folder
        self.interval = interval
        self.gauges_interval = gauges_interval

    def sample(self) -> None:
        """Sets the gauges of what this process holds, from what it holds now."""
        holder = self.holder
        SOCKETS.set(holder.sockets)
        sessions = {key: 0 for key in _SESSION_KEYS}
        users: dict[str, bool] = {}
        for tab in holder.held_tabs():
            online = tab.state == "online"
            sessions["websocket" if tab.sockets else "http", "active" if online else "away"] += 1
            users[tab.user] = users.get(tab.user, False) or online
        for (transport, state), count in sessions.items():
            SESSIONS.labels(transport, state).set(count)
        online_users = sum(users.values())
        USERS.labels("online").set(online_users)
        USERS.labels("away").set(len(users) - online_users)
        degraded, journal = holder.store_state()
        REDIS_BREAKER_OPEN.set(1 if degraded else 0)
        JOURNAL_WRITES.set(journal)

    async def sample_rooms(self) -> None:
        """Reads the rooms and their members from the presence store (at a scrape)."""
        from .exceptions import StoreError

        try:
            counts = await self.holder.room_counts()
        except StoreError:
            return  # Redis away or refusing: the last reading stands
        ROOMS.set(len(counts))
        ROOM_MEMBERS.set(sum(count for _, count in counts))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Sampler]:
        task = asyncio.create_task(self._run(), name="metrics-sampler")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self.folder is not None:
                # This worker's live gauges no longer count (a worker killed outright
                # keeps counting until the folder is wiped, at the next launch).
                multiprocess.mark_process_dead(os.getpid(), self.folder)  # type: ignore[no-untyped-call]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sampled = loop.time() - self.gauges_interval  # the first tick samples
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            now = loop.time()
            EVENT_LOOP_LAG.observe(max(0.0, now - due))
            if now - sampled < self.gauges_interval:
                continue
            sampled = now
            try:
                self.sample()
            except Exception:
                logger.exception("metrics sample failed")


_SESSION_KEYS = [(t, s) for t in ("websocket", "http") for s in ("active", "away")]


# -- the endpoint ------------------------------------------------------------------------


def authorized(token: str | None, authorization: str | None) -> bool:
    """Whether a request's ``Authorization`` header carries ``Bearer <token>`` (always,
    when no token is set). Compared in constant time."""
    if token is None:
        return True
    if authorization is None:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def render(folder: str | None) -> bytes:
    """Every family in the Prometheus text format: this process's, or with a
    multiprocess ``folder`` (``--workers``) every worker's, added up."""
    if folder is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def wipe(folder: str) -> None:
    """Removes a previous launch's files from a multiprocess folder (prometheus-client
    asks for a clean one at each start)."""
    for path in Path(folder).glob("*.db"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
