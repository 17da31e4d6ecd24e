"""python-socketio, the peer :mod:`bench.peers` measures beside Presence: an
``AsyncServer`` as an ASGI app on uvicorn, as a user of it would run it.

The sockets are on the websocket transport alone, Engine.IO pings every
``HEARTBEAT_INTERVAL`` seconds (5 s in the benchmark) with ``PRESENCE_PING_TIMEOUT``,
no handlers: the default namespace accepts every connection. ``GET /readyz`` and
``/healthz`` answer a JSON object (a plain ASGI app beside it), so the benchmark's
start-up wait and stall probe work as for the others.

uvicorn runs with the floor's options where they make sense (``bench._floor``, from
``presence.cli.uvicorn_options``): backlog 8192, no per-message compression, messages
capped at 64 KiB, no access log, no server header. Not the ones that are Presence's
own: the WebSocket protocol is uvicorn's stock ``websockets-sansio`` (not
``presence.wsproto``) and the HTTP protocol its stock ``httptools`` (not
``presence._http``), and uvicorn's protocol pings are off (``ws_ping_interval=None``),
since Engine.IO pings at its own level and a second keepalive would be work no user of
python-socketio asks for.

Run as ``python -m bench._peer_socketio serve --host H --port P``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

WS_PROTOCOL = "websockets-sansio"


async def _plain(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/readyz`` and ``/healthz``; the lifespan; 404 for anything else."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path in ("/readyz", "/healthz"):
        body = json.dumps({"status": "ready" if path == "/readyz" else "ok"}).encode()
        status = 200
    else:
        body, status = b"", 404
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(ping_interval: float, ping_timeout: float) -> Any:
    import socketio

    server = socketio.AsyncServer(
        async_mode="asgi",
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        transports=["websocket"],
        max_http_buffer_size=64 * 1024,
    )
    return socketio.ASGIApp(server, other_asgi_app=_plain)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench._peer_socketio")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from ._gcwatch import install

    install()

    import uvicorn

    app = create_app(
        float(os.environ.get("HEARTBEAT_INTERVAL", "5")),
        float(os.environ.get("PRESENCE_PING_TIMEOUT", "20")),
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        backlog=8192,
        http="httptools",
        ws=WS_PROTOCOL,
        ws_ping_interval=None,
        ws_per_message_deflate=False,
        ws_max_size=64 * 1024,
        access_log=False,
        log_level=os.environ.get("LOG_LEVEL", "warning"),
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
