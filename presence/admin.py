"""The admin service: who may look inside the service, and what they see, live.

The rules, once, apart from the edges (``asgi/admin.py`` parses, calls and maps):

- :class:`AdminGate`: ``PRESENCE_ADMIN_TOKEN`` compared in constant time, a signed admin
  credential for the login cookie (never a user's identity), and failed logins limited
  per address;
- :class:`AdminService`: rooms with their members, observed as any watcher does
  (:meth:`RoomService.watch`: one subscription a room a process, never a poll per
  member) while an admin socket is open on this process; each process's snapshot (its
  sockets, its lease) on a :class:`Board`; the store's state, as ``/readyz`` says it;
  a bounded ring of recent events fed by the bus; webhook health and dead letters
  through :class:`WebhookStatus`; and a series of sockets and users online, a sample
  a minute for the last hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import RedisError

from . import events, keys
from ._shutdown import stop
from .auth import Identity
from .exceptions import (
    AdminDisabled,
    DeadLetterNotFound,
    RateLimited,
    StoreError,
    StoreUnavailable,
    Unauthorized,
    WebhooksNotConfigured,
)
from .limits import KeyedLimiter
from .models import JSON
from .webhooks import Webhooks, where

if TYPE_CHECKING:
    from .bus import EventBus
    from .registry import Registry
    from .rooms import RoomService
    from .settings import Settings
    from .stores import RedisStore, SessionStore

logger = logging.getLogger("presence.admin")

#: Seconds an admin login lasts (the cookie's Max-Age and the credential's expiry).
CREDENTIAL_TTL = 12 * 3600
#: Login attempts an address may make at once, then one every LOGIN_REFILL seconds.
LOGIN_BURST = 5
LOGIN_REFILL = 12.0
#: Seconds between two status pushes to admin sockets, and two process snapshots.
TICK = 2.0
#: Rooms observed at most by one process for its admins (the most populous first).
MAX_ROOMS = 30
#: Members of a room sent to an admin at most (the count is always the room's). With
#: each member's meta left out but for a short display name (~150 bytes a member), a
#: snapshot stays far below what a socket may hold unsent (PRESENCE_WS_MAX_UNSENT_BYTES).
MAX_MEMBERS = 100
#: The longest display name (a meta's ``name``) passed on.
MAX_NAME = 64
#: Recent events kept by each process.
MAX_EVENTS = 200
#: Dead letters shown at most.
MAX_DEAD_LETTERS = 50


# -- webhooks, as the admin page needs them -------------------------------------------


class WebhookStatus(Protocol):
    """What the admin page needs of webhook delivery."""

    async def health(self) -> dict[str, JSON]:
        """Whether delivery is configured and keeping up (receivers, lag, failures)."""

    async def dead_letters(self, limit: int) -> list[dict[str, JSON]]:
        """The newest dead letters (``id``, ``type``, ``error``, ...), at most ``limit``."""

    async def replay(self, letter_id: str) -> bool:
        """Sends a dead letter again; False when there is no such letter."""


class NoWebhooks:
    """Webhooks are not configured: the panel says so, and there is nothing to replay."""

    async def health(self) -> dict[str, JSON]:
        return {"configured": False, "message": "webhooks not configured"}

    async def dead_letters(self, limit: int) -> list[dict[str, JSON]]:
        return []

    async def replay(self, letter_id: str) -> bool:
        raise WebhooksNotConfigured("webhooks are not configured: nothing to replay")


class WebhookPanel:
    """Webhook delivery (:class:`presence.webhooks.Webhooks`) as the admin page shows it.

    A dead letter's id here is ``<n>/<entry id>``: the n-th URL's dead-letter stream and
    the entry in it (a URL itself may hold a secret, so it never leaves the process;
    each receiver is shown by its scheme, host and port).
    """

    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks

    async def health(self) -> dict[str, JSON]:
        try:
            state = await self.webhooks.state()
        except RedisError as error:
            raise StoreUnavailable(f"webhook state: Redis: {type(error).__name__}") from None
        receivers: list[JSON] = [
            {name: value for name, value in url.items() if name != "url"} for url in state
        ]
        return {"configured": True, "durable": self.webhooks.durable, "receivers": receivers}

    async def dead_letters(self, limit: int) -> list[dict[str, JSON]]:
        out: list[dict[str, JSON]] = []
        for n, url in enumerate(self.webhooks.urls):
            try:
                letters = await self.webhooks.dead_letters(url, count=limit)
            except RedisError as error:
                raise StoreUnavailable(f"dead letters: Redis: {type(error).__name__}") from None
            for letter in letters:
                out.append(
                    {
                        "id": f"{n}/{letter.id}",
                        "to": where(url),
                        "event": letter.event.get("id"),
                        "type": letter.event.get("type"),
                        "error": letter.error,
                        "attempts": letter.attempts,
                    }
                )
        return out[:limit]

    async def replay(self, letter_id: str) -> bool:
        n, _, entry = letter_id.partition("/")
        urls = self.webhooks.urls
        if not n.isdigit() or int(n) >= len(urls) or not entry:
            return False
        try:
            return await self.webhooks.replay(urls[int(n)], [entry]) > 0
        except RedisError as error:
            raise StoreUnavailable(f"replay: Redis: {type(error).__name__}") from None


# -- who may look ---------------------------------------------------------------------


class AdminGate:
    """``PRESENCE_ADMIN_TOKEN`` and the credential a login gives.

    The credential is ``v1.<expiry>.<HMAC-SHA256>`` under a key derived from the token,
    so it carries no secret, changing the token ends every login, and it is nothing a
    user's identity cookie could be mistaken for (or the reverse).
    """

    def __init__(self, token: str | None, clock: Callable[[], float] = time.time) -> None:
        self._token = None if token is None else token.encode()
        self._key = (
            None
            if self._token is None
            else hmac.new(self._token, b"presence admin credential v1", hashlib.sha256).digest()
        )
        self._clock = clock
        self._failures = KeyedLimiter(1 / LOGIN_REFILL, LOGIN_BURST, max_keys=4096)

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check_enabled(self) -> None:
        """Raises :class:`AdminDisabled` when no admin token is set."""
        if self._token is None:
            raise AdminDisabled("the admin page is off: PRESENCE_ADMIN_TOKEN is not set")

    def login(self, given: object, address: str) -> str:
        """A credential for the one who gave the right token.

        Raises:
            AdminDisabled: no admin token is set.
            RateLimited: this address tried too often (every attempt counts, so a
                guesser cannot go on at the rate of its guesses).
            Unauthorized: not the token.
        """
        self.check_enabled()
        wait = self._failures.allow(address, time.monotonic())
        if wait:
            raise RateLimited("too many admin login attempts; wait and try again", retry_after=wait)
        if not isinstance(given, str) or not self.is_token(given):
            raise Unauthorized("that is not the admin token")
        return self.mint()

    def is_token(self, given: str) -> bool:
        if self._token is None:
            return False
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._token)

    def mint(self) -> str:
        assert self._key is not None
        payload = f"v1.{int(self._clock()) + CREDENTIAL_TTL}"
        return f"{payload}.{hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()}"

    def is_credential(self, value: str | None) -> bool:
        if self._key is None or value is None:
            return False
        payload, _, signature = value.rpartition(".")
        version, _, expiry = payload.partition(".")
        expected = hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return False
        return version == "v1" and expiry.isdigit() and int(expiry) > self._clock()

    def authorize(self, bearer: str | None, credential: str | None) -> None:
        """Passes an admin: the token as a bearer, or a credential from a login.

        Raises:
            AdminDisabled: no admin token is set.
            Unauthorized: neither.
        """
        self.check_enabled()
        if bearer is not None and self.is_token(bearer):
            return
        if self.is_credential(credential):
            return
        raise Unauthorized("the admin token or an admin login is required")


# -- where processes say how they are -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessSnapshot:
    """One process as it said it was, at ``at`` (seconds)."""

    holder: str
    host: str
    pid: int
    started: float
    sockets: int
    sessions: int
    users: int
    at: float

    def to_json(self) -> dict[str, JSON]:
        return {
            "holder": self.holder,
            "host": self.host,
            "pid": self.pid,
            "started": _ms(self.started),
            "sockets": self.sockets,
            "sessions": self.sessions,
            "users": self.users,
            "at": _ms(self.at),
        }

    @classmethod
    def from_json(cls, raw: str | bytes) -> ProcessSnapshot:
        value = json.loads(raw)
        return cls(
            str(value["holder"]),
            str(value["host"]),
            int(value["pid"]),
            value["started"] / 1000,
            int(value["sockets"]),
            int(value["sessions"]),
            int(value["users"]),
            value["at"] / 1000,
        )


class Board(Protocol):
    """Where every process puts its snapshot and its minute's sample, and where the
    admin page reads them all."""

    async def publish(self, snapshot: ProcessSnapshot, previous: ProcessSnapshot | None) -> None:
        """Puts ``snapshot`` up, and it as the sample of its minute (``previous``: this
        process's last one, whose sample it replaces if of the same minute)."""

    async def processes(self, now: float) -> list[ProcessSnapshot]:
        """The processes that said how they are within :data:`keys.ADMIN_PROCESS_STALE`."""

    async def leases(self) -> dict[str, float]:
        """Each holder's last lease renewal (seconds); empty without leases."""

    async def series(self, now: float) -> list[tuple[int, int, int]]:
        """(minute in ms, sockets, users) for each minute of the last hour with samples,
        summed over the processes, oldest first."""


def _minute(seconds: float) -> int:
    return int(seconds // 60) * 60_000


def _sample(snapshot: ProcessSnapshot) -> str:
    # The member of the series zset: unique per process and minute, scored by the minute.
    return f"{_minute(snapshot.at)}|{snapshot.holder}|{snapshot.sockets}|{snapshot.users}"


class RedisBoard:
    """The board in Redis (keys in :mod:`presence.keys`, all under one tag)."""

    def __init__(self, redis: RedisStore) -> None:
        self.redis = redis
        self.prefix = redis.prefix

    async def publish(self, snapshot: ProcessSnapshot, previous: ProcessSnapshot | None) -> None:
        procs, seen, series = keys.admin_keys(self.prefix)
        now_ms = _ms(snapshot.at)
        pipe = self.redis.client.pipeline(transaction=False)
        pipe.hset(procs, snapshot.holder, json.dumps(snapshot.to_json()))
        pipe.zadd(seen, {snapshot.holder: now_ms})
        stale = now_ms - _ms(keys.ADMIN_PROCESS_STALE)
        pipe.zremrangebyscore(seen, "-inf", stale)
        if previous is not None and _minute(previous.at) == _minute(snapshot.at):
            pipe.zrem(series, _sample(previous))
        pipe.zadd(series, {_sample(snapshot): _minute(snapshot.at)})
        pipe.zremrangebyscore(series, "-inf", now_ms - _ms(keys.ADMIN_SERIES_SPAN))
        for key in (procs, seen):
            pipe.pexpire(key, _ms(keys.ADMIN_PROCESS_STALE) * 6)
        pipe.pexpire(series, _ms(keys.ADMIN_SERIES_SPAN) * 2)
        await self.redis.call(pipe.execute)

    async def processes(self, now: float) -> list[ProcessSnapshot]:
        procs, seen, _ = keys.admin_keys(self.prefix)
        client = self.redis.client
        fresh = await self.redis.call(
            client.zrangebyscore, seen, _ms(now - keys.ADMIN_PROCESS_STALE), "+inf"
        )
        if not fresh:
            return []
        raw = await self.redis.call(client.hmget, procs, fresh)
        found = []
        for value in raw:
            if value is None:
                continue
            try:
                found.append(ProcessSnapshot.from_json(value))
            except (ValueError, KeyError, TypeError):
                logger.warning("ignored a malformed process snapshot")
        # The gone ones' snapshots go: a process that died leaves no field behind for long.
        every = await self.redis.call(client.hkeys, procs)
        gone = [h for h in every if h not in set(fresh)]
        if gone:
            await self.redis.call(client.hdel, procs, *gone)
        return sorted(found, key=lambda p: (p.host, p.started, p.holder))

    async def leases(self) -> dict[str, float]:
        renewed = keys.lease_keys(self.prefix)[1]
        raw = await self.redis.call(self.redis.client.hgetall, renewed)
        return {str(holder): int(ms) / 1000 for holder, ms in raw.items()}

    async def series(self, now: float) -> list[tuple[int, int, int]]:
        _, _, series = keys.admin_keys(self.prefix)
        since = _minute(now) - _ms(keys.ADMIN_SERIES_SPAN) + 60_000
        members = await self.redis.call(self.redis.client.zrangebyscore, series, since, "+inf")
        return _summed(members)


class MemoryBoard:
    """The board of a process alone (the memory store): its own snapshot and samples."""

    def __init__(self) -> None:
        self._snapshot: ProcessSnapshot | None = None
        self._samples: deque[str] = deque(maxlen=int(keys.ADMIN_SERIES_SPAN // 60) + 1)

    async def publish(self, snapshot: ProcessSnapshot, previous: ProcessSnapshot | None) -> None:
        self._snapshot = snapshot
        if self._samples and self._samples[-1].split("|", 1)[0] == str(_minute(snapshot.at)):
            self._samples.pop()
        self._samples.append(_sample(snapshot))

    async def processes(self, now: float) -> list[ProcessSnapshot]:
        return [] if self._snapshot is None else [self._snapshot]

    async def leases(self) -> dict[str, float]:
        return {}

    async def series(self, now: float) -> list[tuple[int, int, int]]:
        since = _minute(now) - _ms(keys.ADMIN_SERIES_SPAN) + 60_000
        return _summed([s for s in self._samples if int(s.split("|", 1)[0]) >= since])


def _summed(members: list[str]) -> list[tuple[int, int, int]]:
    totals: dict[int, list[int]] = {}
    for member in members:
        try:
            minute, _, sockets, users = str(member).split("|")
            total = totals.setdefault(int(minute), [0, 0])
            total[0] += int(sockets)
            total[1] += int(users)
        except ValueError:
            continue
    return [(minute, s, u) for minute, (s, u) in sorted(totals.items())]


# -- the admin's view of rooms ----------------------------------------------------------


class AdminClient(Protocol):
    """An admin socket, as the service sends to it."""

    async def offer(self, text: str) -> bool:
        """Sends ``text`` if the socket takes it at once; False when it did not."""

    async def send(self, text: str) -> None:
        """Sends ``text``, waiting if need be."""


@dataclass
class _Room:
    count: int = 0
    seq: int = -1
    members: dict[str, dict[str, JSON]] = field(default_factory=dict)

    def to_json(self, room: str) -> dict[str, JSON]:
        shown = sorted(self.members.values(), key=lambda m: str(m["user"]))[:MAX_MEMBERS]
        return {
            "room": room,
            "count": self.count,
            "seq": self.seq,
            "members": [_shown(member) for member in shown],
        }


def _shown(member: dict[str, JSON]) -> JSON:
    """A member as an admin sees it: its meta (up to PRESENCE_MAX_META_BYTES, the
    client's) left out but for a short display name."""
    out: dict[str, JSON] = {k: member.get(k) for k in ("user", "status", "sessions", "since")}
    meta = member.get("meta")
    name = meta.get("name") if isinstance(meta, dict) else None
    if isinstance(name, str) and name:
        out["name"] = name[:MAX_NAME]
    return out


class _Observer:
    """The watcher the room service fans each observed room's diffs out to (one per
    process, while admins are here): it keeps the rooms' members, records what happened
    and passes it on to the admin sockets."""

    user = "~admin"
    session_id = "~admin"

    def __init__(self, service: AdminService) -> None:
        self.service = service
        self.watching: dict[str, int | None] = {}

    async def offer(self, text: str) -> bool:
        self.service._heard(text)
        return True

    async def send(self, text: str) -> None:
        self.service._heard(text)


_EVERY_ROOM = Identity("~admin", "bearer", None)


class AdminService:
    """What the admin page shows, live.

    Args:
        settings: the admin token and limits.
        rooms: the room service, whose watcher the admin view is.
        registry: this process's sockets.
        store: the session store (its state, as ``/readyz`` says it).
        bus: where sessions' ends are heard.
        board: where every process says how it is.
        webhooks: webhook health and dead letters.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        rooms: RoomService,
        registry: Registry,
        store: SessionStore,
        bus: EventBus,
        board: Board,
        webhooks: WebhookStatus | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.rooms = rooms
        self.registry = registry
        self.store = store
        self.bus = bus
        self.board = board
        self.webhooks: WebhookStatus = webhooks if webhooks is not None else NoWebhooks()
        self.clock = clock
        self.started = clock()
        self.host = socket.gethostname()
        self.events: deque[dict[str, JSON]] = deque(maxlen=MAX_EVENTS)
        self.clients: dict[AdminClient, bool] = {}  # client -> behind (missed a message)
        self._observer = _Observer(self)
        self._observed: dict[str, _Room] = {}
        self._last: ProcessSnapshot | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(StoreError):
            await self.bus.listen(keys.ended_channel(self.settings.key_prefix), self._ended)
        with contextlib.suppress(StoreError):
            await self._publish()
        self._task = asyncio.create_task(self._loop(), name="presence-admin")

    async def stop(self) -> None:
        # Within a bound, cancelled again if a cancellation is lost (presence._shutdown).
        bound = 4 * self.settings.redis_timeout
        await stop(self._task, bound)
        self._task = None
        for task in list(self._tasks):
            await stop(task, bound)
        await self._unobserve_all()

    # -- admins -------------------------------------------------------------------------

    async def attach(self, client: AdminClient) -> None:
        """An admin socket opened: it is sent a snapshot, then every change."""
        first = not self.clients
        self.clients[client] = False
        if first:
            with contextlib.suppress(StoreError):  # the next tick tries again
                await self._observe()
        await client.send(await self.snapshot())

    async def detach(self, client: AdminClient) -> None:
        self.clients.pop(client, None)
        if not self.clients:
            await self._unobserve_all()

    async def snapshot(self) -> str:
        return _encode(
            {
                "type": "admin.snapshot",
                "rooms": [room.to_json(name) for name, room in sorted(self._observed.items())],
                "events": list(self.events),
                "status": await self.status(),
            }
        )

    async def status(self) -> dict[str, JSON]:
        """The processes, the store, webhooks and the series, as of now."""
        now = self.clock()
        store: dict[str, JSON] = dict(await self.store.status())
        store["status"] = "degraded" if store.get("degraded") else "ready"
        processes: list[ProcessSnapshot] = [self._snapshot_now(now)]
        leases: dict[str, float] = {}
        series: list[tuple[int, int, int]] = []
        if not self._degraded():
            try:
                processes = await self.board.processes(now)
                leases = await self.board.leases()
                series = await self.board.series(now)
            except StoreError as error:
                # Redis is away or refuses: this process alone, as it knows itself.
                logger.warning("admin status: %s", error.message)
                processes = [self._snapshot_now(now)]
        procs: list[JSON] = []
        for proc in processes:
            value = proc.to_json()
            renewed = leases.get(proc.holder)
            value["lease_age"] = None if renewed is None else round(max(0.0, now - renewed), 3)
            value["self"] = proc.holder == self.rooms.holder
            procs.append(value)
        try:
            health = await self.webhooks.health()
            letters = await self.webhooks.dead_letters(MAX_DEAD_LETTERS)
        except StoreError as error:
            health, letters = {"configured": True, "error": error.message}, []
        return {
            "at": _ms(now),
            "process": self.rooms.holder,
            "processes": procs,
            "store": store,
            "webhooks": {"health": health, "dead_letters": list(letters)},
            "series": [{"minute": m, "sockets": s, "users": u} for m, s, u in series],
        }

    async def replay(self, letter_id: str) -> str:
        """Sends a dead letter again; its answer for the admin socket.

        Raises:
            WebhooksNotConfigured: there is no webhook delivery.
            DeadLetterNotFound: no such letter (replayed already, or never).
        """
        if not await self.webhooks.replay(letter_id):
            raise DeadLetterNotFound(f"no dead letter {letter_id!r}")
        self._record({"kind": "webhook.replayed", "id": letter_id})
        return _encode({"type": "admin.replayed", "id": letter_id})

    # -- internals ----------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                if not self._degraded():
                    with contextlib.suppress(StoreError):
                        await self._publish()
                if self.clients:
                    with contextlib.suppress(StoreError):
                        await self._observe()
                    text = _encode({"type": "admin.status", "status": await self.status()})
                    for client, behind in list(self.clients.items()):
                        if behind:
                            self.clients[client] = False
                            self._spawn(client.send(await self.snapshot()))
                        elif not await client.offer(text):
                            self.clients[client] = True
            except StoreError as error:
                logger.warning("admin tick: %s", error.message)
            except Exception:
                logger.exception("admin tick failed")

    def _degraded(self) -> bool:
        # While the session store serves from memory (Redis away), the board is not
        # asked: each call would wait out its bound for nothing.
        return bool(getattr(self.store, "degraded", False))

    def _snapshot_now(self, now: float) -> ProcessSnapshot:
        registry = self.registry
        return ProcessSnapshot(
            holder=self.rooms.holder,
            host=self.host,
            pid=os.getpid(),
            started=self.started,
            sockets=registry.sockets,
            sessions=len(registry),
            users=registry.users,
            at=now,
        )

    async def _publish(self) -> None:
        snapshot = self._snapshot_now(self.clock())
        await self.board.publish(snapshot, self._last)
        self._last = snapshot

    async def _observe(self) -> None:
        """Watches the most populous rooms not yet watched (up to :data:`MAX_ROOMS`)."""
        found = await self.rooms.list_rooms(_EVERY_ROOM, MAX_ROOMS)
        for room, count in found:
            if len(self._observed) >= MAX_ROOMS:
                break
            if room not in self._observed:
                self._observed[room] = _Room(count=count)
                await self.rooms.watch(self._observer, room)

    async def _unobserve_all(self) -> None:
        for room in list(self._observed):
            await self.rooms.unwatch(self._observer, room)
        self._observed.clear()

    def _heard(self, text: str) -> None:
        message = json.loads(text)
        room_name = str(message["room"])
        room = self._observed.get(room_name)
        if room is None:
            return
        if message["type"] == "presence.sync":
            room.members = {str(m["user"]): m for m in message["members"]}
        else:
            # The members held here may come from a sync read inside a diff's window,
            # which shows what that window did already: its join of a member held here
            # is an update (or nothing), its leave of one never held (who came and went
            # inside the window) no event.
            at = _ms(self.clock())
            told = [(m, True) for m in message["joins"]] + [(m, False) for m in message["updates"]]
            for member, joined in told:
                before = room.members.get(str(member["user"]))
                room.members[str(member["user"])] = member
                if joined and before is None:
                    self._record(
                        {
                            "kind": "member.joined",
                            "room": room_name,
                            "user": member["user"],
                            "at": at,
                        }
                    )
                elif before is None or before.get("status") != member["status"]:
                    self._record(
                        {
                            "kind": "member.status",
                            "room": room_name,
                            "user": member["user"],
                            "status": member["status"],
                            "at": at,
                        }
                    )
            for leave in message["leaves"]:
                if room.members.pop(str(leave["user"]), None) is None:
                    continue
                self._record(
                    {
                        "kind": "member.left",
                        "room": room_name,
                        "user": leave["user"],
                        "reason": leave["reason"],
                        "at": at,
                    }
                )
        room.count = int(message["count"])
        room.seq = int(message["seq"])
        self._broadcast(_encode({"type": "admin.room", **room.to_json(room_name)}))
        if room.count == 0:
            # Emptied: let it go (the next list finds it again if it fills).
            del self._observed[room_name]
            self._spawn(self.rooms.unwatch(self._observer, room_name))

    async def _ended(self, data: str) -> None:
        try:
            ended = events.decode_ended(data)
        except ValueError:
            return
        if ended.user:  # An empty user is some process's start-up self-check.
            self._record({"kind": "session.ended", "user": ended.user, "reason": ended.reason})

    def _record(self, event: dict[str, JSON]) -> None:
        event.setdefault("at", _ms(self.clock()))
        self.events.append(event)
        self._broadcast(_encode({"type": "admin.event", "event": event}))

    def _broadcast(self, text: str) -> None:
        # One task a message, for every client: tasks run in the order made, so each
        # client is offered the messages in order.
        self._spawn(self._offer_all(text))

    async def _offer_all(self, text: str) -> None:
        for client in list(self.clients):
            if not await client.offer(text):
                self.clients[client] = True  # sent a full snapshot on the next tick

    def _spawn(self, coroutine: Coroutine[Any, Any, Any] | Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _encode(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
