"""The session socket's route, taken ahead of Starlette's stack.

A socket's ASGI call lasts as long as the socket, and so does every frame on its way
down to the endpoint. Through Starlette those are its app, ServerErrorMiddleware,
ExceptionMiddleware (with a WebSocket of its own and two closures), the router, the
route and ``websocket_session`` (two closures and a second WebSocket): about 3.5 KiB
a socket of the 16.5 KiB traced (``bench/RESULTS.md``, "What one socket allocates",
before this module: ``starlette/routing.py``, ``middleware/exceptions.py``,
``_exception_handler.py``, ``applications.py``). The socket endpoint maps its own
errors (``presence.asgi.sockets``) and needs none of that, so a WebSocket scope on the
socket's path goes to it straight, through the access log (no frame of its own
unless ``presence.access`` logs INFO). Everything else, and a socket under a
``root_path``, goes the ordinary way, where the same endpoint has a route of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

Endpoint = Callable[[WebSocket], Coroutine[Any, Any, None]]


class SocketFirst(Starlette):
    """A Starlette app that hands a WebSocket on ``{prefix}/sessions/{id}/ws`` to
    ``endpoint`` itself, with the path parameter and endpoint in the scope as the
    router would set them (the access log's route template reads them).

    Args:
        prefix: the API prefix the socket's path begins with.
        endpoint: the socket endpoint (``session_socket``).
        access_log: the access log's middleware class, wrapped around the endpoint.
        **kwargs: Starlette's own.
    """

    def __init__(
        self,
        *,
        prefix: str,
        endpoint: Endpoint,
        access_log: Callable[[ASGIApp], ASGIApp],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._socket_path = re.compile(re.escape(prefix) + r"/sessions/([^/]+)/ws")
        self._endpoint = endpoint
        self._logged_socket = access_log(self._socket)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A coroutine function, as ASGI 3 callers check for (one frame a socket).
        if scope["type"] == "websocket" and not scope.get("root_path"):
            match = self._socket_path.fullmatch(scope["path"])
            if match is not None:
                scope["app"] = self
                scope["endpoint"] = self._endpoint
                scope["path_params"] = {"session_id": match[1]}
                await self._logged_socket(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _socket(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        return self._endpoint(WebSocket(scope, receive=receive, send=send))
