"""The contract of an event bus backend, in the manner of broadcaster's: connect,
subscribe and unsubscribe channels, publish, and read what arrives, one event at a
time, in the order it was published on its channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Message:
    """Something published on a channel."""

    channel: str
    data: str


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The backend lost its connection and has every subscription back: whatever was
    published meanwhile was missed, so listeners must catch up (check the sessions they
    hold, sync the rooms they watch)."""


BusEvent = Message | Reconnected


class BusBackend(Protocol):
    """Where events travel: in this process (memory) or through Redis pub/sub.

    A channel is ``sharded`` when it belongs to one Redis Cluster slot (a room's): on a
    cluster it is subscribed with SSUBSCRIBE on the node that owns the slot, so a diff
    travels to the processes that watch its room and no further.
    """

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def subscribe(self, channel: str, *, sharded: bool = False) -> None:
        """Returns once the subscription is confirmed, so that whatever is published
        on ``channel`` from then on arrives.

        Raises:
            StoreUnavailable: Redis did not confirm within the bound; the backend keeps
                trying, and says :class:`Reconnected` once it has.
        """

    async def unsubscribe(self, channel: str, *, sharded: bool = False) -> None: ...

    async def publish(self, channel: str, data: str, *, sharded: bool = False) -> None: ...

    def deliver(self, channel: str, data: str) -> None:
        """Hands ``data`` to this process's listeners of ``channel`` only, without
        yielding to the loop: a store in this process's memory announces its changes
        this way, in the same step as the change (as a Lua script publishes in Redis).
        Nothing is delivered on a channel nobody here listens to."""

    async def next_event(self) -> BusEvent:
        """The next event: a message on a subscribed channel, or :class:`Reconnected`."""
