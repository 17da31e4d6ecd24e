"""Webhooks: presence told to the operator's backend, signed, at least once.

Events (``PRESENCE_WEBHOOK_URL``, one or more), each ``{"id", "type", "created_at",
"seq", ...}``:

- ``user.online`` (``user``, ``status``): the user's first tab came;
- ``user.offline`` (``user``, ``last_seen``, ``reason``): their last tab went;
- ``room.occupied`` / ``room.vacated`` (``room``, ``count``): a room's first member
  came, its last went;
- ``member.joined`` (``room``, ``user``, ``status``, ``sessions``, ``meta``,
  ``count``) / ``member.left`` (``room``, ``user``, ``reason``, ``last_seen``,
  ``count``);
- ``session.ended`` (``user``, ``session_id``, ``reason``).

``id`` is the same on every delivery of an event (receivers deduplicate by it);
``seq`` grows with each event of the same user (``user.*``, ``session.ended``) or the
same room (``room.*``, ``member.*``).

**Made once, where the change is decided.** With Redis, the scripts that decide a change
add its event to every URL's stream in the same atomic step
(:mod:`presence.stores._webhook_scripts`): the user script when a user's first tab is
held or their last departs (after the grace, so a refresh or a blip tells nothing), the
flush script with the room's diff (one a window, by one process), and the session
scripts when they end a session. No process adds an event because it heard of a change,
so each happens once however many processes run, and none is lost between a change and
its event. On a Redis Cluster a script may touch only its own slot: it adds the event to
the user's or room's outbox there (:func:`presence.keys.user_outbox`), which the process
moves on to the URLs' streams right after (:meth:`Webhooks.outbox_added`), and a sweep
every :data:`presence.keys.WEBHOOK_SWEEP_INTERVAL` moves what was left behind (a process
that died first, or an end made by a heartbeat or a refresh). While Redis is away,
presence is each process's own and tells nothing: when Redis is back, what changed
meanwhile is decided there, and told then. With the memory
store (no Redis) the memory stores call :meth:`Webhooks.emit` instead: delivered from
this process's memory, not durable (said at start-up).

**Delivered at least once.** Each URL's stream (:func:`presence.keys.webhook_stream`)
is read through one consumer group by every process: an entry goes to one process, up
to :data:`BATCH` a POST ``{"events": [...]}``, and stays pending until the URL answers
2xx, then it is acknowledged and deleted. A failure is retried, the same batch, after a
capped exponential backoff with full jitter (the first within :data:`FIRST_RETRY`),
until the events are older than ``PRESENCE_WEBHOOK_RETRY_HOURS``: then they move to
the URL's dead-letter stream, which :meth:`Webhooks.dead_letters` lists and
:meth:`Webhooks.replay` sends again. A process touches what it holds every third of
:data:`presence.keys.WEBHOOK_CLAIM_IDLE`; a process that died holding a batch stops
touching it, and another claims it (``XAUTOCLAIM``) and delivers it.

**Never in the way.** Delivery runs in tasks of its own, never in a request or a
socket; each URL has one batch in flight at most, each POST a bound
(:data:`POST_TIMEOUT`), and a response's body is never read, so a slow or dead receiver
holds one batch of memory however long it lasts: what waits meanwhile waits in Redis
(bounded by :data:`presence.keys.WEBHOOK_STREAM_MAXLEN`), or in memory up to
:data:`MEMORY_MAX` events (then the oldest are dropped, and logged).

**Signed.** ``Presence-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>" with PRESENCE_WEBHOOK_SECRET>`` (:func:`sign`); receivers recompute it
and refuse a timestamp older than a few minutes (the README shows how).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from . import keys, metrics
from ._shutdown import stop
from .exceptions import ConfigError
from .stores import _webhook_scripts

if TYPE_CHECKING:
    from .settings import Settings
    from .stores.presence_memory import MemoryPresenceStore
    from .stores.presence_redis import RedisPresenceStore
    from .stores.redis import RedisStore

__all__ = [
    "BATCH",
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "DeadLetter",
    "Webhooks",
    "backoff",
    "sign",
    "where",
]

logger = logging.getLogger("presence.webhooks")

EVENT_TYPES = (
    "user.online",
    "user.offline",
    "room.occupied",
    "room.vacated",
    "member.joined",
    "member.left",
    "session.ended",
)
SIGNATURE_HEADER = "Presence-Signature"
#: Events a POST carries at most.
BATCH = 100
#: Seconds: the backoff's base, so the first retry comes within it (full jitter).
FIRST_RETRY = 1.0
#: Seconds: the backoff's cap.
MAX_BACKOFF = 300.0
#: Seconds a POST may take in all (connect, send, the status line and headers).
POST_TIMEOUT = 10.0
#: Events the memory outbox holds per URL (no Redis); past it the oldest are dropped.
MEMORY_MAX = 10_000
#: Dead letters the memory outbox keeps per URL.
MEMORY_DEAD_MAX = 1_000
# Seconds a read waits for new events (XREADGROUP BLOCK) before looking for stale ones.
_READ_WAIT = 1.0
# Characters of a webhook URL, at most.
_URL_MAX = 2048
# A cluster's outboxes waiting to be moved, at most (past it the sweep finds them).
_DUE_MAX = 100_000
# Seconds between log lines about one URL's failures (a dead receiver is one line a
# minute, not one a retry).
_LOG_EVERY = 60.0


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Presence-Signature`` header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def backoff(attempt: int, *, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first): uniform in
    ``[0, min(MAX_BACKOFF, FIRST_RETRY * 2 ** (attempt - 1))]`` (full jitter, so that
    processes that failed together do not retry together)."""
    ceiling = min(MAX_BACKOFF, FIRST_RETRY * 2 ** min(attempt - 1, 30))
    return float(rng() * ceiling)


def where(url: str) -> str:
    """A URL as logs may show it: scheme, host and port (a path or query may hold a
    token the receiver checks)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def check_urls(raw: str) -> tuple[str, ...]:
    """The URLs of ``PRESENCE_WEBHOOK_URL`` (comma-separated).

    Raises:
        ConfigError: one is not an absolute http(s) URL with a host, carries
            credentials or a fragment, is longer than 2048 characters, or is given
            twice; or there are more than 10.
    """
    urls: list[str] = []
    for item in raw.split(","):
        url = item.strip()
        if not url:
            continue
        if len(url) > _URL_MAX:
            raise ConfigError(
                "PRESENCE_WEBHOOK_URL", f"a URL of {len(url)} characters; at most {_URL_MAX}"
            )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError("PRESENCE_WEBHOOK_URL", f"{where(url)!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                "PRESENCE_WEBHOOK_URL",
                f"{url[:80]!r} is not an http:// or https:// URL with a host",
            )
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                "PRESENCE_WEBHOOK_URL",
                f"a URL for {parts.hostname} carries credentials; receivers check "
                "Presence-Signature (PRESENCE_WEBHOOK_SECRET) instead",
            )
        if parts.fragment or any(c.isspace() for c in url) or port == 0:
            raise ConfigError("PRESENCE_WEBHOOK_URL", f"{where(url)!r}: not a usable URL")
        if url in urls:
            raise ConfigError("PRESENCE_WEBHOOK_URL", f"{where(url)} is given twice")
        urls.append(url)
    if len(urls) > 10:
        raise ConfigError("PRESENCE_WEBHOOK_URL", "at most 10 URLs")
    return tuple(urls)


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wire(event: dict[str, Any]) -> dict[str, Any]:
    """An event as it is sent: its times (kept in ms inside) as ISO 8601 strings."""
    out = dict(event)
    for name in ("created_at", "last_seen"):
        value = out.get(name)
        if isinstance(value, int | float):
            out[name] = _iso(int(value))
    return out


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a URL did not take in time.

    Attributes:
        id: the dead letter's id, for :meth:`Webhooks.replay`.
        event: the event, as it would be sent.
        error: the last failure (``HTTP 500``, ``ConnectTimeout``, ...).
        attempts: POSTs tried.
    """

    id: str
    event: dict[str, Any]
    error: str
    attempts: int


@dataclass(slots=True)
class _Entry:
    id: str
    event: dict[str, Any]


@dataclass(slots=True)
class Health:
    """One URL's delivery, as this process saw it (for the admin page and metrics)."""

    url: str
    delivered: int = 0
    failures: int = 0
    retries: int = 0
    dead: int = 0
    lost: int = 0
    #: Seconds between the last delivered batch's oldest event and its delivery.
    lag: float = 0.0
    last_error: str | None = None
    last_success: float | None = None

    # Each change to these counts goes through one of the methods below, which move the
    # process's Prometheus families with it (presence.metrics).

    def took(self, created_ms: Sequence[int], now: float) -> None:
        """A batch of events with these creation times was delivered at ``now``."""
        self.delivered += len(created_ms)
        self.last_success = now
        self.lag = max(0.0, now - min(created_ms) / 1000)
        metrics.WEBHOOK_DELIVERIES.inc(len(created_ms))
        for created in created_ms:
            metrics.WEBHOOK_LAG.observe(max(0.0, now - created / 1000))

    def failed(self, error: str) -> None:
        """A POST failed."""
        self.failures += 1
        self.last_error = error
        metrics.WEBHOOK_FAILURES.inc()

    def retrying(self, events: int) -> None:
        """A batch of ``events`` is to be POSTed again, after a backoff."""
        self.retries += 1
        metrics.WEBHOOK_RETRIES.inc(events)

    def buried(self, events: int) -> None:
        """``events`` went to the dead letters."""
        self.dead += events
        metrics.WEBHOOK_DEAD_LETTERS.inc(events)


class _Outbox(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def read(self, count: int, wait: float) -> list[_Entry]: ...
    async def claim(self, count: int) -> list[_Entry]: ...
    async def keep(self, entries: Sequence[_Entry]) -> None: ...
    async def ack(self, entries: Sequence[_Entry]) -> None: ...
    async def bury(self, entries: Sequence[_Entry], error: str, attempts: int) -> None: ...
    async def dead_letters(self, count: int, after: str | None) -> list[DeadLetter]: ...
    async def replay(self, ids: Sequence[str] | None) -> int: ...
    async def size(self) -> tuple[int, int]: ...
    async def forget_consumers(self) -> None: ...


class _RedisOutbox:
    """One URL's events in Redis: a stream read through a consumer group."""

    def __init__(self, client: Any, prefix: str, url: str, consumer: str) -> None:
        self.client = client
        self.url = url
        self.stream = keys.webhook_stream(prefix, url)
        self.dead = keys.webhook_dead(prefix, url)
        self.consumer = consumer
        self.health: Health | None = None
        self._cursor = "0-0"
        self._scripts = {
            name: client.register_script(getattr(_webhook_scripts, name))
            for name in ("ACK", "BURY", "REPLAY")
        }

    async def open(self) -> None:
        try:
            # From the start ("0"): events a script added before any group was made
            # are delivered too.
            await self.client.xgroup_create(self.stream, keys.WEBHOOK_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # The scripts' XADD is a pcall (a refusal must not fail the change it tells
        # of), so an ACL without it is found here, on a key beside the stream.
        check = self.stream + ":check"
        await self.client.xadd(check, {"x": "1"}, maxlen=1)
        await self.client.delete(check)

    async def size(self) -> tuple[int, int]:
        """Events waiting, and dead letters."""
        return int(await self.client.xlen(self.stream)), int(await self.client.xlen(self.dead))

    async def forget_consumers(self) -> None:
        """Drops the group's consumers that hold nothing and were idle for an hour
        (processes gone), so that the group does not grow with every restart."""
        for consumer in await self.client.xinfo_consumers(self.stream, keys.WEBHOOK_GROUP):
            idle = int(consumer.get("idle", 0))
            if consumer.get("pending") == 0 and idle > keys.WEBHOOK_CONSUMER_IDLE * 1000:
                await self.client.xgroup_delconsumer(
                    self.stream, keys.WEBHOOK_GROUP, consumer["name"]
                )

    async def close(self) -> None:
        pass

    async def read(self, count: int, wait: float) -> list[_Entry]:
        reply = await self.client.xreadgroup(
            keys.WEBHOOK_GROUP,
            self.consumer,
            {self.stream: ">"},
            count=count,
            block=max(1, round(wait * 1000)),
        )
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            messages = next(iter(reply.values()))[0]
        else:
            messages = reply[0][1]
        return self._entries(messages)

    async def claim(self, count: int) -> list[_Entry]:
        reply = await self.client.xautoclaim(
            self.stream,
            keys.WEBHOOK_GROUP,
            self.consumer,
            round(keys.WEBHOOK_CLAIM_IDLE * 1000),
            start_id=self._cursor,
            count=count,
        )
        self._cursor = str(reply[0])
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:
            # Trimmed by MAXLEN while pending: a receiver gone for that long.
            logger.error(
                "webhook %s: %d pending events were trimmed from the stream (MAXLEN) "
                "before delivery",
                where(self.url),
                len(deleted),
            )
            if self.health is not None:
                self.health.lost += len(deleted)
        return self._entries(reply[1])

    async def keep(self, entries: Sequence[_Entry]) -> None:
        if entries:
            await self.client.xclaim(
                self.stream,
                keys.WEBHOOK_GROUP,
                self.consumer,
                0,
                [e.id for e in entries],
                justid=True,
            )

    async def ack(self, entries: Sequence[_Entry]) -> None:
        if entries:
            args = [keys.WEBHOOK_GROUP, *(e.id for e in entries)]
            await self._scripts["ACK"](keys=[self.stream], args=args)

    async def bury(self, entries: Sequence[_Entry], error: str, attempts: int) -> None:
        args: list[Any] = [keys.WEBHOOK_GROUP, error, attempts]
        for entry in entries:
            args += [entry.id, json.dumps(entry.event)]
        await self._scripts["BURY"](keys=[self.stream, self.dead], args=args)

    async def dead_letters(self, count: int, after: str | None) -> list[DeadLetter]:
        start = "-" if after is None else "(" + after
        out = []
        for entry_id, fields in await self.client.xrange(self.dead, start, "+", count=count):
            out.append(
                DeadLetter(
                    str(entry_id),
                    wire(json.loads(fields["e"])),
                    str(fields.get("error", "")),
                    int(fields.get("attempts", 0)),
                )
            )
        return out

    async def replay(self, ids: Sequence[str] | None) -> int:
        if ids is None:
            found = await self.client.xrange(self.dead, "-", "+", count=MEMORY_DEAD_MAX)
            ids = [str(entry_id) for entry_id, _ in found]
        if not ids:
            return 0
        return int(await self._scripts["REPLAY"](keys=[self.stream, self.dead], args=list(ids)))

    def _entries(self, messages: Any) -> list[_Entry]:
        out = []
        for entry_id, fields in messages:
            if not fields or "e" not in fields:
                continue  # deleted meanwhile
            try:
                event = json.loads(fields["e"])
            except ValueError:
                logger.error("webhook: dropped an unreadable event")
                continue
            out.append(_Entry(str(entry_id), event))
        return out


class _MemoryOutbox:
    """One URL's events in this process's memory (no Redis): not durable, bounded."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.health: Health | None = None
        self._queue: collections.deque[_Entry] = collections.deque()
        self._dead: collections.deque[DeadLetter] = collections.deque(maxlen=MEMORY_DEAD_MAX)
        self._ready = asyncio.Event()
        self._ids = itertools.count(1)

    def put(self, event: dict[str, Any]) -> None:
        if len(self._queue) >= MEMORY_MAX:
            self._queue.popleft()
            if self.health is not None:
                self.health.lost += 1
            logger.error("webhook %s: the memory outbox is full; dropped an event", where(self.url))
        self._queue.append(_Entry(str(next(self._ids)), event))
        self._ready.set()

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def read(self, count: int, wait: float) -> list[_Entry]:
        if not self._queue:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._ready.wait()
        return [self._queue.popleft() for _ in range(min(count, len(self._queue)))]

    async def size(self) -> tuple[int, int]:
        return len(self._queue), len(self._dead)

    async def forget_consumers(self) -> None:
        pass

    async def claim(self, count: int) -> list[_Entry]:
        return []  # One process: nobody else held anything.

    async def keep(self, entries: Sequence[_Entry]) -> None:
        pass

    async def ack(self, entries: Sequence[_Entry]) -> None:
        pass  # Read is taken: nothing else holds them.

    async def bury(self, entries: Sequence[_Entry], error: str, attempts: int) -> None:
        for entry in entries:
            self._dead.append(DeadLetter(entry.id, wire(entry.event), error, attempts))

    async def dead_letters(self, count: int, after: str | None) -> list[DeadLetter]:
        letters = list(self._dead)
        if after is not None:
            ids = [d.id for d in letters]
            letters = letters[ids.index(after) + 1 :] if after in ids else letters
        return letters[:count]

    async def replay(self, ids: Sequence[str] | None) -> int:
        chosen = [d for d in self._dead if ids is None or d.id in ids]
        for letter in chosen:
            self._dead.remove(letter)
            event = dict(letter.event)
            # Back to the form it is kept in (ms), as it came out of a store.
            for name in ("created_at", "last_seen"):
                if isinstance(event.get(name), str):
                    moment = datetime.fromisoformat(event[name].replace("Z", "+00:00"))
                    event[name] = round(moment.timestamp() * 1000)
            self.put(event)
        return len(chosen)


@dataclass
class _Delivery:
    """Delivers one URL's outbox, for as long as it runs."""

    url: str
    outbox: _Outbox
    http: httpx.AsyncClient
    secret: str
    retry_for: float
    health: Health
    _next_claim: float = 0.0
    _next_forget: float = 0.0
    _logged: float = field(default=-_LOG_EVERY)

    async def run(self) -> None:
        while True:
            try:
                await self.outbox.open()
                break
            except RedisError as exc:
                self._log(f"cannot reach Redis ({type(exc).__name__}); trying again")
                await asyncio.sleep(FIRST_RETRY)
        while True:
            try:
                batch = await self._next()
                if batch:
                    await self._deliver(batch)
            except RedisError as exc:
                self._log(f"Redis: {type(exc).__name__}; trying again")
                await asyncio.sleep(FIRST_RETRY)
                if "NOGROUP" in str(exc):
                    # The stream went (a FLUSHALL, an eviction): made again.
                    with contextlib.suppress(RedisError):
                        await self.outbox.open()
            except Exception:
                logger.exception("webhook %s: delivery failed; trying again", where(self.url))
                await asyncio.sleep(FIRST_RETRY)

    async def _next(self) -> list[_Entry]:
        now = time.monotonic()
        if now >= self._next_forget:
            self._next_forget = now + keys.WEBHOOK_CONSUMER_IDLE / 4
            await self.outbox.forget_consumers()
        if now >= self._next_claim:
            self._next_claim = now + keys.WEBHOOK_CLAIM_IDLE / 3
            claimed = await self.outbox.claim(BATCH)
            if claimed:
                logger.info(
                    "webhook %s: took over %d events another process held",
                    where(self.url),
                    len(claimed),
                )
                return claimed
        return await self.outbox.read(BATCH, _READ_WAIT)

    async def _deliver(self, batch: list[_Entry]) -> None:
        keeper = asyncio.create_task(self._keep(batch))
        try:
            attempts = 0
            while batch:
                attempts += 1
                error = await self._post(batch)
                if error is None:
                    await self.outbox.ack(batch)
                    created = [int(e.event.get("created_at", 0)) for e in batch]
                    self.health.took(created, time.time())
                    return
                self.health.failed(error)
                self._log(f"failed ({error}); retrying")
                cutoff = (time.time() - self.retry_for) * 1000
                expired = [e for e in batch if int(e.event.get("created_at", 0)) < cutoff]
                if expired:
                    await self.outbox.bury(expired, error, attempts)
                    self.health.buried(len(expired))
                    logger.error(
                        "webhook %s: %d events were not taken within the retry hours; "
                        "moved to the dead letters",
                        where(self.url),
                        len(expired),
                    )
                    batch[:] = [e for e in batch if e not in expired]
                if batch:
                    self.health.retrying(len(batch))
                    await asyncio.sleep(backoff(attempts))
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep(self, batch: list[_Entry]) -> None:
        # What this process holds stays its own while it works on it (XAUTOCLAIM takes
        # only what has been idle for WEBHOOK_CLAIM_IDLE).
        while True:
            await asyncio.sleep(keys.WEBHOOK_CLAIM_IDLE / 3)
            with contextlib.suppress(RedisError):
                await self.outbox.keep(batch)

    async def _post(self, batch: Sequence[_Entry]) -> str | None:
        """POSTs the batch; None when the URL took it, else why not."""
        body = json.dumps(
            {"events": [wire(e.event) for e in batch]}, separators=(",", ":")
        ).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
            "User-Agent": "presence-webhooks",
        }
        try:
            async with asyncio.timeout(POST_TIMEOUT):
                # Streamed and never read: a receiver's body, however large, costs nothing.
                async with self.http.stream("POST", self.url, content=body, headers=headers) as r:
                    status = r.status_code
        except TimeoutError:
            return "timeout"
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"

    def _log(self, message: str) -> None:
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY:
            self._logged = now
            logger.warning("webhook %s: %s", where(self.url), message)


class Webhooks:
    """Every URL's outbox and its delivery, for the app's lifetime.

    Args:
        settings: the URLs, the secret and the retry hours.
        redis: the Redis store whose URL the streams live on; None: in memory.
        http: an HTTP client to use (tests); one is made otherwise.
    """

    def __init__(
        self,
        settings: Settings,
        redis: RedisStore | None,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if settings.webhook_secret is None:  # Settings.validate refuses this first.
            raise ConfigError("PRESENCE_WEBHOOK_SECRET", "must be set with PRESENCE_WEBHOOK_URL")
        self.settings = settings
        self.urls = settings.webhook_urls
        self.secret = settings.webhook_secret
        self.redis = redis
        self.durable = redis is not None
        self.consumer = "c-" + secrets.token_urlsafe(9)
        self._http = http
        self._owns_http = http is None
        self._client: Any = None
        self._owns_client = False
        self._outboxes: dict[str, _Outbox] = {}
        self._memory: list[_MemoryOutbox] = []
        self.health: dict[str, Health] = {url: Health(url) for url in self.urls}
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = int(time.time() * 1000)
        # A cluster's outboxes to move on, oldest first (bounded: past it the sweep
        # finds the rest).
        self._due: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._drain: Any = None

    @property
    def streams(self) -> list[str]:
        """Every URL's stream, in the order of the URLs."""
        return [keys.webhook_stream(self.settings.key_prefix, url) for url in self.urls]

    def produce_from(
        self, presence: RedisPresenceStore | MemoryPresenceStore, sessions: Any
    ) -> None:
        """Has the stores add their events: Redis's scripts to the streams, the memory
        stores through :meth:`emit`."""
        from .stores.memory import MemoryStore

        if self.redis is not None and self.redis.cluster:
            self.redis.add_webhook_outboxes(self.outbox_added)
            presence.webhook_outbox_added = self.outbox_added  # type: ignore[union-attr]
            return
        if self.redis is not None:
            streams = self.streams
            self.redis.add_webhook_streams(streams)
            presence.webhook_streams = streams  # type: ignore[union-attr]
            return
        presence.emit = self.emit  # type: ignore[union-attr]
        if isinstance(sessions, MemoryStore):
            told = sessions.announce

            def announce(user: str, session_id: str, reason: str) -> None:
                if told is not None:
                    told(user, session_id, reason)
                self.session_ended(user, session_id, reason)

            sessions.announce = announce

    async def start(self) -> None:
        """Opens the outboxes and starts delivering.

        Raises:
            ConfigError: Redis refuses the streams' commands (an ACL).
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        prefix = self.settings.key_prefix
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(POST_TIMEOUT, connect=POST_TIMEOUT / 2),
                limits=httpx.Limits(max_connections=2 * len(self.urls) or 1),
                follow_redirects=False,
                trust_env=False,
            )
        if self.redis is not None:
            self._client = self._redis_client(self.redis)
        for url in self.urls:
            outbox: _Outbox
            if self._client is not None:
                redis_outbox = _RedisOutbox(self._client, prefix, url, self.consumer)
                redis_outbox.health = self.health[url]
                outbox = redis_outbox
                try:
                    async with asyncio.timeout(2.0):
                        await outbox.open()
                except NoPermissionError as exc:
                    raise ConfigError(
                        "REDIS_URL", f"webhooks need the stream commands ({exc})"
                    ) from None
                except (RedisError, TimeoutError):
                    pass  # Redis away: the delivery opens it when it is back.
            else:
                memory = _MemoryOutbox(url)
                memory.health = self.health[url]
                self._memory.append(memory)
                outbox = memory
            self._outboxes[url] = outbox
            delivery = _Delivery(
                url, outbox, self._http, self.secret, self.settings.webhook_retry, self.health[url]
            )
            self._tasks.append(asyncio.create_task(delivery.run(), name="presence-webhook"))
        if self.redis is not None and self.redis.cluster:
            self._drain = self._client.register_script(_webhook_scripts.DRAIN)
            self._tasks.append(asyncio.create_task(self._mover(), name="presence-webhook-mover"))
            self._tasks.append(asyncio.create_task(self._sweeper(), name="presence-webhook-sweep"))

    async def stop(self) -> None:
        # Within a bound, cancelled again if a cancellation is lost (presence._shutdown).
        bound = 4 * self.settings.redis_timeout
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await stop(task, bound)
        self._tasks.clear()
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- a cluster's outboxes -----------------------------------------------------------

    def outbox_added(self, key: str) -> None:
        """A script may have added events to the outbox ``key``: they are moved on soon,
        in a task of its own (never in the caller's request)."""
        if len(self._due) < _DUE_MAX:
            self._due[key] = None
            self._wake.set()

    async def _mover(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._due:
                key = next(iter(self._due))
                del self._due[key]
                await self._move_safely(key)

    async def _sweeper(self) -> None:
        # Outboxes left behind (a process that died before moving them, or ends added by
        # a heartbeat or a refresh): one process at a time SCANs every primary for them.
        prefix = self.settings.key_prefix
        while True:
            await asyncio.sleep(keys.WEBHOOK_SWEEP_INTERVAL)
            try:
                claim = keys.webhook_sweep_key(prefix)
                ms = round(keys.WEBHOOK_SWEEP_INTERVAL * 1000)
                if not await self._client.set(claim, self.consumer, nx=True, px=ms):
                    continue
                pattern = keys.outbox_pattern(prefix)
                async for key in self._client.scan_iter(match=pattern, count=1000, _type="STREAM"):
                    await self._move_safely(str(key))
            except RedisError as exc:
                logger.warning("webhook sweep: Redis: %s; trying again", type(exc).__name__)

    async def _move_safely(self, key: str) -> None:
        try:
            await self._move(key)
        except RedisError as exc:
            # Left where it is: the sweep moves it later.
            logger.warning("webhook: could not move an outbox (%s)", type(exc).__name__)

    async def _move(self, key: str) -> None:
        """Moves the outbox's events into every URL's stream, then out of the outbox:
        a crash in between moves them twice (receivers deduplicate by id), never not
        at all."""
        streams = self.streams
        while True:
            found = await self._client.xrange(key, "-", "+", count=BATCH)
            if not found:
                return
            for stream in streams:
                async with self._client.pipeline(transaction=False) as pipe:
                    for _, fields in found:
                        if "e" in fields:
                            pipe.xadd(stream, {"e": fields["e"]}, maxlen=keys.WEBHOOK_STREAM_MAXLEN)
                    await pipe.execute()
            ids = [str(entry_id) for entry_id, _ in found]
            if not int(await self._drain(keys=[key], args=ids)):
                return

    # -- the memory store's events ----------------------------------------------------

    def emit(self, kind: str, scope: str, fields: dict[str, Any]) -> None:
        """An event made in this process's memory (no Redis)."""
        self._seq += 1
        event = {
            "id": "ev_" + secrets.token_hex(12),
            "type": kind,
            "created_at": int(time.time() * 1000),
            "seq": self._seq,
            **fields,
        }
        for outbox in self._memory:
            outbox.put(event)

    def session_ended(self, user: str, session_id: str, reason: str) -> None:
        self.emit(
            "session.ended", "u:" + user, {"user": user, "session_id": session_id, "reason": reason}
        )

    # -- for the admin page and metrics ---------------------------------------------

    async def state(self) -> list[dict[str, Any]]:
        """Each URL's delivery: where it goes (scheme, host, port), events waiting and
        dead (for every process, with Redis), and this process's counters.

        Raises:
            RedisError: Redis did not answer.
        """
        out = []
        for url, outbox in self._outboxes.items():
            waiting, dead = await outbox.size()
            health = self.health[url]
            out.append(
                {
                    "url": url,
                    "where": where(url),
                    "waiting": waiting,
                    "dead": dead,
                    "delivered": health.delivered,
                    "failures": health.failures,
                    "retries": health.retries,
                    "lost": health.lost,
                    "lag": health.lag,
                    "last_error": health.last_error,
                    "last_success": health.last_success,
                }
            )
        return out

    # -- dead letters -----------------------------------------------------------------

    async def dead_letters(
        self, url: str, *, count: int = 100, after: str | None = None
    ) -> list[DeadLetter]:
        """The URL's dead letters, oldest first, ``count`` (at most 1000) at most,
        after the one whose id is ``after``.

        Raises:
            KeyError: not one of the URLs.
        """
        return await self._outbox(url).dead_letters(max(1, min(count, 1000)), after)

    async def replay(self, url: str, ids: Sequence[str] | None = None) -> int:
        """Sends the URL's dead letters ``ids`` (all when None, up to a thousand) again:
        back into its outbox, with the ids and seqs they had; returns how many.

        Raises:
            KeyError: not one of the URLs.
        """
        return await self._outbox(url).replay(ids)

    def _outbox(self, url: str) -> _Outbox:
        outbox = self._outboxes.get(url)
        if outbox is None:
            raise KeyError(f"not a webhook URL: {where(url)}")
        return outbox

    def _redis_client(self, redis: RedisStore) -> Any:
        # A client of its own: a blocking read holds a connection for its wait, and
        # the store's calls are bounded far below that.
        if redis.url is None:
            return redis.client
        self._owns_client = True
        if redis.cluster:
            return RedisCluster.from_url(
                redis.url,
                decode_responses=True,
                socket_connect_timeout=2.0,
                socket_timeout=_READ_WAIT + 5.0,
            )
        return aioredis.Redis.from_url(
            redis.url,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=_READ_WAIT + 5.0,
            max_connections=4 * len(self.urls) + 2,
        )
