"""The Starlette application: routes, error handlers and the lifespan that opens the
store, subscribes to ended sessions and runs the refresher."""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.frames import Frame, Opcode

from .. import _gc, _http, metrics
from ..auth import cookie_token, first_headers, header
from ..exceptions import PresenceError, Unauthorized
from ..models import JSON
from ..settings import Settings
from ..stores import SessionStore
from . import admin, errors, openapi, rest
from ._socket_route import SocketFirst
from .services import Services
from .sockets import session_socket

logger = logging.getLogger("presence")
access_logger = logging.getLogger("presence.access")


def web_dir() -> Path:
    """Where the browser package and the demo pages are: ``presence/static`` in an
    installed wheel (setup.py copies them there), else ``web/`` beside the package in a
    checkout or an editable install."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "static"
    return installed if (installed / "chat.html").is_file() else package.parent / "web"


WEB_DIR = web_dir()

API_PREFIX = "/api/v1/chat"
PRESENCE_PREFIX = "/api/v1/presence"


def create_app(settings: Settings | None = None, store: SessionStore | None = None) -> Starlette:
    """Builds the application.

    Args:
        settings: defaults to ``Settings()`` (memory store, development mode).
        store: a store to use instead of the one ``settings.redis_url`` names.

    Returns:
        A Starlette app; its lifespan opens and closes the store.
    """
    settings = settings or Settings()
    services = Services.build(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _http.limit_accept_error_log()
        for name in _SERVER_LOGGERS:
            logging.getLogger(name).addFilter(_REDACT)  # Once per process: a no-op after.
        async with services.run():
            async with metrics.Sampler(services, settings.metrics_dir).running() as sampler:
                app.state.sampler = sampler
                _log_start(settings, services.store)
                async with _gc.running():
                    yield

    middleware = [Middleware(AccessLog)]
    if settings.allowed_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.allowed_origins),
                allow_credentials=True,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["authorization", "content-type"],
            )
        )
    # The session socket is handed to its endpoint ahead of Starlette's stack, so that a
    # socket's life holds none of its frames (presence.asgi._socket_route).
    app = SocketFirst(
        prefix=API_PREFIX,
        endpoint=session_socket,
        access_log=AccessLog,
        routes=_routes(),
        middleware=middleware,
        exception_handlers={
            PresenceError: errors.handle_presence_error,
            HTTPException: errors.handle_http_exception,
        },
        lifespan=lifespan,
    )
    app.state.services = services
    return app


def _routes() -> list[BaseRoute]:
    # No Mount for the API (see api.routes): a socket held under one would keep the
    # nested router's frames and child scope for its life, and each request would be
    # matched twice. No other two routes match the same path (the socket's matches
    # only WebSocket scopes), so their order only decides how soon a request finds its
    # own: the heartbeat, the route most requests take, comes first.
    routes: list[BaseRoute] = [
        *rest.routes(API_PREFIX),
        *rest.presence_routes(PRESENCE_PREFIX),
        WebSocketRoute(f"{API_PREFIX}/sessions/{{session_id}}/ws", session_socket),
        Route("/", lambda request: RedirectResponse("/chat"), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_document, methods=["GET"]),
        Route("/chat", _page("chat.html"), methods=["GET"]),
        Route("/hub", _page("hub.html"), methods=["GET"]),
        *admin.routes(WEB_DIR),
    ]
    # Only the client modules and the demo's assets are public, never the rest of web/
    # (tests, node_modules, package metadata).
    for folder in ("src", "demo"):
        if (WEB_DIR / folder).is_dir():
            routes.append(Mount(f"/static/{folder}", StaticFiles(directory=WEB_DIR / folder)))
    return routes


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Which store serves and, when something is wrong, what, in words. Degraded
    answers ``PRESENCE_READYZ_DEGRADED_STATUS`` (200 unless an operator chose 503)."""
    services: Services = request.app.state.services
    status = await services.store.status()
    degraded = bool(status.get("degraded"))
    status["status"] = "degraded" if degraded else "ready"
    status["sockets"] = services.registry.sockets
    since = status.get("unreachable_since")
    if isinstance(since, float | int):
        status["unreachable_since"] = _iso(since)
    problem = _problem(status, None if since is None else time.time() - float(since))
    if problem is not None:
        status["problem"] = problem
    code = services.settings.readyz_degraded_status if degraded else 200
    return JSONResponse(status, status_code=code)


def _problem(status: dict[str, JSON], away_for: float | None) -> str | None:
    """What is wrong with the store, in a sentence, or None when nothing is."""
    pending = status.get("pending_writes") or 0
    journal = f"a journal of {pending} write{'' if pending == 1 else 's'}"
    if status.get("error"):
        # A refusal says itself what it is (the password, the ACL, TLS).
        return f"{status['error']}; requests that need Redis answer 503 store_misconfigured"
    if away_for is not None:
        return (
            f"Redis unreachable since {status['unreachable_since']} ({away_for:.0f} s ago); "
            f"serving from memory with {journal} to write back when it returns"
        )
    if pending:
        return f"Redis is back; writing back {journal} made while it was away"
    return None


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


async def metrics_endpoint(request: Request) -> Response:
    """Every metric family in the Prometheus text format (see presence.metrics), behind
    ``Authorization: Bearer <PRESENCE_METRICS_TOKEN>`` when that is set."""
    services: Services = request.app.state.services
    settings = services.settings
    authorization = header(first_headers(request.scope["headers"]), b"authorization")
    if not metrics.authorized(settings.metrics_token, authorization):
        raise Unauthorized("/metrics needs Authorization: Bearer <PRESENCE_METRICS_TOKEN>")
    sampler: metrics.Sampler = request.app.state.sampler
    sampler.sample()  # this process's gauges as of now; other workers' within 5 s
    await sampler.sample_rooms()
    return Response(metrics.render(settings.metrics_dir), media_type=metrics.CONTENT_TYPE)


async def openapi_document(request: Request) -> Response:
    services: Services = request.app.state.services
    return JSONResponse(openapi.document(services.settings))


def _page(name: str) -> Callable[[Request], Response]:
    def page(request: Request) -> Response:
        path = WEB_DIR / name
        if not path.is_file():
            raise HTTPException(404, f"{name} is not installed beside this package")
        # Hands a development-mode identity to a browser arriving without one, so the
        # page's own API calls and socket are authenticated by the cookie.
        services: Services = request.app.state.services
        raw = request.scope["headers"]
        authorization = header(first_headers(raw), b"authorization")
        if services.authenticator.identify(authorization, partial(cookie_token, raw)) is None:
            if services.authenticator.dev_mode:
                _, request.state.new_token = services.authenticator.mint_anonymous(
                    rest.client_address(request.scope)
                )
        response = FileResponse(path, headers={"cache-control": "no-store"})
        return rest.respond(request, response)

    return page


def _log_start(settings: Settings, store: SessionStore) -> None:
    if store.name == "memory":
        logger.warning(
            "REDIS_URL is not set: sessions are kept in memory and will not survive a restart"
        )
    if settings.webhook_urls:
        if store.name == "memory":
            logger.warning(
                "webhooks to %d URL(s) are not durable: without Redis they wait in this "
                "process's memory, and are lost if it stops before delivering them",
                len(settings.webhook_urls),
            )
        else:
            logger.info(
                "webhooks to %d URL(s), durable in Redis streams", len(settings.webhook_urls)
            )
    if settings.dev_mode:
        logger.warning(
            "DEVELOPMENT MODE: PRESENCE_JWT_SECRET is not set, so every browser is given an "
            "anonymous identity cookie. Set PRESENCE_JWT_SECRET in production."
        )
    if settings.ws_protocol == "websockets-sansio":
        logger.warning(
            "PRESENCE_WS_PROTOCOL=websockets-sansio: sockets run on uvicorn's stock protocol, "
            "without presence.wsproto's limits: ping, pong and continuation frames are not "
            "rate-limited, a message's fragments are not counted, a read is parsed whole, "
            "and a client that does not read is not dropped for the bytes it leaves unsent"
        )
    logger.info(
        "presence ready: store=%s ttl=%gs ping_interval=%gs",
        store.name,
        settings.session_ttl,
        settings.heartbeat_interval,
    )


class AccessLog:
    """Logs one line per HTTP request with the route's template, never the concrete path:
    session ids are capabilities and tokens can ride in query strings, so neither may
    reach a log. Each HTTP request also moves ``presence_http_request_duration_seconds``
    (by method, template and status: see presence.metrics).

    While the ``presence.access`` logger is off for INFO (``LOG_LEVEL=warning``), a
    WebSocket is handed straight to the app: ``__call__`` is not a coroutine function,
    so it returns the app's own awaitable and leaves no frame or closure behind for the
    socket's whole life (its close is counted by the socket endpoint). It is asked per
    request, so a level set after the app is built (a test's ``caplog.set_level``) is
    obeyed.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        kind = scope["type"]
        if kind == "http" or (kind == "websocket" and access_logger.isEnabledFor(logging.INFO)):
            return self._logged(scope, receive, send)
        return self.app(scope, receive, send)

    async def _logged(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
            elif message["type"] == "websocket.accept":
                status = 101
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            method = scope.get("method", "WS")
            route = _template(scope)
            if scope["type"] == "http":
                metrics.request_done(method, route, status, elapsed)
            if access_logger.isEnabledFor(logging.INFO):
                duration_ms = round(elapsed * 1000, 1)
                access_logger.info(
                    '%s "%s %s" %d %.1fms',
                    rest.client_address(scope),
                    method,
                    route,
                    status,
                    duration_ms,
                    # Fields of their own in LOG_FORMAT=json (presence.logs).
                    extra={
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": duration_ms,
                    },
                )


class RedactSecrets(logging.Filter):
    """Keeps capabilities out of the server's own log lines, which neither know nor
    care what a path segment or a header means.

    uvicorn logs each WebSocket handshake with its path and query string (a session id
    and a ``?token=``) at INFO, and its access log, when someone turns it on, every
    request's path. At DEBUG, the websockets library logs the handshake's request line
    and headers (``Cookie``, ``Authorization``) and every frame's text. Such records are
    rewritten in place, before any handler formats them: paths lose their session id
    and query string, credential headers their value, data frames their payload.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or not args:
            return True
        message = str(record.msg)
        if '"WebSocket %s"' in message and len(args) >= 2:  # uvicorn.error, handshakes
            record.args = (args[0], _redact_path(str(args[1])), *args[2:])
        elif message.startswith('%s - "%s %s HTTP/%s"') and len(args) >= 3:  # uvicorn.access
            record.args = (*args[:2], _redact_path(str(args[2])), *args[3:])
        elif message == "< %s %s %s" and len(args) == 3:  # websockets: the request line
            record.args = (args[0], _redact_path(str(args[1])), args[2])
        elif message in ("< %s: %s", "> %s: %s") and len(args) == 2:  # websockets: headers
            if str(args[0]).lower() in _CREDENTIAL_HEADERS:
                record.args = (args[0], "[redacted]")
        elif message in ("< %s", "> %s") and isinstance(args[0], Frame):  # websockets: frames
            frame = args[0]
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                record.args = (f"{frame.opcode.name} [{len(frame.data)} bytes]",)
        return True


_SERVER_LOGGERS = ("uvicorn.error", "uvicorn.access")
_REDACT = RedactSecrets()
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "sec-websocket-protocol", "proxy-authorization"}
)
# The segment after /sessions/ is a session id, unless it is the cleanup endpoint.
_SESSION_SEGMENT = re.compile(r"(?<=/sessions/)(?!cleanup(?:/|$))[^/?#]+")


def _redact_path(path: str) -> str:
    path, query, _ = path.partition("?")
    return _SESSION_SEGMENT.sub("{session_id}", path) + ("?[redacted]" if query else "")


def _template(scope: Scope) -> str:
    # An unmatched path may hold anything; never log it. Under a Mount, the endpoint of
    # a path that none of its routes matched is the Mount's router; a mounted app (the
    # static files) is logged by its mount point, never the rest of the path, which the
    # client chose.
    endpoint = scope.get("endpoint")
    if endpoint is None or isinstance(endpoint, Router):
        return "(no route)"
    if isinstance(endpoint, StaticFiles):
        return str(scope.get("root_path", "")) + "/{path}"
    path: str = scope["path"]
    for name, value in scope.get("path_params", {}).items():
        path = path.replace(str(value), "{" + name + "}")
    return path
