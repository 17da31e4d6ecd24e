"""The WebSocket endpoint: ``/api/v1/chat/sessions/{session_id}/ws``.

Identity, Origin and the session are checked before the handshake is accepted; a
refusal is an HTTP response with the usual JSON error body. Once open, the socket keeps
its session alive through the process's refresher, while uvicorn's ping frames keep
checking that the peer is there.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING

from starlette import status
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..auth import Identity, cookie_token, first_headers, header, query_token
from ..exceptions import (
    Forbidden,
    InvalidMessage,
    NotFound,
    NotInRoom,
    PresenceError,
    RateLimited,
    StoreError,
    TooManyRooms,
    Unauthorized,
)
from ..models import JSON, Reason, TabState, is_room
from ..rooms import LocalTab
from ..sessions import is_session_id
from ..wsproto import WRITABLE_EXTENSION
from . import errors, protocol

if TYPE_CHECKING:
    from .services import Services

logger = logging.getLogger("presence.sockets")


class SessionSocket:
    """One open socket of one session: what the registry ends, the room service fans
    diffs out to, and the loop reads.

    Attributes:
        rooms: the token's ``rooms`` claim, for joins and watches (None: all open).
        visible, idle: the tab's state, as the client said; online when visible and
            not idle.
        tab: the session's presence, held by this process (None until held, or when
            the store could not take it).
        watching: each watched room and the seq sent up to (None while syncing).
    """

    __slots__ = (
        "_ended",
        "_lock",
        "_writable",
        "bucket",
        "close_code",
        "idle",
        "rooms",
        "session_id",
        "tab",
        "user",
        "visible",
        "watching",
        "websocket",
    )

    def __init__(
        self, websocket: WebSocket, identity: Identity, session_id: str, services: Services
    ):
        self.websocket = websocket
        self.user = identity.user
        self.rooms = identity.rooms
        self.session_id = session_id
        settings = services.settings
        self.bucket = protocol.TokenBucket(
            settings.ws_messages_per_second, settings.ws_message_burst, time.monotonic()
        )
        self._ended: str | None = None
        self._lock = asyncio.Lock()
        # The socket's write gate, from presence.wsproto (absent on another server).
        self._writable = websocket.scope.get("extensions", {}).get(WRITABLE_EXTENSION)
        self.close_code: int | None = None
        self.tab: LocalTab | None = None
        self.visible = True
        self.idle = False
        self.watching: dict[str, int | None] = {}

    @property
    def ended(self) -> bool:
        return self._ended is not None

    @property
    def joined(self) -> dict[str, JSON]:
        """The rooms the session is in, from this process, each with its meta."""
        return {} if self.tab is None else self.tab.rooms

    @property
    def state(self) -> TabState:
        return "online" if self.visible and not self.idle else "away"

    def identity(self) -> Identity:
        return Identity(self.user, "bearer", self.rooms)

    async def send(self, text: str) -> None:
        async with self._lock:
            if self.websocket.application_state is WebSocketState.CONNECTED:
                await self.websocket.send_text(text)

    async def offer(self, text: str) -> bool:
        """Sends ``text`` if the socket takes it at once: its lock free and its write
        gate open, so the send does not wait (a fan-out to thousands of sockets must
        not wait on one that does not read). False when it did not."""
        if self._lock.locked() or (self._writable is not None and not self._writable.is_set()):
            return False
        try:
            await self.send(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return False
        return True

    async def end(self, reason: str) -> None:
        """Tells the client why and closes; the session is gone, so nothing retries."""
        if self._ended is not None:
            return
        self._ended = reason
        try:
            await self.send(protocol.ended(reason))
            await self.close(status.WS_1000_NORMAL_CLOSURE, f"session {reason}")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # The client went first; nothing left to tell it.

    async def close(self, code: int, reason: str) -> None:
        async with self._lock:
            if self.websocket.application_state is WebSocketState.CONNECTED:
                await self.websocket.close(code, reason)


async def session_socket(websocket: WebSocket) -> None:
    # This coroutine's frame lives as long as the socket, and so does whatever it or
    # `websocket` references: the checks read the scope into locals, never through
    # websocket.headers, .cookies, .query_params or .url (each parses once and keeps its
    # copy on the connection), and the loop that reads the socket runs here, inline,
    # rather than in a second coroutine with a frame of its own.
    services: Services = websocket.scope["app"].state.services
    session_id: str = websocket.scope["path_params"]["session_id"]
    registry = services.registry
    sessions = services.sessions
    try:
        identity = _identify(websocket, services)
        if not is_session_id(session_id):
            raise NotFound("no such session")
        sessions.reserve_socket(identity.user)
    except PresenceError as error:
        await _deny(websocket, error)
        return
    user = identity.user
    try:
        try:
            session = await sessions.attach(user, session_id)
        except PresenceError as error:
            await _deny(websocket, error)
            return
        await websocket.accept()
        socket = SessionSocket(websocket, identity, session_id, services)
        ref = (user, session_id)
        registry.add(ref, socket)
        lifetime = services.settings.max_lifetime
        expiry = None
        if lifetime > 0:
            # A timer, not a task asleep until then: a handle instead of a task, a
            # future and two coroutine frames held by every socket.
            expiry = asyncio.get_running_loop().call_later(
                max(0.0, session.created_at + lifetime - time.time()), _expire, socket
            )
        snapshot = protocol.snapshot(session, services.settings.heartbeat_interval)
        del identity, session  # Sent: not to be held for the socket's life.
        try:
            await socket.send(snapshot)
            del snapshot
            await _hold(socket, services)
            # Each message is handed over unnamed, so that this frame does not hold the
            # last one (nor its text, nor what it parsed to) while the socket idles.
            while not socket.ended and await _receive(socket, services, await websocket.receive()):
                pass
        except (WebSocketDisconnect, OSError):
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            last_here = registry.discard(ref, socket)
            await _leave_presence(socket, services)
            if last_here and not socket.ended:
                await sessions.detach(user, session_id)
    finally:
        sessions.release_socket(user)


async def _hold(socket: SessionSocket, services: Services) -> None:
    """The session's tab is present, held by this process, from the socket's opening
    (the tab of another socket of the session here, if any, is the same); presence is a
    service beside the session's, so a store that cannot take it now is logged, not a
    reason to close the socket."""
    try:
        socket.tab = await services.rooms.open_tab(socket.user, socket.session_id, socket.state)
    except StoreError:
        logger.warning("could not mark a tab present: store unavailable")


async def _leave_presence(socket: SessionSocket, services: Services) -> None:
    rooms = services.rooms
    for room in list(socket.watching):
        await rooms.unwatch(socket, room)
    if socket.tab is None:
        return
    if socket.ended:
        reason: Reason = "expired" if socket._ended == "expired" else "ended"
    elif socket.close_code == status.WS_1011_INTERNAL_ERROR:
        reason = "timeout"  # uvicorn's close when no pong came within the ping timeout
    else:
        reason = "closed"
    try:
        await rooms.close_tab(socket.tab, reason)
    except StoreError:
        logger.warning("could not release a tab: store unavailable")


def _identify(websocket: WebSocket, services: Services) -> Identity:
    """The handshake's identity and origin checks (raising the refusal), reading the
    scope directly: the same headers Starlette's accessors would answer, none kept."""
    scope = websocket.scope
    headers = first_headers(scope["headers"])
    identity = services.authenticator.identify(
        header(headers, b"authorization"),
        functools.partial(cookie_token, scope["headers"]),
        query_token(scope["query_string"]),
    )
    if identity is None:
        raise Unauthorized("a valid token or identity cookie is required")
    origin = header(headers, b"origin")
    # The scheme is what websocket.url.scheme answers, without building the URL.
    if (origin is not None or identity.ambient) and not services.origins.allows(
        origin, scheme=scope.get("scheme", "http"), host=header(headers, b"host")
    ):
        raise Forbidden("origin not allowed")
    return identity


async def _receive(socket: SessionSocket, services: Services, message: Message) -> bool:
    """Acts on one received message; False when the socket is done with (the client
    left, or it was closed for sending too much)."""
    if message["type"] == "websocket.disconnect":
        socket.close_code = message.get("code")
        return False
    if not socket.bucket.allow(time.monotonic()):
        flood = RateLimited("too many messages")
        await socket.send(errors.in_band(flood))
        await socket.close(errors.close_code(flood), flood.message)
        return False
    text = message.get("text")
    try:
        if text is None:
            raise InvalidMessage("messages must be text JSON")
        parsed = protocol.parse(text)
    except PresenceError as error:
        await socket.send(errors.in_band(error))
        return True
    await _dispatch(socket, services, parsed)
    return True


async def _dispatch(
    socket: SessionSocket, services: Services, message: protocol.ClientMessage
) -> None:
    if isinstance(message, protocol.RoomMessage):
        try:
            await _room_message(socket, services, message)
        except PresenceError as error:
            room = message.room if isinstance(message.room, str) and is_room(message.room) else None
            await socket.send(errors.in_band(error, room=room))
        return
    if isinstance(message, protocol.Activity):
        socket.idle = message.idle
        await _tab_state(socket, services)
        return
    try:
        session = await services.sessions.set_visibility(
            socket.user, socket.session_id, message.state
        )
    except StoreError as error:  # the store is busy or away: the socket stays open
        await socket.send(errors.in_band(error))
        return
    if session is None:
        await socket.end("expired")
        return
    socket.visible = message.state == "active"
    await socket.send(protocol.snapshot(session, services.settings.heartbeat_interval))
    await _tab_state(socket, services)


async def _tab_state(socket: SessionSocket, services: Services) -> None:
    if socket.tab is None:
        return
    try:
        await services.rooms.set_state(socket.tab, socket.state)
    except StoreError as error:
        await socket.send(errors.in_band(error))


async def _room_message(
    socket: SessionSocket, services: Services, message: protocol.RoomMessage
) -> None:
    rooms = services.rooms
    room = rooms.check_room(socket.identity(), message.room)
    kind = message.kind
    limit = services.settings.max_rooms_per_session
    if kind in ("presence.join", "presence.update") and socket.tab is None:
        # The store could not take the tab when the socket opened: hold it now.
        socket.tab = await rooms.open_tab(socket.user, socket.session_id, socket.state)
    if kind == "presence.join":
        assert socket.tab is not None
        watched_only = sum(1 for r in socket.watching if r not in socket.joined and r != room)
        await rooms.join(socket.identity(), socket.tab, room, message.meta, watched=watched_only)
        if room not in socket.watching:
            await rooms.watch(socket, room)  # joining implies watching
    elif kind == "presence.update":
        assert socket.tab is not None
        await rooms.update(socket.tab, room, message.meta)
    elif kind == "presence.leave":
        if room not in socket.joined:
            raise NotInRoom(f"this session is not in the room {room!r}")
        await rooms.leave(socket.user, socket.session_id, room, "left")
        await rooms.unwatch(socket, room)
    elif kind == "presence.watch":
        if room not in socket.watching and len(socket.joined.keys() | socket.watching) >= limit:
            raise TooManyRooms(f"a session may be in at most {limit} rooms")
        await rooms.watch(socket, room)
    else:
        await rooms.unwatch(socket, room)


# Sockets being ended at their deadline: the loop keeps only weak references to tasks.
_expiring: set[asyncio.Task[None]] = set()


def _expire(socket: SessionSocket) -> None:
    # The store forgets a session at its absolute deadline by itself, and a Redis key
    # that expires announces nothing; without this, the socket would learn of it only
    # on the refresher's next tick, up to a heartbeat interval later.
    task = asyncio.ensure_future(socket.end("expired"))
    _expiring.add(task)
    task.add_done_callback(_expiring.discard)


async def _deny(websocket: WebSocket, error: PresenceError) -> None:
    response = errors.response(error)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:  # pragma: no cover - every server we run supports denial responses
        await websocket.close(errors.close_code(error), errors.message_of(error))
