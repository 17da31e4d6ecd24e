"""A TCP proxy that the tests put between the service and redis-server to cause network
faults on demand, without touching either process.

Modes, switched at any moment:

- ``heal()``: bytes pass through untouched.
- ``delay(seconds)``: every chunk, in both directions, arrives ``seconds`` late (latency
  above the client's socket timeout makes Redis look stalled, though it is healthy).
- ``blackhole()``: connections are accepted and read, and nothing ever comes back; what
  is read is thrown away, as a partition does. Connections that lived through a
  blackhole are reset on ``heal()``: their byte streams have holes in them.
- ``reset()``: every open connection is reset (RST) at once, and a new one is reset as
  soon as the client sends its first bytes: a peer vanishing mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class _Link:
    """One client connection and its upstream connection (if any)."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tainted = False
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self, *, rst: bool) -> None:
        for writer in (self.client, self.upstream):
            if writer is None or writer.transport.is_closing():
                continue
            if rst:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
            writer.transport.abort()
        try:
            current = asyncio.current_task()
        except RuntimeError:  # switched from outside the loop, between steps of a test
            current = None
        for task in self.tasks:
            if task is not current:
                task.cancel()


class Proxy:
    """Listens on 127.0.0.1 (a free port) and forwards to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.mode = "pass"
        self.latency = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for link in list(self._links):
            link.abort(rst=False)
        tasks = [task for link in self._links for task in link.tasks]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._links.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def heal(self) -> None:
        """Back to passing bytes; connections that saw a blackhole are reset."""
        self.mode = "pass"
        self.latency = 0.0
        for link in [link for link in self._links if link.tainted]:
            link.abort(rst=True)

    def delay(self, seconds: float) -> None:
        self.mode = "delay"
        self.latency = seconds

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def reset(self) -> None:
        self.mode = "reset"
        for link in list(self._links):
            link.abort(rst=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self._links.add(link)
        try:
            upstream_reader: asyncio.StreamReader | None = None
            if self.mode in ("pass", "delay"):
                try:
                    upstream_reader, link.upstream = await asyncio.open_connection(*self.target)
                except OSError:
                    link.abort(rst=True)
                    return
            # A connection made while faulted has no upstream; it cannot be healed later.
            link.tainted = link.upstream is None
            link.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            if upstream_reader is not None:
                back = asyncio.create_task(self._pump(link, upstream_reader, writer))
                link.tasks.append(back)
            await self._pump(link, reader, link.upstream)
        except asyncio.CancelledError:
            pass
        finally:
            self._links.discard(link)
            link.abort(rst=False)

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if self.mode == "reset":
                    link.abort(rst=True)
                    return
                if self.mode == "blackhole" or writer is None:
                    link.tainted = True
                    continue
                if self.mode == "delay":
                    await asyncio.sleep(self.latency)
                writer.write(data)
                await writer.drain()
            if writer is not None and not writer.transport.is_closing():
                writer.write_eof()
