"""The bus within one process: what the memory stores publish reaches this process's
listeners, and nobody else (there is nobody else)."""

from __future__ import annotations

import asyncio

from .base import BusEvent, Message


class MemoryBackend:
    """Channels in a set, events in a queue. Nothing is published to a channel that
    nobody subscribed, as with Redis."""

    def __init__(self) -> None:
        self._channels: set[str] = set()
        self._queue: asyncio.Queue[BusEvent] = asyncio.Queue()

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def subscribe(self, channel: str, *, sharded: bool = False) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str, *, sharded: bool = False) -> None:
        self._channels.discard(channel)

    async def publish(self, channel: str, data: str, *, sharded: bool = False) -> None:
        self.deliver(channel, data)

    def deliver(self, channel: str, data: str) -> None:
        if channel in self._channels:
            self._queue.put_nowait(Message(channel, data))

    async def next_event(self) -> BusEvent:
        return await self._queue.get()
