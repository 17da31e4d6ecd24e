"""``python -m bench._trace KIND --port P --sockets N --out FILE``: the service or the
floor in this process under tracemalloc, with N sockets opened by a load process, and
what they allocated: in all, by file and by line, per socket.

Tracing starts after a few warm-up sockets, so imports and first-use caches are not
counted. Run with the server's environment (see :class:`bench._servers.ServerConfig`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import uvicorn

from presence.cli import uvicorn_options
from presence.settings import Settings

from . import _clients, _procs


async def trace(kind: str, port: int, sockets: int, top: int = 60) -> dict[str, Any]:
    settings = Settings.from_env(os.environ, port=port)
    if kind == "service":
        from presence.asgi.app import create_app

        app = create_app(settings)
    else:
        from ._floor import create_app as create_floor

        app = create_floor()
    options = uvicorn_options(settings)
    options["log_config"] = None
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.05)
    warmup = 10
    owners = _clients.users_for(sockets + warmup, 5, "t")
    if kind == "service":
        assert settings.redis_url is not None
        clients = await _clients._create_sessions(settings.redis_url, owners, 3600.0, 64)
    else:
        clients = [_clients.Client(user, f"{i:022d}") for i, user in enumerate(owners)]
    tokens = _clients.tokens_for(clients)
    specs = [c.spec(port, tokens) for c in clients]
    addresses = _clients.ADDRESSES.take(len(specs))
    loader = _clients.Loader(f"trace-{kind}")
    try:
        first = {"cmd": "open", "clients": specs[:warmup], "addresses": addresses}
        await asyncio.to_thread(loader.request, first)
        await asyncio.sleep(1)
        gc.collect()
        rss_before = _procs.rss_kib(os.getpid())
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        # Slowly, and trying refused sockets again: tracemalloc slows the server down.
        rest = {
            "cmd": "open",
            "clients": specs[warmup:],
            "addresses": addresses,
            "concurrency": 16,
            "retries": 3,
        }
        opened = (await asyncio.to_thread(loader.request, rest, 600.0))["opened"]
        await asyncio.sleep(2)
        gc.collect()
        after = tracemalloc.take_snapshot()
        rss_after = _procs.rss_kib(os.getpid())
        tracemalloc.stop()
    finally:
        await asyncio.to_thread(loader.close)
        server.should_exit = True
        await serving
    by_line = after.compare_to(before, "lineno")
    by_file = after.compare_to(before, "filename")
    total = sum(stat.size_diff for stat in by_line)
    return {
        "kind": kind,
        "sockets": opened,
        "traced_bytes_per_socket": total / opened if opened else None,
        "rss_kib_per_socket_under_trace": (rss_after - rss_before) / opened if opened else None,
        "by_file": [
            (_where(stat.traceback[0].filename), stat.size_diff / opened, stat.count_diff / opened)
            for stat in by_file[:top]
        ],
        "by_line": [
            (
                f"{_where(stat.traceback[0].filename)}:{stat.traceback[0].lineno}",
                stat.size_diff / opened,
                stat.count_diff / opened,
            )
            for stat in by_line[:top]
        ],
    }


def _where(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", f"{_procs.REPO}/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench._trace")
    parser.add_argument("kind", choices=["service", "floor"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sockets", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = asyncio.run(trace(args.kind, args.port, args.sockets))
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
