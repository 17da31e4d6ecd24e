"""The bus through Redis pub/sub: what any process's scripts publish reaches every
process that subscribed.

One pub/sub connection a process (on a cluster, one for plain channels and one a
node for sharded ones), whatever the number of sockets and rooms: a process subscribes
once per channel. When the connection drops it is made again with a capped backoff,
every channel is subscribed again, and :class:`~presence.bus.base.Reconnected` says
that whatever was published meanwhile was missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .._shutdown import settle, stop
from ..exceptions import StoreUnavailable
from .base import BusEvent, Message, Reconnected

logger = logging.getLogger("presence.bus")

_REDIS_PARAMETERS = frozenset(inspect.signature(aioredis.Redis).parameters)
_FIRST_DELAY = 0.1
# Seconds within which channels confirmed again belong to one reconnection.
_RESUBSCRIBED_QUIET = 1.0
_MAX_DELAY = 2.0


class RedisBackend:
    """Redis pub/sub as a bus backend.

    Args:
        client: the store's client (``redis.asyncio.Redis`` or ``RedisCluster``); plain
            channels use a pub/sub connection of its own from it.
        cluster: the client is a cluster's: a sharded channel is subscribed with
            SSUBSCRIBE on a connection to the node that owns its slot, one connection
            a node. (redis-py's cluster pub/sub polls its nodes in turn, each for the
            read timeout, which would hold a message up for as long.)
        timeout: how long a subscription may take to be confirmed (Redis may be away:
            the backend keeps trying).
    """

    def __init__(self, client: Any, *, cluster: bool = False, timeout: float = 1.0) -> None:
        self.client = client
        self.cluster = cluster
        self.timeout = timeout
        self._plain: set[str] = set()
        self._sharded: set[str] = set()
        self._confirmed: dict[str, asyncio.Event] = {}
        self._queue: asyncio.Queue[BusEvent] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # While connected: the pub/sub of plain channels, and one a cluster node.
        self._pubsub: Any = None
        self._nodes: dict[str, Any] = {}
        self._node_clients: list[Any] = []
        self._readers: set[asyncio.Task[None]] = set()
        self._failed: asyncio.Future[None] | None = None
        self._lost = False
        # Set by disconnect(): the readers stop at their next read even if a
        # cancellation of them was lost.
        self._closing = False
        self._said_reconnected = float("-inf")

    async def connect(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-bus")

    async def disconnect(self) -> None:
        """Stops within a bound whatever Redis does: a cancellation lost on its way (see
        presence._shutdown) is sent again, and a reader still going after that is
        abandoned, with a warning."""
        self._closing = True
        if self._task is not None:
            if not await stop(self._task, self.timeout * 2):
                logger.warning("the pub/sub connection did not close in time; abandoned")
            self._task = None

    async def subscribe(self, channel: str, *, sharded: bool = False) -> None:
        sharded = sharded and self.cluster
        (self._sharded if sharded else self._plain).add(channel)
        confirmed = self._confirmed.setdefault(channel, asyncio.Event())
        if self._pubsub is not None:
            try:
                if sharded:
                    await self._node_pubsub(channel).ssubscribe(channel)
                else:
                    await self._pubsub.subscribe(channel)
            except (RedisError, OSError) as exc:
                # The connection is gone: the reader reconnects and subscribes every
                # channel again.
                self._fail(exc)
        try:
            async with asyncio.timeout(self.timeout):
                await confirmed.wait()
        except TimeoutError:
            raise StoreUnavailable(f"redis did not confirm a subscription to {channel}") from None

    async def unsubscribe(self, channel: str, *, sharded: bool = False) -> None:
        sharded = sharded and self.cluster
        (self._sharded if sharded else self._plain).discard(channel)
        self._confirmed.pop(channel, None)
        if self._pubsub is None:
            return
        with contextlib.suppress(RedisError, OSError):
            if sharded:
                await self._node_pubsub(channel).sunsubscribe(channel)
            else:
                await self._pubsub.unsubscribe(channel)

    async def publish(self, channel: str, data: str, *, sharded: bool = False) -> None:
        try:
            if sharded and self.cluster:
                await self.client.spublish(channel, data)
            else:
                await self.client.publish(channel, data)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from exc

    def deliver(self, channel: str, data: str) -> None:
        # The in-memory fallback's announcements while Redis is away: this process's.
        if channel in self._plain or channel in self._sharded or channel in self._confirmed:
            self._queue.put_nowait(Message(channel, data))

    async def next_event(self) -> BusEvent:
        return await self._queue.get()

    async def _run(self) -> None:
        delay = _FIRST_DELAY
        while not self._closing:
            self._failed = asyncio.get_running_loop().create_future()
            try:
                await self._open()
                if self._lost:
                    await self._wait_confirmed()
                    self._queue.put_nowait(Reconnected())
                    self._lost = False
                delay = _FIRST_DELAY
                await self._failed
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if not self._lost:
                    logger.warning("pub/sub connection lost (%s); reconnecting", type(exc).__name__)
                self._lost = True
            finally:
                await self._close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)

    async def _open(self) -> None:
        if self.cluster:
            await self.client.initialize()  # The slots map, for a channel's node.
        self._pubsub = self.client.pubsub()
        if self._plain:
            await self._pubsub.subscribe(*self._plain)
        self._read(self._pubsub)
        for channel in list(self._sharded):
            await self._node_pubsub(channel).ssubscribe(channel)

    def _node_pubsub(self, channel: str) -> Any:
        node = self.client.get_node_from_key(channel)
        pubsub = self._nodes.get(node.name)
        if pubsub is None:
            client = aioredis.Redis(host=node.host, port=node.port, **self._node_kwargs())
            self._node_clients.append(client)
            pubsub = self._nodes[node.name] = client.pubsub()
            self._read(pubsub)
        return pubsub

    def _node_kwargs(self) -> dict[str, Any]:
        # The cluster's own connection settings (credentials, TLS, timeouts), those a
        # plain client takes: the cluster keeps some of its own among them.
        kwargs = getattr(self.client, "connection_kwargs", {})
        return {
            name: value
            for name, value in kwargs.items()
            if name in _REDIS_PARAMETERS and name not in ("host", "port", "connection_pool")
        }

    def _read(self, pubsub: Any) -> None:
        task = asyncio.ensure_future(self._reader(pubsub))
        self._readers.add(task)
        task.add_done_callback(self._reader_done)

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        self._readers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._fail(task.exception())

    def _fail(self, exc: BaseException | None) -> None:
        if self._failed is not None and not self._failed.done():
            if isinstance(exc, RedisError | OSError):
                self._failed.set_exception(exc)
            else:
                self._failed.set_exception(RedisError(f"pub/sub reader failed: {exc!r}"))

    async def _close(self) -> None:
        for event in self._confirmed.values():
            event.clear()
        readers, self._readers = list(self._readers), set()
        for task in readers:
            await stop(task, self.timeout)
        pubsubs = [self._pubsub, *self._nodes.values()]
        self._pubsub, self._nodes = None, {}
        for pubsub in pubsubs:
            if pubsub is not None:
                await settle(pubsub.aclose(), self.timeout)
        clients, self._node_clients = self._node_clients, []
        for client in clients:
            await settle(client.aclose(), self.timeout)

    def _resubscribed(self) -> None:
        # One Reconnected for the channels of one reconnection, confirmed one by one.
        now = asyncio.get_running_loop().time()
        if now - self._said_reconnected > _RESUBSCRIBED_QUIET:
            self._said_reconnected = now
            self._queue.put_nowait(Reconnected())

    async def _wait_confirmed(self) -> None:
        # Reconnected goes out once the channels are back, so that listeners catching up
        # on what they missed do not miss what comes next; bounded, since a channel
        # subscribed and dropped meanwhile may never be confirmed.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout):
                for event in list(self._confirmed.values()):
                    await event.wait()

    async def _reader(self, pubsub: Any) -> None:
        while not self._closing:
            if not pubsub.subscribed:
                # Nothing subscribed on this connection (yet): redis-py cannot read it.
                await asyncio.sleep(0.05)
                continue
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind = message["type"]
            channel = message["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            if kind in ("subscribe", "ssubscribe"):
                event = self._confirmed.get(channel)
                if event is not None:
                    if event.is_set():
                        # Confirmed again: redis-py made the connection again by itself
                        # and subscribed its channels anew (PubSub.on_connect), and
                        # whatever was published meanwhile was missed.
                        self._resubscribed()
                    event.set()
            elif kind in ("message", "smessage"):
                data = message["data"]
                self._queue.put_nowait(
                    Message(channel, data.decode() if isinstance(data, bytes) else data)
                )
