"""What the edges share: one :class:`Services` per app, built from the settings.

It lives on ``app.state.services``. The app builds it and the edges (REST handlers, the
socket endpoint) read it, so none of them imports another: app -> services, rest,
sockets; rest and sockets -> services.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import events, keys
from .._shutdown import on_stop_signal
from ..admin import AdminGate, AdminService, MemoryBoard, RedisBoard, WebhookPanel
from ..auth import Authenticator, OriginPolicy
from ..bus import EventBus, MemoryBackend, RedisBackend
from ..exceptions import ConfigError, StoreError, StoreUnavailable
from ..registry import Refresher, Registry
from ..rooms import LocalTab, RoomService
from ..sessions import SessionService, new_session_id
from ..settings import Settings
from ..stores import FallbackStore, MemoryStore, RedisStore, SessionStore, store_from_settings
from ..stores.presence_base import PresenceStore
from ..stores.presence_memory import MemoryPresenceStore
from ..stores.presence_redis import RedisPresenceStore
from ..webhooks import Webhooks
from . import protocol

logger = logging.getLogger("presence.services")

#: Rooms that a scrape of /metrics counts at most (members summed over them): a read of
#: the rooms index as large as this (some 300 KiB) per scrape, not per request.
ROOMS_COUNTED = 10_000


@dataclass
class Services:
    """What the handlers share. The bus, the presence store and the room service exist
    while the app runs (:meth:`run`)."""

    settings: Settings
    store: SessionStore
    authenticator: Authenticator
    origins: OriginPolicy
    registry: Registry = field(default_factory=Registry)
    new_session_id: Callable[[], str] = new_session_id
    refresher: Refresher | None = None
    gate: AdminGate = field(init=False)
    #: The admin page's service, while the app runs with PRESENCE_ADMIN_TOKEN set.
    admin: AdminService | None = field(init=False, default=None)
    sessions: SessionService = field(init=False)
    bus: EventBus = field(init=False)
    presence: PresenceStore = field(init=False)
    rooms: RoomService = field(init=False)
    #: Delivers presence events to PRESENCE_WEBHOOK_URL (None when it is not set).
    webhooks: Webhooks | None = None

    def __post_init__(self) -> None:
        # Ids are minted through this object, so that a test may swap the minting.
        self.sessions = SessionService(
            self.settings, self.store, self.registry, lambda: self.new_session_id()
        )
        self.gate = AdminGate(self.settings.admin_token)

    @classmethod
    def build(cls, settings: Settings, store: SessionStore | None = None) -> Services:
        """The services for ``settings``, with ``store`` instead of the one
        ``settings.redis_url`` names when given."""
        return cls(
            settings=settings,
            store=store if store is not None else store_from_settings(settings),
            authenticator=Authenticator(settings),
            origins=OriginPolicy(settings.allowed_origins),
        )

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Opens everything the app needs, in order, and closes it in reverse: the
        session store, the bus (and on it the ended channel), the presence store and
        room service, the refresher."""
        settings = self.settings
        prefix = settings.key_prefix
        await self.store.open()
        try:
            redis = _redis_of(self.store)
            await self._share_dev_key(redis)
            if redis is None:
                self.bus = EventBus(MemoryBackend())
            else:
                self.bus = EventBus(
                    RedisBackend(redis.client, cluster=redis.cluster, timeout=redis.timeout * 4)
                )
            self._announce_through(self.bus)
            await self.bus.open()
            try:
                deliver = self.bus.deliver

                def in_memory() -> MemoryPresenceStore:
                    # Diffs reach this process's watchers only: there is no one else.
                    return MemoryPresenceStore(
                        lambda room, data: deliver(keys.room_channel(prefix, room), data)
                    )

                if redis is None:
                    self.presence = in_memory()
                else:
                    self.presence = RedisPresenceStore(redis, keep=settings.session_ttl)
                await self.presence.open()
                if settings.webhook_urls:
                    self.webhooks = Webhooks(settings, redis)
                    await self.webhooks.start()
                    # Redis's scripts add the events, or without Redis the memory
                    # stores; never the fallback's mirror, which stands in for Redis
                    # while it is away (Redis tells what changed once it is back).
                    self.webhooks.produce_from(self.presence, self.store)
                store = self.store
                self.rooms = RoomService(
                    settings,
                    self.presence,
                    self.bus,
                    channel=lambda room: keys.room_channel(prefix, room),
                    sharded=redis is not None and redis.cluster,
                    encode_sync=protocol.presence_sync,
                    encode_diff=protocol.presence_diff,
                    # While the session store serves from memory, so does presence.
                    local=in_memory if isinstance(store, FallbackStore) else None,
                    degraded=lambda: bool(getattr(store, "degraded", False)),
                )
                self.rooms.on_reaped = self.sessions.reaped
                self.rooms.on_held_again = self.sessions.held_again
                self.rooms.socket_open = self.sessions.socket_open
                await self.rooms.start()
                try:
                    async with Refresher(
                        self.store, self.registry, settings.refresh_interval
                    ) as refresher:
                        self.refresher = refresher
                        self.bus.on_reconnect(self._reconnected)
                        # Subscribed (and confirmed, within a bound) before the app
                        # serves: a socket accepted right after start-up hears of its
                        # session's end elsewhere.
                        with contextlib.suppress(StoreUnavailable):
                            await self.bus.listen(keys.ended_channel(prefix), self._ended)
                        if self.gate.enabled:
                            self.admin = AdminService(
                                settings,
                                rooms=self.rooms,
                                registry=self.registry,
                                store=self.store,
                                bus=self.bus,
                                board=MemoryBoard() if redis is None else RedisBoard(redis),
                                webhooks=None
                                if self.webhooks is None
                                else WebhookPanel(self.webhooks),
                            )
                            await self.admin.start()
                        try:
                            # A stop signal (a restart, a deploy) drains presence before
                            # uvicorn closes the sockets (RoomService.drain).
                            with on_stop_signal(self.rooms.drain):
                                yield
                        finally:
                            if self.admin is not None:
                                await self.admin.stop()
                                self.admin = None
                finally:
                    self.refresher = None
                    await self.rooms.stop()
                    if self.webhooks is not None:
                        await self.webhooks.stop()
                    await self.presence.close()
            finally:
                await self.bus.close()
        finally:
            await self.store.close()

    # -- what the metrics' sampler reads (presence.metrics.Sampler) ------------------------

    @property
    def sockets(self) -> int:
        """Sockets open or being opened on this process."""
        return self.registry.sockets

    def held_tabs(self) -> Iterable[LocalTab]:
        """The tabs this process holds."""
        return self.rooms.held_tabs()

    def store_state(self) -> tuple[bool, int]:
        """Whether the session store serves from memory (the breaker is open), and how
        many writes wait to be written back to Redis."""
        store = self.store
        if isinstance(store, FallbackStore):
            return store.degraded, store.pending_writes
        return False, 0

    async def room_counts(self) -> list[tuple[str, int]]:
        """The rooms with members and their counts (the most populous
        ``ROOMS_COUNTED``), wherever presence is now."""
        return await self.rooms.store.rooms(ROOMS_COUNTED)

    async def _share_dev_key(self, redis: RedisStore | None) -> None:
        """Development mode without PRESENCE_DEV_SECRET: the key of anonymous identities
        is the one in PRESENCE_DEV_SECRET_FILE (made on first use), or else the one in
        Redis (set by the first process to start), so that every process and restart
        shares it; without either, this process's own (memory mode: nothing survives a
        restart anyway)."""
        settings = self.settings
        if not settings.dev_mode or settings.dev_secret is not None:
            return
        if settings.dev_secret_file is not None:
            self.authenticator.use_key(_key_file(settings.dev_secret_file))
            return
        if redis is None:
            return
        key = keys.dev_secret_key(settings.key_prefix)
        try:
            await redis.call(redis.client.set, key, secrets.token_urlsafe(32), nx=True)
            shared = await redis.call(redis.client.get, key)
        except StoreError:
            logger.warning(
                "Redis is away: anonymous identities use this process's own key until it "
                "restarts with Redis (PRESENCE_DEV_SECRET_FILE shares one without Redis)"
            )
            return
        if shared:
            self.authenticator.use_key(str(shared))

    def _announce_through(self, bus: EventBus) -> None:
        """Memory stores (alone, or the fallback's mirror while Redis is away) hand the
        sessions they end to this process's listeners; Redis's scripts publish them."""
        channel = keys.ended_channel(self.settings.key_prefix)

        def announce(user: str, session_id: str, reason: str) -> None:
            bus.deliver(channel, events.encode_ended(events.SessionEnded(user, session_id, reason)))

        for store in (self.store, getattr(self.store, "fallback", None)):
            if isinstance(store, MemoryStore):
                store.announce = announce

    async def _ended(self, data: str) -> None:
        try:
            ended = events.decode_ended(data)
        except ValueError:
            logger.warning("ignored a malformed message on the ended channel")
            return
        if not ended.user:
            return  # Some process's start-up self-check.
        await self.store.on_ended(ended.user, ended.session_id, ended.reason)
        await self.registry.end(ended.user, ended.session_id, ended.reason)
        await self.rooms.session_ended(ended.user, ended.session_id, ended.reason)

    async def _reconnected(self) -> None:
        # Ends published while the bus was away were missed: whatever this process holds
        # is checked at once (a session gone ends its sockets), not a tick later.
        if self.refresher is not None:
            with contextlib.suppress(StoreError):
                await self.refresher.tick()


def _key_file(path: str) -> str:
    """The key in ``path``, made (32 random bytes, readable by this user alone) if the
    file does not exist yet."""
    file = Path(path)
    with contextlib.suppress(FileExistsError):
        with os.fdopen(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secrets.token_urlsafe(32))
    key = file.read_text().strip()
    if len(key) < 32:
        raise ConfigError("PRESENCE_DEV_SECRET_FILE", f"{path} holds fewer than 32 characters")
    return key


def _redis_of(store: Any) -> RedisStore | None:
    """The Redis store behind ``store``, if any (the bus travels through it)."""
    if isinstance(store, FallbackStore):
        return store.primary
    if isinstance(store, RedisStore):
        return store
    return None
