"""Sessions in Redis: a user's first session in a key of the user's (the lone slot),
any others in a string key each, indexed by a sorted set per user by last_seen; each key
carries its session's TTL. See :mod:`presence.keys` for the layout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import keys, metrics
from .._shutdown import settle
from ..exceptions import (
    ConfigError,
    PresenceError,
    StoreMisconfigured,
    StoreUnavailable,
    TooManySessions,
)
from ..sessions import JSON, Session, State, Transport
from . import _scripts
from ._batch import Coalescer
from ._deadline import within
from ._packing import packing_with_hiredis
from ._refusal import answered, diagnose, refusal, where
from .base import UNSET, SessionRef

logger = logging.getLogger("presence.store")

_T = TypeVar("_T")
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

_TRANSPORT_LETTER = {"websocket": "w", "http": "h", "none": "n"}
_STATE_LETTER = {"active": "a", "away": "y", "disconnected": "d"}
_TRANSPORT_OF: dict[str, Transport] = {"w": "websocket", "h": "http", "n": "none"}
_STATE_OF: dict[str, State] = {"a": "active", "y": "away", "d": "disconnected"}

# Connections per process: enough for bursts of concurrent requests, each call holding
# one for a single round trip.
_POOL_SIZE = 256

try:  # redis-py >= 7 reads its package metadata for every new connection unless given it
    from redis.driver_info import DriverInfo

    #: One DriverInfo for every connection: without it redis-py calls
    #: importlib.metadata for each connection it makes, 22 % of a process's samples at
    #: the start of a burst in the fan-out benchmark (bench/analysis.md).
    DRIVER: dict[str, Any] = {"driver_info": DriverInfo()}
except ImportError:  # pragma: no cover - older redis-py reads it once, as a default
    DRIVER = {}

# Most heartbeats sent in one TOUCH: about a millisecond of Redis's time, which no
# other client waits longer than.
_TOUCH_BATCH = 128

# A heartbeat as the TOUCH script takes it: its three keys and its three arguments.
_Touch = tuple[list[str], list[Any]]
# One call of a script: its keys and its arguments.
_Call = tuple[list[str], list[Any]]

#: Most entries of an outage's journal written back in one round trip (a TOUCH of that
#: many heartbeats, or a DELETE_MANY or RESTORE_MANY of that many calls): about a
#: millisecond of Redis's time, as for the heartbeats of one pass of the loop.
WRITE_BACK_BATCH = _TOUCH_BATCH

# Errors that mean "Redis did not answer this call", as opposed to a bug. They include a
# pool with no free connection and a call that outlived its bound: on their own they do
# not say that Redis is away (FallbackStore asks probe() for that). (OSError covers the
# builtin ConnectionError and TimeoutError that asyncio raises.)
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

# A refusal (see _refusal) is logged at most this often, in seconds, for each cause.
_REFUSAL_LOG_INTERVAL = 60.0

# What the start-up self-check publishes on the ended channel: no session's end, and
# ignored by every listener (see presence.events.decode_ended).
_SELFCHECK_MESSAGE = json.dumps({"u": "", "s": "", "r": "selfcheck"})


class RedisStore:
    """Sessions in Redis.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        ttl: sliding TTL in seconds.
        max_lifetime: absolute lifetime in seconds; 0 for none.
        max_sessions_per_user: cap per user. At the cap, a new session replaces the
            user's least recently seen session that no socket holds open; only when every
            one is held open is it refused.
        held_open_window: seconds within which a session with transport websocket must
            have been seen to count as held open by a socket: a few refresh intervals,
            since the refresher of the process holding the socket renews it each one.
        prefix: key prefix (see :mod:`presence.keys`).
        timeout: connect and socket timeout in seconds; kept well under a second so a
            stalled Redis turns into a fallback rather than a hung request.
        client: an already built client to use instead of one from ``url`` (tests use
            fakeredis this way).
        cluster: ``url`` names a node of a Redis Cluster. Every script touches one
            user's keys, which share a hash tag and so a slot; only the refresher spans
            users, and on a cluster it sends one script call per slot, concurrently.
    """

    name = "redis"

    def __init__(
        self,
        url: str | None = None,
        *,
        ttl: float,
        max_lifetime: float = 0.0,
        max_sessions_per_user: int = 50,
        held_open_window: float = 90.0,
        prefix: str = "presence",
        timeout: float = 0.25,
        client: aioredis.Redis | None = None,
        cluster: bool = False,
    ) -> None:
        if client is None and url is None:
            raise ValueError("RedisStore needs a url or a client")
        self.url = url
        self.ttl_ms = max(1, round(ttl * 1000))
        self.max_lifetime_ms = round(max_lifetime * 1000)
        self.max_sessions_per_user = max_sessions_per_user
        self.held_open_window_ms = max(1, round(held_open_window * 1000))
        self.prefix = prefix
        self.timeout = timeout
        self.channel = keys.ended_channel(prefix)
        #: The ended channel as the scripts take it: the channel, then the webhook
        #: streams each end is added to as a ``session.ended`` event, one a line (see
        #: :meth:`add_webhook_streams`).
        self.script_channel = self.channel
        self.cluster = cluster
        self._client: aioredis.Redis | RedisCluster | None = client
        self._owns_client = client is None
        self._scripts: dict[str, AsyncScript] = {}
        # A connection of its own, outside the pool, for probe().
        self._probe_client: aioredis.Redis | None = None
        # Heartbeats made in the same pass of the event loop share one round trip.
        self._touches: Coalescer[_Touch, Any] = Coalescer(
            self._send_touches, max_batch=_TOUCH_BATCH
        )
        # Why Redis refused the latest call it refused, until a self-check passes.
        self._refused: str | None = None
        # When each cause of refusal was last logged (time.monotonic()).
        self._refusals_logged: dict[str, float] = {}
        self._outbox_added: Callable[[str], None] | None = None

    def add_webhook_streams(self, streams: Sequence[str]) -> None:
        """Every session's end is added, as a ``session.ended`` event, to ``streams``
        too, by the script that ends it (see :mod:`presence.webhooks`)."""
        self.script_channel = "\n".join([self.channel, *streams])

    def add_webhook_outboxes(self, added: Callable[[str], None]) -> None:
        """On a cluster: every session's end is added, as a ``session.ended`` event, to
        its user's outbox (:func:`presence.keys.user_outbox`, in the script's slot),
        and ``added`` is told of the outbox after a create or a delete (an end in a
        heartbeat or a refresh waits for the sweep; see :mod:`presence.webhooks`)."""
        self.script_channel = self.channel + "\n@outbox"
        self._outbox_added = added

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("RedisStore.open() has not been called")
        return self._client

    async def open(self) -> None:
        if self._client is None:
            if self.url is None:  # pragma: no cover - the constructor refuses this
                raise ValueError("RedisStore needs a url or a client")
            if self.cluster:
                self._client = RedisCluster.from_url(
                    self.url,
                    decode_responses=True,
                    socket_connect_timeout=self.backstop,
                    socket_timeout=self.backstop,
                    **DRIVER,
                )
            else:
                # A blocking pool: past its size a call waits for a free connection
                # (within the call's bound) instead of failing at once. redis-py's
                # default pool raises MaxConnectionsError at 100 calls in flight, which
                # the fallback would take for an outage under a burst of requests.
                pool = aioredis.BlockingConnectionPool.from_url(
                    self.url,
                    max_connections=_POOL_SIZE,
                    timeout=self.backstop,
                    decode_responses=True,
                    socket_connect_timeout=self.backstop,
                    socket_timeout=self.backstop,
                    # Only a dropped connection is retried: Retry's defaults include
                    # timeouts, which would double the wait on a stalled Redis.
                    retry=Retry(
                        ExponentialBackoff(cap=0.05, base=0.01),
                        retries=1,
                        supported_errors=(RedisConnectionError,),
                    ),
                    retry_on_error=[RedisConnectionError],
                    health_check_interval=30,
                    **DRIVER,
                )
                self._client = aioredis.Redis.from_pool(packing_with_hiredis(pool))
                self._probe_client = aioredis.Redis.from_url(
                    self.url,
                    decode_responses=True,
                    single_connection_client=True,
                    socket_connect_timeout=self.backstop,
                    socket_timeout=self.backstop,
                    **DRIVER,
                )
        for name in (
            "CREATE",
            "GET",
            "LIST",
            "TOUCH",
            "REFRESH",
            "DELETE",
            "RESTORE",
            "SELFCHECK",
        ):
            self._scripts[name] = self.client.register_script(getattr(_scripts, name))
        try:
            await self._check_at_start_up()
        except ConfigError:
            await self.close()
            raise

    async def _check_at_start_up(self) -> None:
        """Raises :class:`ConfigError` naming ``REDIS_URL`` when Redis answers but refuses
        what the service needs: the password, a command, key or channel (a self-check
        runs every command the scripts run, SUBSCRIBE and PING), TLS. Returns quietly when
        Redis does not answer: the fallback serves meanwhile, and redis-py loads the
        scripts on first use.

        Loads the scripts, so that each operation is one EVALSHA from the first call
        (otherwise the first is EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA), and connects
        the probe's connection, so that a probe is one PING, not a handshake too.
        """
        step = self.timeout * 4
        try:
            async with asyncio.timeout(step):
                await self.client.ping()
        except UNAVAILABLE_ERRORS as exc:
            why = refusal(exc)
            if why is None and self.url is not None:
                why = await diagnose(self.url, exc, step)
            if why is not None:
                raise self._start_up_error(why) from exc
            return
        except (RedisError, RedisClusterException) as exc:
            why = refusal(exc)
            if why is None and isinstance(exc, RedisClusterException):
                if "Cluster mode is not enabled" not in str(exc):
                    raise  # no node answered: as before, start-up fails
            raise self._start_up_error(why or answered(exc)) from exc
        try:
            async with asyncio.timeout(step):
                await self._load_scripts()
            async with asyncio.timeout(step):
                failures = await self._scripts["SELFCHECK"](
                    keys=keys.selfcheck_keys(self.prefix), args=self._selfcheck_args()
                )
            if failures:
                raise self._start_up_error(_missing(failures))
            async with asyncio.timeout(step):
                await self._check_subscribe()
            if self._probe_client is not None:
                async with asyncio.timeout(step):
                    await self._probe_client.ping()
        except UNAVAILABLE_ERRORS as exc:
            why = refusal(exc)
            if why is not None:
                raise self._start_up_error(why) from exc
        except (RedisError, RedisClusterException) as exc:
            raise self._start_up_error(refusal(exc) or answered(exc)) from exc

    async def _load_scripts(self) -> None:
        if self.cluster:
            # SCRIPT LOAD goes to every primary; a cluster pipeline cannot carry it.
            for script in self._scripts.values():
                await self.client.script_load(script.script)
        else:
            async with self.client.pipeline(transaction=False) as pipe:
                for script in self._scripts.values():
                    pipe.script_load(script.script)
                await pipe.execute()

    async def _check_subscribe(self) -> None:
        """Subscribes to the ended channel and waits for Redis to confirm (an ACL
        without the channel refuses it)."""
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while True:
                message = await pubsub.get_message(timeout=self.timeout)
                if message is not None and message["type"] == "subscribe":
                    return
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _selfcheck_args(self) -> list[str]:
        return [
            self.channel,
            _SELFCHECK_MESSAGE,
            keys.selfcheck_channel(self.prefix),
            "SPUBLISH" if self.cluster else "PUBLISH",
        ]

    def _start_up_error(self, why: str) -> ConfigError:
        return ConfigError("REDIS_URL", f"{why} (Redis at {self._where})")

    @property
    def _where(self) -> str:
        return where(self.url) if self.url is not None else "the client given"

    async def close(self) -> None:
        """Closes the connections. Returns within a few call bounds, whatever Redis
        does: heartbeats still in flight and connections that have not finished by then
        are abandoned, with a warning. (The pub/sub connection is the bus's, closed by
        the bus, within a bound too.)"""
        if not await settle(self._touches.drain(), self.bound * 2):
            logger.warning("heartbeats in flight to Redis did not finish at close; abandoned")
        if self._client is not None and self._owns_client:
            if not await settle(self._client.aclose(), self.bound):
                logger.warning("Redis connections did not close in time; abandoned")
            self._client = None
        if self._probe_client is not None:
            await settle(self._probe_client.aclose(), self.bound)
            self._probe_client = None

    async def ping(self) -> None:
        """Raises :class:`StoreUnavailable` unless Redis answers."""
        await self._call(self.client.ping)

    @property
    def bound(self) -> float:
        """Seconds a call may take, from asking for a pooled connection to the reply.

        Twice the timeout: a stall of this process's event loop cannot make a call
        outlive it when Redis answered in time (see :mod:`presence.stores._deadline`),
        so it need only cover Redis's own time and a wait for a pooled connection.
        """
        return self.timeout * 2

    @property
    def probe_bound(self) -> float:
        """Seconds :meth:`probe` waits for an answer."""
        return self.timeout * 2

    @property
    def backstop(self) -> float:
        """redis-py's own timeouts (connect, read, wait for a pooled connection), far
        above every bound here. Their timers take a reply or a connection that came
        during a stall of the event loop for a timeout, which :func:`within` does not
        (a reconnect storm showed collections of ~0.9 s failing connects and reads);
        every call is under a bound, so these only catch what no bound covers.
        """
        return self.bound * 10

    async def probe(self) -> None:
        """Raises :class:`StoreUnavailable` unless Redis answers a PING on a connection
        of its own, outside the pool, within :attr:`probe_bound` (counted as
        :func:`within` counts).

        This tells "Redis is away" from "this process is busy": a call that failed
        because every pooled connection was taken, or because this process's event loop
        stalled past the call's bound, is followed by a probe that Redis answers.

        Raises :class:`StoreMisconfigured` instead when Redis answers but refuses (a
        password changed meanwhile): that is no outage either.
        """
        client = self._probe_client if self._probe_client is not None else self.client
        try:
            async with within(self.probe_bound):
                await client.ping()
        except UNAVAILABLE_ERRORS as exc:
            raise self._failure(exc) from exc

    async def on_ended(self, user: str, session_id: str, reason: str) -> None:
        pass  # Redis is where it ended.

    async def status(self) -> dict[str, JSON]:
        try:
            await self.ping()
        except StoreUnavailable:
            return {"store": self.name, "degraded": True}
        except StoreMisconfigured:
            pass
        error = await self.refused()
        if error is None:
            return {"store": self.name, "degraded": False}
        return {"store": self.name, "degraded": True, "error": error}

    @property
    def refusal(self) -> str | None:
        """Why Redis refused the latest call it refused, until :meth:`refused` finds
        the configuration put right."""
        return self._refused

    async def refused(self) -> str | None:
        """Why Redis refuses this service, if it refused a call since the last check
        that passed: checked again now (the start-up self-check, one EVALSHA), so that
        a configuration put right is seen at once. None when all is well."""
        if self._refused is None:
            return None
        with contextlib.suppress(StoreMisconfigured, StoreUnavailable):
            failures = await self._run(
                "SELFCHECK", keys.selfcheck_keys(self.prefix), self._selfcheck_args()
            )
            if failures:
                self._misconfigured(_missing(failures))
            else:
                self._refused = None
        return self._refused

    async def create(self, user: str, session_id: str, *, data: JSON = None) -> Session:
        _check_id(session_id)
        encoded = "" if data is None else _dump(data)
        result = await self._run(
            "CREATE",
            self._keys(user, session_id),
            [
                self.ttl_ms,
                self.max_sessions_per_user,
                session_id,
                "na|" + encoded,
                self.max_lifetime_ms,
                self.held_open_window_ms,
                self.script_channel,
                user,
            ],
        )
        code = int(result[0])
        if self._outbox_added is not None:
            self._outbox_added(keys.user_outbox(self.prefix, user))  # a replaced one
        if code == -1:
            raise TooManySessions(
                f"a user may hold at most {self.max_sessions_per_user} sessions, and each "
                "of this user's is open in a socket; close one first"
            )
        if code == -2:  # pragma: no cover - 128 random bits do not collide
            raise RuntimeError("session id collision")
        now = code / 1000
        return Session(
            id=session_id,
            user=user,
            created_at=now,
            last_seen=now,
            expires_at=now + int(result[1]) / 1000,
            data=data,
        )

    async def get(self, user: str, session_id: str) -> Session | None:
        result = await self._run("GET", self._keys(user, session_id), [session_id])
        if not result:
            return None
        return _session(user, session_id, *result)

    async def list_sessions(self, user: str) -> list[Session]:
        now, *flat = await self._run(
            "LIST", [self._lone(user), self._idx(user)], [self.ttl_ms, self._key(user, "")]
        )
        return [
            _session(user, flat[i], flat[i + 1], flat[i + 2], flat[i + 3], now)
            for i in range(0, len(flat), 4)
        ]

    async def touch(
        self,
        user: str,
        session_id: str,
        *,
        transport: Transport | None = None,
        state: State | None = None,
        data: JSON = UNSET,
        at: float | None = None,
        unseen_for: float | None = None,
    ) -> Session | None:
        result = await self._touches.submit(
            self._touch_call(user, session_id, transport, state, data, at, unseen_for)
        )
        if not result:
            return None
        return _session(user, session_id, *result)

    def _touch_call(
        self,
        user: str,
        session_id: str,
        transport: Transport | None,
        state: State | None,
        data: JSON,
        at: float | None,
        unseen_for: float | None = None,
    ) -> _Touch:
        head = "|".join(
            (
                session_id,
                _TRANSPORT_LETTER[transport] if transport else "",
                _STATE_LETTER[state] if state else "",
                "0" if data is UNSET else "1",
                "0" if at is None else str(round(at * 1000)),
                "" if unseen_for is None else str(max(0, round(unseen_for * 1000))),
            )
        )
        return (
            self._keys(user, session_id),
            [head, user, "" if data is UNSET or data is None else _dump(data)],
        )

    async def delete(self, user: str, session_ids: Sequence[str], reason: str) -> list[str]:
        if not session_ids:
            return []
        return await self._delete(user, "ids", reason, 0, list(dict.fromkeys(session_ids)))

    async def delete_all(self, user: str, reason: str) -> list[str]:
        return await self._delete(user, "all", reason, 0, [])

    async def delete_inactive(self, user: str, inactive_for: float, reason: str) -> list[str]:
        # The cutoff travels as an age so that Redis's clock decides, not ours.
        return await self._delete(user, "inactive", reason, round(inactive_for * 1000), [])

    async def delete_seen_before(self, user: str, cutoff: float, reason: str) -> list[str]:
        return await self._delete(user, "before", reason, round(cutoff * 1000), [])

    async def refresh(self, refs: Sequence[SessionRef]) -> list[SessionRef]:
        if not refs:
            return []
        if self.cluster:
            by_slot: dict[int, list[SessionRef]] = {}
            for ref in refs:
                slot = self.client.keyslot(self._idx(ref[0]))
                by_slot.setdefault(slot, []).append(ref)
            if len(by_slot) > 1:
                parts = await asyncio.gather(*(self._refresh(g) for g in by_slot.values()))
                return [ref for part in parts for ref in part]
        return await self._refresh(refs)

    async def _refresh(self, refs: Sequence[SessionRef]) -> list[SessionRef]:
        # Grouped by user, so that each user's lone slot is named and read once.
        by_user: dict[str, list[str]] = {}
        for user, sid in refs:
            by_user.setdefault(user, []).append(sid)
        script_keys: list[str] = []
        args: list[Any] = [
            self.ttl_ms,
            "1" if self.max_lifetime_ms > 0 else "0",
            self.script_channel,
        ]
        ordered: list[SessionRef] = []
        for user, sids in by_user.items():
            script_keys += [self._lone(user), self._idx(user)]
            script_keys += [self._key(user, sid) for sid in sids]
            args += [user, len(sids), *sids]
            ordered += [(user, sid) for sid in sids]
        missing = await self._run("REFRESH", script_keys, args)
        return [ordered[int(i) - 1] for i in missing]

    async def _send_touches(self, touches: list[_Touch]) -> list[Any]:
        """The heartbeats of one pass of the loop in one TOUCH (on a cluster, one a
        slot, concurrently); their results in the order given."""
        if self.cluster and len(touches) > 1:
            return await self._per_slot(touches, self._touch_here)
        return await self._touch_here(touches)

    async def _touch_here(self, touches: list[_Touch]) -> list[Any]:
        script_keys = [key for keys_, _ in touches for key in keys_]
        args: list[Any] = [self.ttl_ms, self.script_channel]
        for _, args_ in touches:
            args += args_
        return list(await self._run("TOUCH", script_keys, args))

    async def _per_slot(
        self,
        calls: list[_Call],
        send: Callable[[list[_Call]], Awaitable[list[_Result]]],
    ) -> list[_Result]:
        """On a cluster: ``send`` once for the calls of each slot (a call's keys are one
        user's, the index second), the slots concurrently; the results in the order
        given."""
        by_slot: dict[int, list[int]] = {}
        for i, (script_keys, _) in enumerate(calls):
            by_slot.setdefault(self.client.keyslot(script_keys[1]), []).append(i)
        if len(by_slot) == 1:
            return await send(calls)
        groups = list(by_slot.values())
        parts = await asyncio.gather(*(send([calls[i] for i in group]) for group in groups))
        results: list[Any] = [None] * len(calls)
        for group, part in zip(groups, parts, strict=True):
            for i, result in zip(group, part, strict=True):
                results[i] = result
        return results

    async def restore(self, session: Session, deadline: float | None) -> bool:
        """Writes back a session created elsewhere (the fallback), as it is now, within
        the per-user cap as :meth:`create` keeps it.

        Returns False when it has expired meanwhile, or when it lost its place at the
        cap (it was the least recently seen of the user's sessions that no socket holds
        open; announced ``replaced``); it is then not written.
        """
        written = await self._run("RESTORE", *self._restore_call(session, deadline))
        return bool(written)

    def _restore_call(self, session: Session, deadline: float | None) -> _Call:
        """RESTORE's keys and arguments for one session (alone or in RESTORE_MANY)."""
        _check_id(session.id)
        value = "|".join(
            [
                str(round(session.created_at * 1000)),
                "" if deadline is None else str(round(deadline * 1000)),
                _TRANSPORT_LETTER[session.transport] + _STATE_LETTER[session.state],
                "" if session.data is None else _dump(session.data),
            ]
        )
        return self._keys(session.user, session.id), [
            value,
            round(session.last_seen * 1000),
            self.ttl_ms,
            session.id,
            "" if deadline is None else round(deadline * 1000),
            self.max_sessions_per_user,
            self.held_open_window_ms,
            self.script_channel,
            session.user,
        ]

    # --- The write-back after an outage: many entries a round trip ----------------------

    async def replay_touches(self, sessions: Sequence[Session]) -> list[Session | None]:
        """Writes back heartbeats made elsewhere (the fallback during an outage): each
        session's transport, state and data as given, seen at its ``last_seen``. As
        :meth:`touch`, never recreates a session and never moves one back.

        Returns what Redis then holds of each, or None for a session it no longer has.
        One TOUCH per :data:`WRITE_BACK_BATCH` sessions (on a cluster, one a slot).
        """
        touches = [
            self._touch_call(s.user, s.id, s.transport, s.state, s.data, s.last_seen)
            for s in sessions
        ]
        results: list[Any] = []
        for chunk in _chunks(touches):
            results += await self._send_touches(chunk)
        return [
            _session(s.user, s.id, *result) if result else None
            for s, result in zip(sessions, results, strict=True)
        ]

    async def delete_many(self, deletions: Sequence[tuple[str, Sequence[str], str]]) -> None:
        """Deletes, for each ``(user, session ids, reason)``, those sessions, in few
        round trips (see :meth:`restore_many`); each end is published as by
        :meth:`delete`."""
        await self._run_many(
            "DELETE_MANY",
            [
                self._delete_call(user, "ids", reason, 0, list(dict.fromkeys(ids)))
                for user, ids, reason in deletions
                if ids
            ],
        )

    async def delete_seen_before_many(self, cleanups: Sequence[tuple[str, float, str]]) -> None:
        """:meth:`delete_seen_before` for each ``(user, cutoff, reason)``, in few round
        trips (see :meth:`restore_many`)."""
        await self._run_many(
            "DELETE_MANY",
            [
                self._delete_call(user, "before", reason, round(cutoff * 1000), [])
                for user, cutoff, reason in cleanups
            ],
        )

    async def restore_many(self, sessions: Sequence[tuple[Session, float | None]]) -> list[bool]:
        """:meth:`restore` for each ``(session, deadline)``: one RESTORE_MANY per
        :data:`WRITE_BACK_BATCH` sessions (on a cluster, one a slot, concurrently)."""
        calls = [self._restore_call(session, deadline) for session, deadline in sessions]
        return [bool(written) for written in await self._run_many("RESTORE_MANY", calls)]

    async def _run_many(self, script: str, calls: list[_Call]) -> list[Any]:
        """Runs the calls, each as the script's single form takes it, through the batched
        form of the script: one round trip per :data:`WRITE_BACK_BATCH` calls, and on a
        cluster per slot, the slots concurrently."""
        if not calls:
            return []
        if self.cluster and len(calls) > 1:
            return await self._per_slot(calls, lambda part: self._run_many_here(script, part))
        return await self._run_many_here(script, calls)

    async def _run_many_here(self, script: str, calls: list[_Call]) -> list[Any]:
        if script not in self._scripts:
            # Registered on first use: only a write-back needs them, and redis-py loads
            # a script that Redis lacks when it is first called.
            self._scripts[script] = self.client.register_script(getattr(_scripts, script))
        results: list[Any] = []
        for chunk in _chunks(calls):
            script_keys: list[str] = []
            counts: list[Any] = [len(chunk)]
            args: list[Any] = []
            for keys_, args_ in chunk:
                counts += [len(keys_), len(args_)]
                script_keys += keys_
                args += args_
            results += await self._run(script, script_keys, counts + args)
        return results

    async def _delete(
        self, user: str, mode: str, reason: str, cutoff_ms: int, ids: list[str]
    ) -> list[str]:
        deleted = await self._run("DELETE", *self._delete_call(user, mode, reason, cutoff_ms, ids))
        if deleted and self._outbox_added is not None:
            self._outbox_added(keys.user_outbox(self.prefix, user))
        return [str(sid) for sid in deleted]

    def _delete_call(
        self, user: str, mode: str, reason: str, cutoff_ms: int, ids: list[str]
    ) -> _Call:
        return (
            [self._lone(user), self._idx(user)],
            [
                mode,
                self._key(user, ""),
                self.ttl_ms,
                self.script_channel,
                user,
                reason,
                cutoff_ms,
                *ids,
            ],
        )

    async def _run(self, script: str, script_keys: list[str], args: list[Any]) -> Any:
        return await self._call(self._scripts[script], keys=script_keys, args=args)

    async def call(
        self,
        fn: Callable[..., Awaitable[_T]],
        *args: Any,
        bound: float | None = None,
        **kwargs: Any,
    ) -> _T:
        """Runs one Redis call under the store's bound (or ``bound`` seconds), its
        failures mapped as the store's own are (for the presence store, which shares
        this store's client).

        Raises:
            StoreUnavailable: no answer within the bound.
            StoreMisconfigured: Redis answered but refuses us.
        """
        return await self._call(fn, *args, _bound=bound, **kwargs)

    async def _call(
        self,
        fn: Callable[..., Awaitable[_T]],
        *args: Any,
        _bound: float | None = None,
        **kwargs: Any,
    ) -> _T:
        started = time.perf_counter()
        try:
            # A timer rather than wait_for: on 3.11 wait_for wraps every call in a
            # new Task, a cost paid on each request.
            async with within(self.bound if _bound is None else _bound):
                return await fn(*args, **kwargs)
        except UNAVAILABLE_ERRORS as exc:
            raise self._failure(exc) from exc
        except RedisError as exc:
            why = refusal(exc)
            if why is None:
                raise
            raise self._misconfigured(why) from exc
        finally:
            metrics.REDIS_CALLS.observe(time.perf_counter() - started)

    def _failure(self, exc: BaseException) -> PresenceError:
        """What a call that got no answer it could use raises: a refusal (redis-py
        raises a wrong password as a ConnectionError) is no outage."""
        why = refusal(exc)
        if why is not None:
            return self._misconfigured(why)
        return StoreUnavailable(f"redis unavailable: {type(exc).__name__}")

    def _misconfigured(self, why: str) -> StoreMisconfigured:
        """Remembers a refusal for :meth:`refused`, logs it at most once a minute for
        each cause (not once a request), and returns the error for the caller."""
        self._refused = why
        now = time.monotonic()
        last = self._refusals_logged.get(why)
        if last is None or now - last >= _REFUSAL_LOG_INTERVAL:
            if len(self._refusals_logged) >= 64:
                self._refusals_logged.clear()
            self._refusals_logged[why] = now
            logger.error(
                "Redis refuses this service: %s (Redis at %s). Requests that need Redis "
                "answer 503 store_misconfigured until the configuration is put right",
                why,
                self._where,
            )
        return StoreMisconfigured()

    def _key(self, user: str, session_id: str) -> str:
        return keys.session_key(self.prefix, user, session_id)

    def _idx(self, user: str) -> str:
        return keys.index_key(self.prefix, user)

    def _lone(self, user: str) -> str:
        return keys.lone_key(self.prefix, user)

    def _keys(self, user: str, session_id: str) -> list[str]:
        """The keys where a session may be: the lone slot, the index and its own key."""
        return [self._lone(user), self._idx(user), self._key(user, session_id)]


def _missing(failures: list[str]) -> str:
    return "Redis's ACL refuses commands the service needs: " + "; ".join(
        str(failure) for failure in failures
    )


def _chunks(items: list[_Item]) -> list[list[_Item]]:
    return [items[i : i + WRITE_BACK_BATCH] for i in range(0, len(items), WRITE_BACK_BATCH)]


def _dump(data: JSON) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _check_id(session_id: str) -> None:
    # The lone slot's value starts with "<id>|": an id with a "|" could not be read back.
    # new_session_id never mints one, and the API refuses any other shape.
    if "|" in session_id:
        raise ValueError("a session id may not contain '|'")


def _session(
    user: str, sid: str, value: str, seen: str | float, pttl: int | str, now: int | str
) -> Session:
    # Every time here is Redis's: expires_at is its "now" plus the key's PTTL, so the
    # round trip does not shift it.
    created, _deadline, flags, data = value.split("|", 3)
    last_seen = float(seen) / 1000
    return Session(
        id=sid,
        user=user,
        created_at=int(created) / 1000,
        last_seen=last_seen,
        expires_at=(int(now) + max(0, int(pttl))) / 1000,
        transport=_TRANSPORT_OF[flags[0]],
        state=_STATE_OF[flags[1]],
        data=json.loads(data) if data else None,
    )
