"""The event bus: one subscription per channel per process, any number of listeners.

Pick a backend with :func:`bus_for` (in this process, or Redis pub/sub), or pass one to
:class:`EventBus`, in the manner of broadcaster. Listeners are called one event at a
time, in the order events arrive on the bus, and must not wait on a client: one that
does holds up every event behind it (the registry hands socket work to the sockets'
own tasks, or skips a socket that is not reading).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .base import BusBackend, BusEvent, Message, Reconnected
from .memory import MemoryBackend
from .redis import RedisBackend

__all__ = [
    "BusBackend",
    "BusEvent",
    "EventBus",
    "MemoryBackend",
    "Message",
    "Reconnected",
    "RedisBackend",
    "bus_for",
]

logger = logging.getLogger("presence.bus")

#: Called with a message's data.
Listener = Callable[[str], Awaitable[None]]
#: Called once the bus has its subscriptions back after losing them.
ReconnectListener = Callable[[], Awaitable[None]]


class EventBus:
    """Listeners by channel over one backend.

    Args:
        backend: where events travel.
    """

    def __init__(self, backend: BusBackend) -> None:
        self.backend = backend
        self._listeners: dict[str, list[Listener]] = {}
        self._reconnect: list[ReconnectListener] = []
        self._task: asyncio.Task[None] | None = None
        #: Events delivered so far (for tests and metrics).
        self.delivered = 0

    async def open(self) -> None:
        await self.backend.connect()
        self._task = asyncio.create_task(self._dispatch(), name="event-bus")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.backend.disconnect()

    async def listen(self, channel: str, listener: Listener, *, sharded: bool = False) -> None:
        """Calls ``listener`` for every message on ``channel`` from now on; the channel
        is subscribed (and confirmed) with its first listener.

        Raises:
            StoreUnavailable: the subscription was not confirmed in time (the backend
                keeps trying; the listener stays registered).
        """
        listeners = self._listeners.setdefault(channel, [])
        listeners.append(listener)
        if len(listeners) == 1:
            await self.backend.subscribe(channel, sharded=sharded)

    async def unlisten(self, channel: str, listener: Listener, *, sharded: bool = False) -> None:
        """Stops calling ``listener``; the channel is let go with its last listener."""
        listeners = self._listeners.get(channel)
        if listeners is None:
            return
        with contextlib.suppress(ValueError):
            listeners.remove(listener)
        if not listeners:
            del self._listeners[channel]
            await self.backend.unsubscribe(channel, sharded=sharded)

    def on_reconnect(self, listener: ReconnectListener) -> None:
        """Calls ``listener`` each time the bus has its subscriptions back after losing
        them (whatever was published meanwhile was missed)."""
        self._reconnect.append(listener)

    async def publish(self, channel: str, data: str, *, sharded: bool = False) -> None:
        await self.backend.publish(channel, data, sharded=sharded)

    def deliver(self, channel: str, data: str) -> None:
        """To this process's listeners only (see :meth:`BusBackend.deliver`)."""
        self.backend.deliver(channel, data)

    async def _dispatch(self) -> None:
        while True:
            event = await self.backend.next_event()
            self.delivered += 1
            if isinstance(event, Reconnected):
                listeners: list[Any] = list(self._reconnect)
                args: tuple[str, ...] = ()
            else:
                listeners = list(self._listeners.get(event.channel, ()))
                args = (event.data,)
            for listener in listeners:
                try:
                    await listener(*args)
                except Exception:
                    logger.exception("an event listener failed")


def bus_for(client: Any | None, *, cluster: bool = False, timeout: float = 1.0) -> EventBus:
    """The bus for a store: Redis pub/sub over ``client``, or in this process when
    there is none."""
    if client is None:
        return EventBus(MemoryBackend())
    return EventBus(RedisBackend(client, cluster=cluster, timeout=timeout))
