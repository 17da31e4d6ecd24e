"""A load process for the fan-out benchmark: watchers of a room, or members joining it.

A **watcher** is a socket that sends ``presence.watch`` and then only reads. Each
message it gets is timed and counted (messages, and bytes on the wire: the payload and
the frame's header) but parsed at most once per load process: a diff is the same text
for every watcher (it is numbered, one text a ``seq``), so its joins are read from the
first copy and looked up by ``seq`` for the others. A watcher keeps its own view of the
room's size, as a client applying sync plus diffs does, and notes when that view first
holds every member expected.

A **joiner** is a socket that sends ``presence.join`` at a time it is given (one clock
for every process: ``time.monotonic`` is the system's ``CLOCK_MONOTONIC``), and records
when it sent it.

Driven over stdin/stdout by the fan-out benchmark, one JSON object a line: ``open``,
``watch``, ``progress``, ``burst``, ``report``, ``exit``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from collections import Counter
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

# A sync of a room of 1,000 members is about 80 KB; the server's own cap on what it
# sends is what bounds a message, not this.
MAX_MESSAGE = 8 * 1024 * 1024


def _frame_bytes(payload: int) -> int:
    """A server frame's size on the wire: RFC 6455 header (unmasked) plus payload."""
    if payload < 126:
        return payload + 2
    if payload < 65536:
        return payload + 4
    return payload + 10


class Sock:
    """One socket of this process, a watcher or a joiner."""

    __slots__ = (
        "bytes",
        "complete_at",
        "count",
        "gaps",
        "messages",
        "receipts",
        "seq",
        "spec",
        "synced",
        "syncs",
        "ws",
    )

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.ws: ClientConnection | None = None
        self.reset()
        self.synced: asyncio.Event = asyncio.Event()

    def reset(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.syncs = 0
        self.gaps = 0
        self.seq = -1
        self.count = 0
        self.complete_at: float | None = None
        # (when, key): key is a diff's seq (an int) or a sync's index in Load.syncs.
        self.receipts: list[tuple[float, int | str]] = []


class Load:
    def __init__(self) -> None:
        self.socks: list[Sock] = []
        self.tasks: set[asyncio.Task[None]] = set()
        # "watcher" or "joiner": a joiner's messages are counted, never read.
        self.role = "watcher"
        self.room: str | None = None
        self.expected = -1
        # The joins of each diff of the room and the room's count after it, read once.
        self.diffs: dict[int, tuple[tuple[str, ...], int]] = {}
        # Syncs received during a burst, each read (they may differ: a sync is taken at
        # any moment): "s<i>" -> users.
        self.syncs: dict[str, tuple[str, ...]] = {}
        self.other: Counter[str] = Counter()
        self.closed = 0
        self.failures: Counter[str] = Counter()
        self.timeout = 60.0

    # --- commands -------------------------------------------------------------------

    async def open(self, command: dict[str, Any]) -> dict[str, Any]:
        """Opens the sockets given; each watcher then watches ``room`` and waits for
        its sync."""
        self.room = command.get("room")
        self.role = command.get("role", self.role)
        addresses = command["addresses"]
        gate = asyncio.Semaphore(command.get("concurrency", 64))
        watch = command.get("watch", False)
        started = time.monotonic()
        fresh = [Sock(spec) for spec in command["clients"]]
        self.socks += fresh
        results = await asyncio.gather(
            *(
                self._open(sock, addresses[i % len(addresses)], gate, watch)
                for i, sock in enumerate(fresh)
            )
        )
        return {
            "requested": len(fresh),
            "opened": sum(1 for ok in results if ok),
            "failed": dict(self.failures),
            "elapsed": time.monotonic() - started,
        }

    async def _open(self, sock: Sock, address: str, gate: asyncio.Semaphore, watch: bool) -> bool:
        spec = sock.spec
        async with gate:
            try:
                ws = await connect(
                    f"ws://127.0.0.1:{spec['port']}{spec['ws']}",
                    ping_interval=None,
                    open_timeout=self.timeout,
                    close_timeout=2,
                    max_size=MAX_MESSAGE,
                    max_queue=None,
                    local_addr=(address, 0),
                )
            except InvalidStatus as exc:
                self.failures[f"http_{exc.response.status_code}"] += 1
                return False
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                self.failures[type(exc).__name__] += 1
                return False
            try:
                first = json.loads(await asyncio.wait_for(ws.recv(), self.timeout))
            except (ConnectionClosed, TimeoutError, ValueError) as exc:
                self.failures[f"first_message_{type(exc).__name__}"] += 1
                await ws.close()
                return False
            if first.get("type") != "snapshot":
                self.failures[f"first_message_{first.get('type')}"] += 1
                await ws.close()
                return False
            sock.ws = ws
            task = asyncio.get_running_loop().create_task(self._read(sock))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            if watch and self.room is not None:
                return await self._watch(sock, self.room)
        return True

    async def _watch(self, sock: Sock, room: str) -> bool:
        assert sock.ws is not None
        sock.synced.clear()
        await sock.ws.send(json.dumps({"type": "presence.watch", "room": room}))
        try:
            await asyncio.wait_for(sock.synced.wait(), self.timeout)
        except TimeoutError:
            self.failures["no_sync"] += 1
            return False
        return True

    async def watch(self, command: dict[str, Any]) -> dict[str, Any]:
        """Every watcher here stops watching its room and watches ``room`` from now,
        with its counts reset (a fresh round)."""
        old, self.room = self.room, command["room"]
        self.diffs.clear()
        self.syncs.clear()
        self.other.clear()
        self.expected = -1
        gate = asyncio.Semaphore(command.get("concurrency", 64))

        async def one(sock: Sock) -> bool:
            async with gate:
                if sock.ws is None:
                    return False
                if old is not None and old != self.room:
                    await sock.ws.send(json.dumps({"type": "presence.unwatch", "room": old}))
                sock.reset()
                assert self.room is not None
                return await self._watch(sock, self.room)

        started = time.monotonic()
        results = await asyncio.gather(*(one(sock) for sock in self.socks))
        return {"synced": sum(results), "elapsed": time.monotonic() - started}

    def arm(self, command: dict[str, Any]) -> dict[str, Any]:
        """From now on the view of each watcher is complete at ``expected`` members;
        the counts start again from zero (the sync that started watching is not the
        burst's)."""
        self.expected = command["expected"]
        for sock in self.socks:
            sock.messages = sock.bytes = sock.syncs = sock.gaps = 0
            sock.receipts = []
            sock.complete_at = None
        self.other.clear()
        return {"armed": len(self.socks)}

    def progress(self) -> dict[str, Any]:
        return {
            "socks": len(self.socks),
            "open": sum(1 for s in self.socks if s.ws is not None),
            "complete": sum(1 for s in self.socks if s.complete_at is not None),
            "messages": sum(s.messages for s in self.socks),
            "last_receipt": max((s.receipts[-1][0] for s in self.socks if s.receipts), default=0),
        }

    async def burst(self, command: dict[str, Any]) -> dict[str, Any]:
        """Each joiner sends ``presence.join`` at ``at + i * spread / n``."""
        room, at, spread = command["room"], command["at"], command["spread"]
        n = len(self.socks)
        sent: dict[str, float] = {}
        late: list[float] = []

        async def one(i: int, sock: Sock) -> None:
            due = at + spread * i / max(1, n)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            assert sock.ws is not None
            message = json.dumps(
                {"type": "presence.join", "room": room, "meta": {"name": sock.spec["user"]}}
            )
            now = time.monotonic()
            await sock.ws.send(message)
            sent[sock.spec["user"]] = now
            late.append(now - due)

        await asyncio.gather(*(one(i, sock) for i, sock in enumerate(self.socks)))
        late.sort()
        return {"sent": sent, "late_ms_p99": _pct(late, 99) * 1000, "late_ms_max": late[-1] * 1000}

    def report(self, command: dict[str, Any]) -> dict[str, Any]:
        """What each watcher got since ``arm``, and when it first had each join: the
        latency of every (join, watcher) pair in 1 ms bins, and for each join the last
        watcher's time."""
        sent: dict[str, float] = command["sent"]
        t0: float = command["t0"]
        window: float = command["window"]
        histogram: Counter[int] = Counter()
        last_seen: dict[str, float] = {}
        seen_by: Counter[str] = Counter()
        per_window_max: list[int] = []
        watchers = []
        for sock in self.socks:
            have: set[str] = set()
            buckets: Counter[int] = Counter()
            for when, key in sock.receipts:
                buckets[int((when - t0) // window)] += 1
                users = self.diffs[key][0] if isinstance(key, int) else self.syncs[key]
                for user in users:
                    if user in have or user not in sent:
                        continue
                    have.add(user)
                    histogram[max(0, int((when - sent[user]) * 1000))] += 1
                    if when > last_seen.get(user, 0.0):
                        last_seen[user] = when
                    seen_by[user] += 1
            per_window_max.append(max(buckets.values(), default=0))
            watchers.append(
                {
                    "messages": sock.messages,
                    "bytes": sock.bytes,
                    "syncs": sock.syncs,
                    "gaps": sock.gaps,
                    "joins_had": len(have),
                    "complete_s": None if sock.complete_at is None else sock.complete_at - t0,
                }
            )
        return {
            "watchers": watchers,
            "per_window_max": per_window_max,
            "histogram_ms": {str(k): v for k, v in histogram.items()},
            "last_seen": last_seen,
            "seen_by": dict(seen_by),
            "closed": self.closed,
            "other": dict(self.other),
        }

    # --- reading ----------------------------------------------------------------------

    async def _read(self, sock: Sock) -> None:
        ws = sock.ws
        assert ws is not None
        try:
            async for message in ws:
                self._heard(sock, message if isinstance(message, str) else message.decode())
        except ConnectionClosed:
            pass
        sock.ws = None
        self.closed += 1

    def _heard(self, sock: Sock, text: str) -> None:
        now = time.monotonic()
        sock.messages += 1
        sock.bytes += _frame_bytes(len(text) if text.isascii() else len(text.encode()))
        # The server writes "type" first, then "room", then "seq" (compact JSON).
        if self.role == "joiner":
            return
        head = text[:300]
        if head.startswith('{"type":"presence.diff"'):
            seq = _seq(head)
            known = self.diffs.get(seq)
            if known is None:
                diff = json.loads(text)
                if diff.get("room") != self.room:
                    self.other["diff_of_another_room"] += 1
                    return
                users = tuple(m["user"] for m in diff["joins"])
                known = self.diffs[seq] = (users, diff["count"])
                if diff["leaves"] or diff["updates"]:
                    self.other["leaves_or_updates"] += len(diff["leaves"]) + len(diff["updates"])
            sock.receipts.append((now, seq))
            if seq <= sock.seq:
                return
            if sock.seq >= 0 and seq != sock.seq + 1:
                sock.gaps += 1  # the server syncs a watcher that fell behind
                return
            sock.seq = seq
            sock.count = known[1]
        elif head.startswith('{"type":"presence.sync"'):
            sync = json.loads(text)
            if sync.get("room") != self.room:
                self.other["sync_of_another_room"] += 1
                return
            key = f"s{len(self.syncs)}"
            self.syncs[key] = tuple(m["user"] for m in sync["members"])
            sock.receipts.append((now, key))
            sock.syncs += 1
            sock.seq = sync["seq"]
            sock.count = sync["count"]
            sock.synced.set()
        else:
            kind = json.loads(text).get("type", "?")
            self.other[str(kind)] += 1
            return
        if sock.complete_at is None and self.expected >= 0 and sock.count >= self.expected:
            sock.complete_at = now


def _seq(head: str) -> int:
    start = head.index('"seq":') + 6
    end = start
    while head[end].isdigit():
        end += 1
    return int(head[start:end])


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    load = Load()
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
        try:
            if name == "open":
                reply(await load.open(command))
                # Long-lived objects need not be scanned by every collection.
                gc.collect()
                gc.freeze()
            elif name == "watch":
                reply(await load.watch(command))
            elif name == "arm":
                reply(load.arm(command))
            elif name == "progress":
                reply(load.progress())
            elif name == "burst":
                reply(await load.burst(command))
            elif name == "report":
                reply(load.report(command))
            elif name == "exit":
                break
            else:
                reply({"error": f"unknown command {name!r}"})
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"})
    sys.stdout.flush()
    # The kernel closes every socket at once; no closing handshakes one by one.
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
