"""A WebSocket client run as its own process, so a test can SIGSTOP it.

Usage: python -m tests.ws_client URL. It prints "open" once connected, then only
answers pings (which websockets does by itself) until it is killed.
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.client import connect


async def main(url: str) -> None:
    async with connect(url, ping_interval=None, compression=None) as websocket:
        await websocket.recv()  # the snapshot
        print("open", flush=True)
        await websocket.wait_closed()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
