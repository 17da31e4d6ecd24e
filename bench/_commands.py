"""The loop a load-client process (``bench._load``, ``bench._fanout_load``) runs: one JSON
command a line on stdin, one JSON reply a line on stdout, until ``exit`` or the end."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

Handler = Callable[[dict[str, Any]], Any]


def frozen(value: Any) -> Any:
    """``value``, once the objects made so far (the sockets just opened) are out of the
    collector's way: long-lived objects need not be scanned by every collection."""
    gc.collect()
    gc.freeze()
    return value


async def serve(handlers: Mapping[str, Handler]) -> None:
    """Answers each command with its handler's result (awaited when it is a coroutine),
    an unknown one or a failing handler with ``{"error": ...}``; then ends the process."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    def reply(value: dict[str, Any]) -> None:
        out.write(json.dumps(value).encode() + b"\n")
        out.flush()

    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        name = command.get("cmd")
        if name == "exit":
            break
        handler = handlers.get(name)
        if handler is None:
            reply({"error": f"unknown command {name!r}"})
            continue
        try:
            value = handler(command)
            reply(await value if inspect.isawaitable(value) else value)
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"})
    sys.stdout.flush()
    # The kernel closes every socket at once; no closing handshakes one by one.
    os._exit(0)
