"""The WebSocket endpoint: ``/api/v1/chat/sessions/{session_id}/ws``.

Identity, Origin and the session are checked before the handshake is accepted; a
refusal is an HTTP response with the usual JSON error body. Once open, the socket keeps
its session alive through the process's refresher, while uvicorn's ping frames keep
checking that the peer is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette import status
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .. import _fanout, metrics
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
    TooManySessions,
    Unauthorized,
)
from ..models import JSON, Reason, TabState, is_room
from ..rooms import LocalTab
from ..sessions import is_session_id
from ..wsproto import FRAMES_EXTENSION, WRITABLE_EXTENSION
from . import errors, protocol

if TYPE_CHECKING:
    from .services import Services

logger = logging.getLogger("presence.sockets")


class Attached:
    """A further session of the socket's user that this socket carries (a browser's
    tabs sharing one socket): its own tab, visibility and lifetime."""

    __slots__ = ("expiry", "idle", "session_id", "tab", "visible")

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.tab: LocalTab | None = None
        self.visible = True
        self.idle = False
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def state(self) -> TabState:
        return "online" if self.visible and not self.idle else "away"


class SessionSocket:
    """One open socket of one session (and of further sessions of the same user that it
    carries): what the registry ends, the room service fans diffs out to, and the loop
    reads.

    Attributes:
        rooms: the token's ``rooms`` claim, for joins and watches (None: all open).
        visible, idle: the tab's state, as the client said; online when visible and
            not idle.
        tab: the session's presence, held by this process (None until held, or when
            the store could not take it).
        watching: each watched room and the seq sent up to (None while syncing).
        attached: the further sessions it carries (None until one is attached).
        gone: the socket's own session ended while it carried others.
    """

    __slots__ = (
        "_ended",
        "_lock",
        "_on_part_ended",
        "_protocol",
        "_writable",
        "attached",
        "bucket",
        "close_code",
        "gone",
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
        extensions = websocket.scope.get("extensions", {})
        self._writable = extensions.get(WRITABLE_EXTENSION)
        # Its protocol, for a text shared by many sockets (absent on another server).
        self._protocol = extensions.get(FRAMES_EXTENSION)
        self.close_code: int | None = None
        self.tab: LocalTab | None = None
        self.visible = True
        self.idle = False
        self.watching: dict[str, int | None] = {}
        self.attached: dict[str, Attached] | None = None
        self.gone = False
        # What ending one of several sessions does (sockets.py sets it: presence, the
        # registry); the socket itself only tells the client.
        self._on_part_ended: Callable[[SessionSocket, Any, str], Awaitable[None]] | None = None

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
        if (
            isinstance(text, _fanout.Shared)
            and self._protocol is not None
            and self.websocket.application_state is WebSocketState.CONNECTED
        ):
            # Its frame, built once for every socket (a room's diff), written as is.
            written = _fanout.write(self._protocol, text.frame)
            if written is not None:
                return written
        try:
            await self.send(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return False
        return True

    def part(self, session_id: str | None) -> SessionSocket | Attached:
        """The session a message is about: the socket's own (None or its id), or one it
        carries.

        Raises:
            NotFound: no such session on this socket (or the socket's own has ended).
        """
        if session_id is None or session_id == self.session_id:
            if self.gone:
                raise NotFound("this socket's own session has ended")
            return self
        found = None if self.attached is None else self.attached.get(session_id)
        if found is None:
            raise NotFound("no such session on this socket; attach it first")
        return found

    def parts(self) -> list[SessionSocket | Attached]:
        """Every session this socket carries now."""
        own: list[SessionSocket | Attached] = [] if self.gone else [self]
        return own + list((self.attached or {}).values())

    async def end(self, reason: str, session_id: str | None = None) -> None:
        """The session is gone (``session_id``: one this socket carries, or None for its
        own): the client is told why; the socket closes once it carries none."""
        if self._ended is not None:
            return
        if session_id is not None and session_id != self.session_id:
            if self.attached is not None and session_id in self.attached:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                    await self.send(protocol.ended(reason, session_id))
                if self._on_part_ended is not None:
                    await self._on_part_ended(self, self.attached[session_id], reason)
            return
        if self.attached:
            # Its other sessions go on over it: only the socket's own is gone.
            if not self.gone:
                self.gone = True
                with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                    await self.send(protocol.ended(reason))
                if self._on_part_ended is not None:
                    await self._on_part_ended(self, self, reason)
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
                if self.close_code is None:
                    # The code the socket closes with, for the metrics; the client's
                    # echo may overwrite it with the same. (No close of ours is 1011,
                    # the code that _closing_reason takes for uvicorn's ping timeout.)
                    self.close_code = code
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
        # The handshake's headers (about 1.2 KB in some 20 objects) and its query string
        # (which may carry the token) were read by the checks above: the scope, uvicorn's
        # own, is not to hold them for the socket's life.
        websocket.scope["headers"] = []
        websocket.scope["query_string"] = b""
        socket = SessionSocket(websocket, identity, session_id, services)
        socket._on_part_ended = functools.partial(_part_ended, services=services)
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
            for room in list(socket.watching):
                await services.rooms.unwatch(socket, room)
            for part in socket.parts():
                await _let_go(socket, part, services, _closing_reason(socket))
            metrics.socket_closed(socket.close_code)
    finally:
        sessions.release_socket(user)


async def _hold(socket: SessionSocket, services: Services) -> None:
    """The session's tab is present, held by this process, from the socket's opening
    (the tab of another socket of the session here, if any, is the same); presence is a
    service beside the session's, so a store that cannot take it now is logged, not a
    reason to close the socket."""
    await _hold_part(socket, socket, services)


async def _hold_part(
    socket: SessionSocket, part: SessionSocket | Attached, services: Services
) -> None:
    try:
        part.tab = await services.rooms.open_tab(socket.user, part.session_id, part.state)
    except StoreError:
        logger.warning("could not mark a tab present: store unavailable")


def _closing_reason(socket: SessionSocket) -> Reason:
    if socket.ended:
        return "expired" if socket._ended == "expired" else "ended"
    if socket.close_code == status.WS_1011_INTERNAL_ERROR:
        return "timeout"  # uvicorn's close when no pong came within the ping timeout
    return "closed"


async def _let_go(
    socket: SessionSocket, part: SessionSocket | Attached, services: Services, reason: Reason
) -> None:
    """The socket no longer carries ``part``: its presence tab is released (leaving after
    the grace), and a session whose last socket here this was is marked disconnected,
    unless it ended."""
    if isinstance(part, Attached):
        if part.expiry is not None:
            part.expiry.cancel()
        if socket.attached is not None:
            socket.attached.pop(part.session_id, None)
        _budget(socket, services)
    last_here = services.registry.discard((socket.user, part.session_id), socket)
    if part.tab is not None:
        try:
            await services.rooms.close_tab(part.tab, reason)
        except StoreError:
            logger.warning("could not release a tab: store unavailable")
        part.tab = None
    if last_here and reason not in ("ended", "expired"):
        await services.sessions.detach(socket.user, part.session_id)


async def _part_ended(
    socket: SessionSocket, part: SessionSocket | Attached, reason: str, *, services: Services
) -> None:
    """One of several sessions a socket carries ended: it lets go of it, and closes once
    it carries none."""
    await _let_go(socket, part, services, "expired" if reason == "expired" else "ended")
    if not socket.parts():
        await socket.end(reason)


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
    session = message.session
    try:
        if isinstance(message, protocol.SessionMessage):
            await _session_message(socket, services, message)
            return
        if isinstance(message, protocol.RoomMessage):
            try:
                await _room_message(socket, services, message)
            except PresenceError as error:
                room = message.room if isinstance(message.room, str) else None
                if room is not None and not is_room(room):
                    room = None
                await socket.send(errors.in_band(error, room=room, session=session))
            return
        part = socket.part(session)
        if isinstance(message, protocol.Activity):
            part.idle = message.idle
            await _tab_state(socket, part, services)
            return
        found = await services.sessions.set_visibility(socket.user, part.session_id, message.state)
    except PresenceError as error:  # the store is busy or away: the socket stays open
        await socket.send(errors.in_band(error, session=session))
        return
    if found is None:
        await socket.end("expired", part.session_id)
        return
    part.visible = message.state == "active"
    await socket.send(protocol.snapshot(found, services.settings.heartbeat_interval))
    await _tab_state(socket, part, services)


async def _tab_state(
    socket: SessionSocket, part: SessionSocket | Attached, services: Services
) -> None:
    if part.tab is None:
        return
    try:
        await services.rooms.set_state(part.tab, part.state)
    except StoreError as error:
        await socket.send(errors.in_band(error))


async def _session_message(
    socket: SessionSocket, services: Services, message: protocol.SessionMessage
) -> None:
    """Attaches a further session of the socket's user to it, or detaches one. An
    attach is checked as a handshake is: the socket's identity (checked with its origin
    at its handshake) and the session that user's; the session is kept alive by this
    socket from then on, with its own tab, visibility and lifetime."""
    session_id = message.session
    if message.kind == "session.detach":
        part = socket.part(session_id)
        if part is socket:
            raise InvalidMessage("the socket's own session is detached by closing the socket")
        await _let_go(socket, part, services, "closed")
        return
    if not is_session_id(session_id):
        raise NotFound("no such session")
    if session_id == socket.session_id or session_id in (socket.attached or {}):
        part = socket.part(session_id)
    else:
        limit = services.settings.max_sessions_per_user
        if len(socket.attached or ()) + 1 >= limit:
            raise TooManySessions(f"a socket carries at most {limit} sessions")
        found = await services.sessions.attach(socket.user, session_id)
        part = Attached(session_id)
        if socket.attached is None:
            socket.attached = {}
        socket.attached[session_id] = part
        services.registry.add((socket.user, session_id), socket)
        lifetime = services.settings.max_lifetime
        if lifetime > 0:
            part.expiry = asyncio.get_running_loop().call_later(
                max(0.0, found.created_at + lifetime - time.time()),
                _expire,
                socket,
                session_id,
            )
        await _hold_part(socket, part, services)
        _budget(socket, services)
    session = await services.sessions.get(socket.user, part.session_id)
    await socket.send(protocol.snapshot(session, services.settings.heartbeat_interval))


async def _room_message(
    socket: SessionSocket, services: Services, message: protocol.RoomMessage
) -> None:
    rooms = services.rooms
    room = rooms.check_room(socket.identity(), message.room)
    kind = message.kind
    limit = services.settings.max_rooms_per_session
    if kind == "presence.watch":
        # Watching is the socket's, for every session it carries.
        watched = socket.watching.keys() | {r for p in socket.parts() for r in _joined(p)}
        if room not in socket.watching and len(watched) >= limit * len(socket.parts() or [1]):
            raise TooManyRooms(f"a session may be in at most {limit} rooms")
        await rooms.watch(socket, room)
        return
    if kind == "presence.unwatch":
        await rooms.unwatch(socket, room)
        return
    part = socket.part(message.session)
    if kind in ("presence.join", "presence.update") and part.tab is None:
        # The store could not take the tab when the session came: hold it now.
        part.tab = await rooms.open_tab(socket.user, part.session_id, part.state)
    if kind == "presence.join":
        assert part.tab is not None
        joined = _joined(part)
        watched_only = sum(1 for r in socket.watching if r not in joined and r != room)
        await rooms.join(socket.identity(), part.tab, room, message.meta, watched=watched_only)
        if room not in socket.watching:
            await rooms.watch(socket, room)  # joining implies watching
    elif kind == "presence.update":
        assert part.tab is not None
        await rooms.update(part.tab, room, message.meta)
    else:
        if room not in _joined(part):
            raise NotInRoom(f"this session is not in the room {room!r}")
        await rooms.leave(socket.user, part.session_id, room, "left")
        if not any(room in _joined(other) for other in socket.parts()):
            await rooms.unwatch(socket, room)


def _budget(socket: SessionSocket, services: Services) -> None:
    """The socket's message rate is that of the sessions it carries (each tab of a
    shared socket sends as one with its own socket would), but never more than the
    user's sockets could send together (PRESENCE_MAX_SOCKETS_PER_USER of them)."""
    settings = services.settings
    carried = 1 + len(socket.attached or ())
    share = min(carried, settings.max_sockets_per_user)
    socket.bucket.resize(settings.ws_messages_per_second * share, settings.ws_message_burst * share)


def _joined(part: SessionSocket | Attached) -> dict[str, JSON]:
    return {} if part.tab is None else part.tab.rooms


# Sockets being ended at their deadline: the loop keeps only weak references to tasks.
_expiring: set[asyncio.Task[None]] = set()


def _expire(socket: SessionSocket, session_id: str | None = None) -> None:
    # The store forgets a session at its absolute deadline by itself, and a Redis key
    # that expires announces nothing; without this, the socket would learn of it only
    # on the refresher's next tick, up to a heartbeat interval later.
    task = asyncio.ensure_future(socket.end("expired", session_id))
    _expiring.add(task)
    task.add_done_callback(_expiring.discard)


async def _deny(websocket: WebSocket, error: PresenceError) -> None:
    response = errors.response(error)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:  # pragma: no cover - every server we run supports denial responses
        await websocket.close(errors.close_code(error), errors.message_of(error))
