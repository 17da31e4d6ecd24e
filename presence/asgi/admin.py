"""The admin page's edge: ``/admin``, its login and logout, and its socket.

Parse, call :mod:`presence.admin`, map what it raises through the one table
(:mod:`presence.asgi.errors`); nothing more. The admin's credential is a cookie of its
own (``presence_admin``: HttpOnly, SameSite=Strict, Secure over https), never a user's
identity cookie, or the token itself as a bearer (for scripts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING

from starlette import status
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..admin import CREDENTIAL_TTL
from ..auth import first_headers, header
from ..exceptions import Forbidden, InvalidBody, InvalidMessage, PresenceError, RateLimited
from ..limits import TokenBucket
from . import errors, protocol, rest

if TYPE_CHECKING:
    from pathlib import Path

    from .services import Services

logger = logging.getLogger("presence.admin")

COOKIE_NAME = "presence_admin"
ADMIN_PREFIX = "/api/v1/admin"
#: Messages an admin socket may queue unsent before it is taken as not reading (it is
#: sent a fresh snapshot once it reads again).
_MAX_QUEUED = 256


def routes(web: Path) -> list[BaseRoute]:
    """The admin page (its files in ``web``), login, logout and socket."""

    async def page(request: Request) -> Response:
        services = _services(request)
        services.gate.check_enabled()
        raw = request.scope["headers"]
        headers = first_headers(raw)
        try:
            services.gate.authorize(_bearer(headers), _credential(raw))
        except PresenceError:
            # The login form, said as a refusal: nothing of the page without the token.
            return _file(web / "admin-login.html", status.HTTP_401_UNAUTHORIZED)
        return _file(web / "admin.html", status.HTTP_200_OK)

    return [
        Route("/admin", page, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/login", login, methods=["POST"]),
        Route(f"{ADMIN_PREFIX}/logout", logout, methods=["POST"]),
        WebSocketRoute(f"{ADMIN_PREFIX}/ws", admin_socket),
    ]


async def login(request: Request) -> Response:
    """``{"token": ...}`` → 204 and the admin cookie."""
    services = _services(request)
    services.gate.check_enabled()
    headers = first_headers(request.scope["headers"])
    origin = header(headers, b"origin")
    if origin is not None and not _origin_allowed(services, request, headers):
        raise Forbidden("origin not allowed")
    body = await rest.read_json(request, headers, services)
    unknown = sorted(body.keys() - {"token"})
    if unknown:
        raise InvalidBody(f"unknown field {unknown[0]!r}")
    credential = services.gate.login(body.get("token"), rest.client_address(request.scope))
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.headers.append("set-cookie", _cookie(services, request, credential, CREDENTIAL_TTL))
    response.headers["cache-control"] = "no-store"
    return response


async def logout(request: Request) -> Response:
    services = _services(request)
    services.gate.check_enabled()
    headers = first_headers(request.scope["headers"])
    if not services.origins.allows_http(
        header(headers, b"origin"),
        header(headers, b"sec-fetch-site"),
        scheme=request.scope.get("scheme", "http"),
        host=header(headers, b"host"),
    ):
        raise Forbidden("origin not allowed")
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.headers.append("set-cookie", _cookie(services, request, "", 0))
    return response


class AdminSocket:
    """One admin socket: what the admin service sends to, through a bounded queue that
    one writer drains, so that a fan-out never waits on it."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._queue: deque[str] = deque()
        self._ready = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def offer(self, text: str) -> bool:
        if len(self._queue) >= _MAX_QUEUED:
            return False
        self._queue.append(text)
        self._ready.set()
        return True

    async def send(self, text: str) -> None:
        self._queue.append(text)
        self._ready.set()

    async def write(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                text = self._queue.popleft()
                if self.websocket.application_state is not WebSocketState.CONNECTED:
                    return
                await self.websocket.send_text(text)


async def admin_socket(websocket: WebSocket) -> None:
    services: Services = websocket.scope["app"].state.services
    scope = websocket.scope
    headers = first_headers(scope["headers"])
    try:
        services.gate.authorize(_bearer(headers), _credential(scope["headers"]))
        origin = header(headers, b"origin")
        if origin is not None and not services.origins.allows(
            origin, scheme=scope.get("scheme", "http"), host=header(headers, b"host")
        ):
            raise Forbidden("origin not allowed")
        admin = services.admin
        if admin is None:  # pragma: no cover - the gate is enabled only with the service
            raise Forbidden("the admin service is not running")
    except PresenceError as error:
        await websocket.send_denial_response(errors.response(error))
        return
    await websocket.accept()
    socket = AdminSocket(websocket)
    writer = asyncio.create_task(socket.write(), name="presence-admin-writer")
    settings = services.settings
    bucket = TokenBucket(
        settings.ws_messages_per_second, settings.ws_message_burst, time.monotonic()
    )
    try:
        await admin.attach(socket)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if not bucket.allow(time.monotonic()):
                flood = RateLimited("too many messages")
                await socket.send(errors.in_band(flood))
                await asyncio.sleep(0)
                with contextlib.suppress(RuntimeError, OSError):
                    await _drain_and_close(socket, writer, errors.close_code(flood), flood.message)
                break
            try:
                text = message.get("text")
                if text is None:
                    raise InvalidMessage("messages must be text JSON")
                parsed = protocol.parse_admin(text)
                if parsed.kind == "admin.refresh":
                    await socket.send(await admin.snapshot())
                else:
                    assert parsed.id is not None
                    await socket.send(await admin.replay(parsed.id))
            except PresenceError as error:
                await socket.send(errors.in_band(error))
    except (WebSocketDisconnect, OSError):
        pass
    finally:
        await admin.detach(socket)
        writer.cancel()
        with contextlib.suppress(
            asyncio.CancelledError, WebSocketDisconnect, RuntimeError, OSError
        ):
            await writer


async def _drain_and_close(
    socket: AdminSocket, writer: asyncio.Task[None], code: int, reason: str
) -> None:
    # What was queued (the error saying why) goes out before the close.
    for _ in range(100):
        if not socket._queue:
            break
        await asyncio.sleep(0.01)
    writer.cancel()
    await socket.websocket.close(code, reason)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _bearer(headers: dict[bytes, bytes]) -> str | None:
    value = header(headers, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _credential(raw: list[tuple[bytes, bytes]]) -> str | None:
    found = None
    for name, value in raw:
        if name == b"cookie" and COOKIE_NAME.encode() in value:
            jar: SimpleCookie = SimpleCookie()
            with contextlib.suppress(Exception):
                jar.load(value.decode("latin-1"))
            if COOKIE_NAME in jar:
                found = jar[COOKIE_NAME].value
    return found


def _origin_allowed(services: Services, request: Request, headers: dict[bytes, bytes]) -> bool:
    return services.origins.allows(
        header(headers, b"origin"),
        scheme=request.scope.get("scheme", "http"),
        host=header(headers, b"host"),
    )


def _cookie(services: Services, request: Request, value: str, max_age: int) -> str:
    secure = services.settings.cookie_secure
    if secure is None:
        secure = request.url.scheme == "https"
    parts = [
        f"{COOKIE_NAME}={value}",
        "Path=/",
        f"Max-Age={max_age}",
        "HttpOnly",
        "SameSite=Strict",
    ]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def _file(path: Path, status_code: int) -> Response:
    if not path.is_file():
        return Response(f"{path.name} is not installed beside this package", 404)
    return FileResponse(
        path,
        status_code=status_code,
        headers={"cache-control": "no-store", "x-frame-options": "DENY"},
    )
