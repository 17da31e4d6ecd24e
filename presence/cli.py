"""``presence serve``: runs the app under uvicorn with the settings from the environment."""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import sys
from collections.abc import Awaitable, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from ._http import HttpProtocol, NoDelayHttpToolsProtocol, no_delay
from .exceptions import ConfigError
from .settings import Settings
from .wsproto import FrameLimits, PresenceWebSocketProtocol

__all__ = ["NoDelayHttpToolsProtocol", "app_from_env", "main", "no_delay", "uvicorn_options"]


def app_from_env() -> ASGIApp:
    """The app factory uvicorn calls in each worker process."""
    from .asgi import create_app

    return StartupErrors(create_app(Settings.from_env(os.environ)))


class StartupErrors:
    """Reports a configuration error found at start-up (Redis refusing the password,
    say) as its one line, as a bad variable is reported before start-up, rather than
    as the traceback that Starlette sends uvicorn for any failed lifespan. uvicorn then
    logs "Application startup failed. Exiting." and exits with status 3.

    Every other scope is handed straight to the app: ``__call__`` is no coroutine
    function, so a socket's life holds no frame of it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "lifespan":
            return self._lifespan(scope, receive, send)
        return self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        failed: list[Message] = []

        async def hold_failure(message: Message) -> None:
            # Starlette sends the failure, then raises what caused it: the message is
            # held until the cause is known.
            if message["type"] == "lifespan.startup.failed":
                failed.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except ConfigError as exc:
            if not failed:  # not a failure of start-up
                raise
            await send({"type": "lifespan.startup.failed", "message": _config_error(exc)})
            return
        except BaseException:
            for message in failed:
                await send(message)
            raise
        for message in failed:
            await send(message)


def _config_error(exc: ConfigError) -> str:
    return f"presence: configuration error: {exc}"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings for a Presence server.

    The WebSocket keepalive is protocol ping frames every ``HEARTBEAT_INTERVAL`` with a
    ping timeout; per-message compression is refused (it costs ~64 KiB a socket with
    zlib's defaults, and presence messages are tiny); messages are capped at 64 KiB.

    The WebSocket protocol is :class:`presence.wsproto.PresenceWebSocketProtocol` with
    its limits bound (frames a second, unsent bytes): uvicorn takes a protocol factory as
    well as an import string, and a ``functools.partial`` of a module-level class and a
    frozen dataclass pickles, as uvicorn's Config must to reach ``--workers``.

    The listen backlog is 8192, not uvicorn's 2048: when 10,000 clients reconnect at
    once (a restart), 2048 overflowed and each dropped SYN cost its client a TCP
    retransmission of 1 s or more. The kernel caps it at ``net.core.somaxconn``.

    The HTTP protocol is httptools with TCP_NODELAY and bounds on each request's line
    and headers (``presence._http``). The bounds are bound to its class with a partial,
    not baked into a class made at run time: uvicorn pickles its config to each
    ``--workers`` process, and a partial of a module-level class pickles by name.
    """
    return {
        "backlog": 8192,
        "http": functools.partial(
            HttpProtocol,
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout,
        ),
        "ws": functools.partial(
            PresenceWebSocketProtocol, limits=FrameLimits.from_settings(settings)
        ),
        "ws_ping_interval": settings.heartbeat_interval,
        "ws_ping_timeout": settings.ping_timeout,
        "ws_per_message_deflate": False,
        "ws_max_size": settings.ws_max_message_bytes,
        "access_log": False,
        "log_config": logging_config(settings.log_level),
        "lifespan": "on",
        # Named, not guessed: the app factory's wrapper (StartupErrors) is no coroutine
        # function, which uvicorn would take for ASGI 2.
        "interface": "asgi3",
        "proxy_headers": True,
        "server_header": False,
        "timeout_graceful_shutdown": 5,
    }


def logging_config(level: str) -> dict[str, Any]:
    """One line per record on stderr; uvicorn's access log is off (ours templates paths)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            # Escapes what requests put into records (see presence.logs).
            "plain": {
                "()": "presence.logs.SafeFormatter",
                "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
            },
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "presence": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="presence", description=__doc__)
    parser.add_argument("--version", action="version", version=f"presence {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP and WebSocket server")
    serve.add_argument("--host", help="address to bind (default: HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: PORT or 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args(argv)

    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    try:
        settings = Settings.from_env(os.environ, **overrides)
    except ConfigError as exc:
        print(_config_error(exc), file=sys.stderr)
        return 2
    if args.workers < 1:
        print("presence: configuration error: --workers must be at least 1", file=sys.stderr)
        return 2
    if settings.dev_mode and settings.dev_secret is None and settings.redis_url is None:
        # Every worker must sign and verify anonymous identities with the same key. With
        # Redis (or a key file) the workers share the key kept there, which outlives
        # this launch too (presence.asgi.services).
        if settings.dev_secret_file is None:
            os.environ["PRESENCE_DEV_SECRET"] = secrets.token_urlsafe(32)

    import uvicorn

    uvicorn.run(
        "presence.cli:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        **uvicorn_options(settings),
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
