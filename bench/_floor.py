"""The floor: a bare Starlette app on exactly the uvicorn options Presence runs with.

It answers the same paths as the service with the least work that still looks like it:
the WebSocket is accepted, sent one small JSON message (as the service sends its
snapshot) and read until it closes; the heartbeat reads its body and answers a JSON
object of the same shape as a session. No auth, no store. Whatever the service costs
above this is what Presence itself adds.

Run as ``python -m bench._floor serve --host H --port P`` with the service's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from presence.cli import uvicorn_options
from presence.settings import Settings

_SESSION = {
    "id": "AAAAAAAAAAAAAAAAAAAAAA",
    "created_at": "2026-01-01T00:00:00.000Z",
    "last_seen": "2026-01-01T00:00:00.000Z",
    "expires_at": "2026-01-01T01:00:00.000Z",
    "transport": "websocket",
    "state": "active",
    "data": None,
}
_SNAPSHOT = json.dumps({"type": "snapshot", "session": _SESSION}, separators=(",", ":"))


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(_SNAPSHOT)
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def heartbeat(request: Request) -> Response:
    await request.body()
    return JSONResponse({**_SESSION, "transport": "http"})


async def readyz(request: Request) -> Response:
    return JSONResponse({"status": "ready"})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/readyz", readyz, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/api/v1/chat/sessions/{session_id}/heartbeat", heartbeat, methods=["POST"]),
            WebSocketRoute("/api/v1/chat/sessions/{session_id}/ws", socket),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench._floor")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    settings = Settings.from_env(os.environ, host=args.host, port=args.port)
    from ._gcwatch import install

    install()

    import uvicorn

    uvicorn.run(create_app(), host=args.host, port=args.port, **uvicorn_options(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
