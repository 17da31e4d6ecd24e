"""``presence serve``: runs the app under uvicorn with the settings from the environment."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from ._http import HttpProtocol, NoDelayHttpToolsProtocol, no_delay
from .exceptions import ConfigError
from .settings import VARIABLES, Settings
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

    With ``PRESENCE_WS_PROTOCOL=websockets-sansio`` it is uvicorn's stock protocol of that
    name instead, without those limits (the README says which; start-up logs it).

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
        "ws": _ws_protocol(settings),
        "ws_ping_interval": settings.heartbeat_interval,
        "ws_ping_timeout": settings.ping_timeout,
        "ws_per_message_deflate": False,
        "ws_max_size": settings.ws_max_message_bytes,
        "access_log": False,
        "log_config": logging_config(settings.log_level, settings.log_format),
        "lifespan": "on",
        # Named, not guessed: the app factory's wrapper (StartupErrors) is no coroutine
        # function, which uvicorn would take for ASGI 2.
        "interface": "asgi3",
        "proxy_headers": True,
        "server_header": False,
        "timeout_graceful_shutdown": 5,
    }


def _ws_protocol(settings: Settings) -> Any:
    if settings.ws_protocol == "websockets-sansio":
        return "websockets-sansio"
    return functools.partial(PresenceWebSocketProtocol, limits=FrameLimits.from_settings(settings))


def logging_config(level: str, log_format: str = "plain") -> dict[str, Any]:
    """One line per record on stderr, as text or (``LOG_FORMAT=json``) a JSON object;
    uvicorn's access log is off (ours templates paths)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            # Escapes what requests put into records (see presence.logs).
            "plain": {
                "()": "presence.logs.SafeFormatter",
                "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
            },
            "json": {"()": "presence.logs.JsonFormatter"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "presence": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }


def environment_help() -> str:
    """The environment variables with their defaults, for ``--help`` (from
    :data:`presence.settings.VARIABLES`)."""
    rows = [(v.name, v.shown_default(), v.meaning) for v in VARIABLES]
    name_width = max(len(name) for name, _, _ in rows)
    default_width = max(len(default) for _, default, _ in rows)
    lines = ["environment variables (read once at start-up):"]
    lines.append(f"  {'variable':<{name_width}}  {'default':<{default_width}}  meaning")
    for name, default, meaning in rows:
        lines.append(f"  {name:<{name_width}}  {default:<{default_width}}  {meaning}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``presence [serve] [--host H] [--port P] [--workers N]``: with no command, serves."""
    epilog = environment_help()
    parser = argparse.ArgumentParser(
        prog="presence",
        description="Presence: browser chat sessions and who is online. "
        "With no command, `presence serve`.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"presence {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{serve}")
    serve = commands.add_parser(
        "serve",
        help="run the HTTP and WebSocket server",
        description="Runs the HTTP and WebSocket server under uvicorn.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="address to bind (default: HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: PORT or 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or (arguments[0].startswith("-") and arguments[0] not in _TOP_LEVEL):
        # No command (`python -m presence`, `presence --port 8080`): serve.
        arguments.insert(0, "serve")
    args = parser.parse_args(arguments)

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

    with _metrics_folder(settings, args.workers):
        uvicorn.run(
            "presence.cli:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=args.workers,
            **uvicorn_options(settings),
        )
    return 0


@contextlib.contextmanager
def _metrics_folder(settings: Settings, workers: int) -> Iterator[None]:
    """Under ``--workers``, prometheus-client's multiprocess mode: each worker writes its
    metrics to files in ``PROMETHEUS_MULTIPROC_DIR`` and a scrape adds them up. The
    variable must be set before a worker imports the library (each worker is a new
    interpreter that inherits this environment); when the operator has not set it, a
    folder of this launch's own is made, and removed (and unnamed) at exit. A folder
    given is wiped of a previous launch's files, as the library asks."""
    from . import metrics

    if settings.metrics_dir is not None:
        metrics.wipe(settings.metrics_dir)
        yield
        return
    if workers < 2:
        yield
        return
    folder = tempfile.mkdtemp(prefix="presence-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


# Flags of `presence` itself, not of `serve`.
_TOP_LEVEL = frozenset({"-h", "--help", "--version"})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
