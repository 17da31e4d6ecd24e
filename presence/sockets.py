"""The WebSocket endpoint: ``/api/v1/chat/sessions/{session_id}/ws``.

Identity, Origin and the session are checked before the handshake is accepted; a
refusal is an HTTP response with the usual JSON error body. Once open, the socket keeps
its session alive through the process's refresher, while uvicorn's ping frames keep
checking that the peer is there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from starlette import status
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from . import protocol
from .exceptions import ApiError, Forbidden, NotFound, StoreUnavailable, Unauthorized
from .sessions import is_session_id

if TYPE_CHECKING:
    from .app import Services

logger = logging.getLogger("presence.sockets")


class SessionSocket:
    """One open socket of one session: what the registry ends and the loop reads."""

    __slots__ = ("_ended", "_lock", "bucket", "session_id", "user", "websocket")

    def __init__(self, websocket: WebSocket, user: str, session_id: str, services: Services):
        self.websocket = websocket
        self.user = user
        self.session_id = session_id
        settings = services.settings
        self.bucket = protocol.TokenBucket(
            settings.ws_messages_per_second, settings.ws_message_burst, time.monotonic()
        )
        self._ended: str | None = None
        self._lock = asyncio.Lock()

    @property
    def ended(self) -> bool:
        return self._ended is not None

    async def send(self, text: str) -> None:
        async with self._lock:
            if self.websocket.application_state is WebSocketState.CONNECTED:
                await self.websocket.send_text(text)

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
    services: Services = websocket.app.state.services
    session_id = websocket.path_params["session_id"]
    try:
        identity = services.authenticator.identify(
            websocket.headers, websocket.cookies, websocket.query_params
        )
        if identity is None:
            raise Unauthorized("a valid token or identity cookie is required")
        origin = websocket.headers.get("origin")
        if (origin is not None or identity.ambient) and not services.origins.allows(
            origin, scheme=websocket.url.scheme, host=websocket.headers.get("host")
        ):
            raise Forbidden("origin not allowed")
        if not is_session_id(session_id):
            raise NotFound("no such session")
        session = await services.store.touch(
            identity.user, session_id, transport="websocket", state="active"
        )
        if session is None:
            raise NotFound("no such session")
    except ApiError as exc:
        await _deny(websocket, exc.status, exc.code, exc.message)
        return
    except StoreUnavailable:
        await _deny(websocket, 503, "store_unavailable", "session store unavailable")
        return

    await websocket.accept()
    socket = SessionSocket(websocket, identity.user, session_id, services)
    ref = (identity.user, session_id)
    services.registry.add(ref, socket)
    lifetime = services.settings.max_lifetime
    expiry = None
    if lifetime > 0:
        expiry = asyncio.create_task(_end_at(socket, session.created_at + lifetime))
    try:
        await socket.send(protocol.snapshot(session))
        await _read_loop(socket, services)
    except (WebSocketDisconnect, OSError):
        pass
    finally:
        if expiry is not None:
            expiry.cancel()
        last_here = services.registry.discard(ref, socket)
        if last_here and not socket.ended:
            await _mark_disconnected(services, identity.user, session_id)


async def _read_loop(socket: SessionSocket, services: Services) -> None:
    websocket = socket.websocket
    while not socket.ended:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if not socket.bucket.allow(time.monotonic()):
            await socket.send(protocol.error("rate_limited", "too many messages"))
            await socket.close(status.WS_1008_POLICY_VIOLATION, "too many messages")
            return
        text = message.get("text")
        if text is None:
            await socket.send(protocol.error("bad_message", "messages must be text JSON"))
            continue
        try:
            parsed = protocol.parse(text)
        except protocol.ProtocolError as exc:
            await socket.send(protocol.error(exc.code, exc.message))
            continue
        await _dispatch(socket, services, parsed)


async def _dispatch(
    socket: SessionSocket, services: Services, message: protocol.ClientMessage
) -> None:
    if isinstance(message, protocol.Visibility):
        session = await services.store.touch(socket.user, socket.session_id, state=message.state)
        if session is None:
            await socket.end("expired")
        else:
            await socket.send(protocol.snapshot(session))


async def _end_at(socket: SessionSocket, deadline: float) -> None:
    # The store forgets a session at its absolute deadline by itself, and a Redis key
    # that expires announces nothing; without this, the socket would learn of it only
    # on the refresher's next tick, up to a heartbeat interval later.
    await asyncio.sleep(max(0.0, deadline - time.time()))
    await socket.end("expired")


async def _mark_disconnected(services: Services, user: str, session_id: str) -> None:
    try:
        await services.store.touch(user, session_id, transport="none", state="disconnected")
    except StoreUnavailable:
        logger.warning("could not mark a session disconnected: store unavailable")


async def _deny(websocket: WebSocket, status_code: int, code: str, message: str) -> None:
    response = JSONResponse({"error": {"code": code, "message": message}}, status_code)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:  # pragma: no cover - every server we run supports denial responses
        await websocket.close(status.WS_1008_POLICY_VIOLATION, message)
