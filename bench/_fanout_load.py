"""A load process for the fan-out benchmark: watchers of a room, or members joining it.

A **watcher** is a socket that sends ``presence.watch`` and then only reads. Each
message it gets is timed and counted (messages, and bytes on the wire: the payload and
the frame's header) but parsed at most once per load process: a diff is the same text
for every watcher (it is numbered, one text a ``seq``), so its joins are read from the
first copy and looked up by ``seq`` for the others. A watcher keeps its own view of the
room's size, as a client applying sync plus diffs does, and notes when that view first
holds every member expected.

The sockets are a lean WebSocket client of this module's own (an ``asyncio.Protocol``
reading frames straight from the transport's buffer), not the ``websockets`` client
that :mod:`bench._load` uses: 10,000 watchers on one CPU each reading a diff a window
would otherwise spend more time in the client's per-message machinery than the
servers spend sending, and the latency measured would be the client's. It behaves as
a browser does on the wire: it offers per-message compression (the server refuses
it), masks what it sends, answers pings and sends none.

A **joiner** is a socket that sends ``presence.join`` at a time it is given (one clock
for every process: ``time.monotonic`` is the system's ``CLOCK_MONOTONIC``), and records
when it sent it.

For the crash-reclaim benchmark (:mod:`bench.reclaim`) two more roles: a **member** is
a socket that attaches further sessions of its user (``session.attach``, each answered
by its snapshot) and joins one room with each, as a tab carrying several sessions
does; a **leaves** watcher watches several rooms and counts the leaves it is told,
by reason, noting when its view of every room is down to the count expected.

For the capacity benchmark (:mod:`bench.capacity`) a **room** socket: opened with
role ``room``, it later sends ``presence.join`` for the room its spec names and then
``presence.watch`` of the same room (``join_watch``), each accepted when its sync comes
(joining implies watching, and watching again sends a fresh sync); from then on it
reads as a leaves watcher does, counting the leaves of its room by reason, and the
``ended`` and ``error`` messages it is sent (``room_status``, ``open_map``).

Driven over stdin/stdout by the fan-out benchmark, one JSON object a line: ``open``,
``watch``, ``progress``, ``burst``, ``report``, ``exit``; by the reclaim benchmark
``open``, ``watch_rooms``, ``arm_leaves``, ``progress``, ``leaves_report``; and by the
capacity benchmark ``open``, ``join_watch``, ``arm_leaves``, ``room_status``,
``open_map``, ``left``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time
from collections import Counter
from typing import Any

from bench._commands import frozen, serve
from bench._load import _FINAL  # refusals no retry changes, as web/src/presenceRoom.js
from bench._stats import percentile


class Client(asyncio.Protocol):
    """One WebSocket, client side: the handshake, then frames parsed as they come.

    Text messages go to ``on_text(payload, wire_bytes)`` as bytes; pings are answered;
    a close is answered and ends the connection.
    """

    def __init__(self, path: str, host: str, on_text: Any) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.fragments: list[bytes] = []
        loop = asyncio.get_running_loop()
        # The handshake's outcome: None when upgraded, else why not.
        self.handshake: asyncio.Future[str | None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_result("connection_lost")
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")]).split()
            del buffer[: end + 4]
            if len(status) < 2 or status[1] != b"101":
                code = status[1].decode() if len(status) > 1 else "?"
                self.handshake.set_result(f"http_{code}")
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            self.handshake.set_result(None)
        start, size = 0, len(buffer)
        while size - start >= 2:
            first, second = buffer[start], buffer[start + 1]
            length, offset = second & 0x7F, 2
            if length == 126:
                if size - start < 4:
                    break
                length, offset = int.from_bytes(buffer[start + 2 : start + 4]), 4
            elif length == 127:
                if size - start < 10:
                    break
                length, offset = int.from_bytes(buffer[start + 2 : start + 10]), 10
            if size - start < offset + length:
                break
            payload = bytes(buffer[start + offset : start + offset + length])
            start += offset + length
            self._frame(first, payload, offset + length)
        del buffer[:start]

    def _frame(self, first: int, payload: bytes, wire: int) -> None:
        opcode = first & 0x0F
        if opcode in (1, 0):  # text, or a continuation of one
            self.fragments.append(payload)
            if first & 0x80:
                text = b"".join(self.fragments) if len(self.fragments) > 1 else payload
                self.fragments = []
                self.on_text(text, wire)
        elif opcode == 9:
            self._send(0xA, payload)  # pong
        elif opcode == 8:
            self._send(0x8, payload[:2])
            assert self.transport is not None
            self.transport.close()

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        length = len(payload)
        if length < 126:
            header = bytes([0x80 | opcode, 0x80 | length])
        elif length < 65536:
            header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2)
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8)
        mask = os.urandom(4)
        repeated = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(payload) ^ int.from_bytes(repeated)).to_bytes(length)
        self.transport.write(header + mask + masked)


class Sock:
    """One socket of this process, a watcher or a joiner."""

    __slots__ = (
        "bytes",
        "complete_at",
        "count",
        "gaps",
        "joined",
        "last_leave",
        "leaves",
        "members",
        "messages",
        "receipts",
        "seq",
        "spec",
        "synced",
        "syncs",
        "views",
        "ws",
    )

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.ws: Client | None = None
        # The room role: its join and its watch were both accepted.
        self.joined = False
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
        # The leaves role: room -> [seq, count]; leaves counted by reason; the last's time.
        self.views: dict[str, list[int]] = {}
        # room -> its members in this view (None: not known, after a truncated diff
        # or a sync of part of the room, until the next sync).
        self.members: dict[str, set[str] | None] = {}
        self.leaves: Counter[str] = Counter()
        self.last_leave: float | None = None
        # (when, key): key is a diff's seq (an int) or a sync's index in Load.syncs.
        self.receipts: list[tuple[float, int | str]] = []


class Load:
    def __init__(self) -> None:
        self.socks: list[Sock] = []
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
        # The member role: each session attached waits for its snapshot here.
        self.snapshots: dict[str, asyncio.Future[None]] = {}
        # The leaves role: each diff read once, (room, seq) -> (leaves by reason, count,
        # (users left, users joined) or None when truncated);
        # the count each room's view is complete at.
        self.room_diffs: dict[tuple[str, int], tuple[dict[str, int], int, Any]] = {}
        self.room_expected: dict[str, int] = {}
        # The leaves role: user -> (when first told here, reason) of each leave told.
        self.left: dict[str, tuple[float, str]] = {}
        # The room role: joins and watches accepted (answered by their sync), and the
        # code of the error a socket was sent while one was waiting (its step refused).
        self.accepted: Counter[str] = Counter()
        self.refused: dict[int, str] = {}
        self.refusals: Counter[str] = Counter()

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
        loop = asyncio.get_running_loop()
        first: asyncio.Future[bytes] = loop.create_future()

        def on_text(payload: bytes, wire: int) -> None:
            if not first.done():
                first.set_result(payload)
            else:
                self._heard(sock, payload, wire)

        async with gate:
            client = Client(spec["ws"], f"127.0.0.1:{spec['port']}", on_text)
            try:
                await asyncio.wait_for(
                    loop.create_connection(
                        lambda: client, "127.0.0.1", spec["port"], local_addr=(address, 0)
                    ),
                    self.timeout,
                )
                failure = await asyncio.wait_for(client.handshake, self.timeout)
                if failure is not None:
                    self.failures[failure] += 1
                    return False
                kind = json.loads(await asyncio.wait_for(first, self.timeout)).get("type")
            except (OSError, TimeoutError, ValueError) as exc:
                self.failures[type(exc).__name__] += 1
                if client.transport is not None:
                    client.transport.close()
                return False
            if kind != "snapshot":
                self.failures[f"first_message_{kind}"] += 1
                assert client.transport is not None
                client.transport.close()
                return False
            sock.ws = client
            client.closed.add_done_callback(lambda _: self._lost(sock))
            if watch and self.room is not None:
                return await self._watch(sock, self.room)
            if self.role == "member":
                return await self._hold(sock)
        return True

    async def _hold(self, sock: Sock) -> bool:
        """Attaches the member's further sessions, one at a time (each answered by its
        snapshot), then joins each session to its room."""
        assert sock.ws is not None
        spec = sock.spec
        loop = asyncio.get_running_loop()
        for session in spec["attach"]:
            waiter = self.snapshots[session] = loop.create_future()
            sock.ws.send_text(json.dumps({"type": "session.attach", "session": session}))
            try:
                await asyncio.wait_for(waiter, self.timeout)
            except TimeoutError:
                self.failures["no_attach_snapshot"] += 1
                return False
            finally:
                self.snapshots.pop(session, None)
        for session, room in zip(spec["sessions"], spec["rooms"], strict=True):
            sock.ws.send_text(
                json.dumps(
                    {"type": "presence.join", "room": room, "meta": None, "session": session}
                )
            )
        return True

    def _lost(self, sock: Sock) -> None:
        sock.ws = None
        self.closed += 1

    async def _watch(self, sock: Sock, room: str) -> bool:
        assert sock.ws is not None
        sock.synced.clear()
        sock.ws.send_text(json.dumps({"type": "presence.watch", "room": room}))
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
                    sock.ws.send_text(json.dumps({"type": "presence.unwatch", "room": old}))
                sock.reset()
                assert self.room is not None
                return await self._watch(sock, self.room)

        started = time.monotonic()
        results = await asyncio.gather(*(one(sock) for sock in self.socks))
        return {"synced": sum(results), "elapsed": time.monotonic() - started}

    async def watch_rooms(self, command: dict[str, Any]) -> dict[str, Any]:
        """Each watcher here watches every room of ``rooms``, one after another (each
        answered by its sync)."""
        self.role = "leaves"
        rooms = command["rooms"]
        gate = asyncio.Semaphore(command.get("concurrency", 16))

        async def one(sock: Sock) -> bool:
            async with gate:
                for room in sock.spec.get("rooms", rooms):
                    if sock.ws is None:
                        return False
                    sock.synced.clear()
                    sock.ws.send_text(json.dumps({"type": "presence.watch", "room": room}))
                    try:
                        await asyncio.wait_for(sock.synced.wait(), self.timeout)
                    except TimeoutError:
                        self.failures["no_sync"] += 1
                        return False
                return True

        started = time.monotonic()
        results = await asyncio.gather(*(one(sock) for sock in self.socks))
        return {
            "synced": sum(results),
            "counts": Counter(f"{r}={v[1]}" for s in self.socks for r, v in s.views.items()),
            "elapsed": time.monotonic() - started,
        }

    async def join_watch(self, command: dict[str, Any]) -> dict[str, Any]:
        """Each open socket here joins the room its spec names, then watches it; each
        step is accepted when its sync comes (an error or no sync within the timeout is
        counted, by kind)."""
        gate = asyncio.Semaphore(command.get("concurrency", 64))

        retries = command.get("retries", 5)

        async def step(sock: Sock, kind: str, room: str) -> bool:
            message: dict[str, Any] = {"type": kind, "room": room}
            if kind == "presence.join":
                message["meta"] = None
            for attempt in range(retries + 1):
                if sock.ws is None:
                    self.failures[f"closed_before_{kind}"] += 1
                    return False
                sock.synced.clear()
                sock.ws.send_text(json.dumps(message))
                try:
                    await asyncio.wait_for(sock.synced.wait(), self.timeout)
                except TimeoutError:
                    self.failures[f"no_sync_after_{kind}"] += 1
                    return False
                code = self.refused.pop(id(sock), None)
                if code is None:
                    self.accepted[kind] += 1
                    return True
                # Refused: sent again for a passing reason after a full-jitter delay
                # from 1 s, doubling, as the JS client does (web/src/presenceRoom.js);
                # the refusal is counted either way.
                self.refusals[f"{kind} refused: {code}"] += 1
                if code in _FINAL or attempt == retries:
                    break
                await asyncio.sleep(random.random() * min(30.0, 2.0**attempt))
            self.failures[f"{kind} refused: {code}"] += 1
            return False

        async def one(sock: Sock) -> bool:
            async with gate:
                if sock.ws is None:
                    return False
                room = sock.spec["room"]
                sock.joined = await step(sock, "presence.join", room) and await step(
                    sock, "presence.watch", room
                )
                return sock.joined

        started = time.monotonic()
        results = await asyncio.gather(*(one(sock) for sock in self.socks))
        return {
            "done": sum(results),
            "accepted": dict(self.accepted),
            # Every refusal, those tried again and accepted later included.
            "refusals": dict(self.refusals),
            "failed": dict(self.failures),
            "other": dict(self.other),
            "elapsed": time.monotonic() - started,
        }

    def room_status(self) -> dict[str, Any]:
        """The room role's counts: sockets open and closed, leaves told by reason
        (summed over watchers: a leave a room's 100 watchers see counts 100 times), the
        users told a leave, gaps, syncs, and every other message by kind."""
        leaves: Counter[str] = Counter()
        for sock in self.socks:
            leaves.update(sock.leaves)
        leaves.pop("(joins)", None)
        return {
            "socks": len(self.socks),
            "open": sum(1 for s in self.socks if s.ws is not None),
            "closed": self.closed,
            "leaves": dict(leaves),
            "users_left": len(self.left),
            "gaps": sum(s.gaps for s in self.socks),
            "syncs": sum(s.syncs for s in self.socks),
            "other": dict(self.other),
            "failed": dict(self.failures),
        }

    def open_map(self) -> dict[str, Any]:
        """One character a socket, in the order opened: "2" open and (in the room role)
        its join and watch accepted, "1" open, "0" not."""
        return {
            "map": "".join(
                ("2" if s.joined else "1") if s.ws is not None else "0" for s in self.socks
            )
        }

    def left_users(self) -> dict[str, Any]:
        """Each user told a leave here since ``arm_leaves``, with its reason."""
        return {"left": {user: why for user, (_when, why) in self.left.items()}}

    def arm_leaves(self, command: dict[str, Any]) -> dict[str, Any]:
        """From now on a watcher is complete when each room's view holds
        ``expected[room]`` members; leaves and syncs are counted from zero."""
        self.room_expected = command["expected"]
        self.left.clear()
        for sock in self.socks:
            sock.leaves = Counter()
            sock.last_leave = sock.complete_at = None
            sock.syncs = sock.gaps = sock.messages = sock.bytes = 0
        self.other.clear()
        return {"armed": len(self.socks)}

    def views_wrong(self, command: dict[str, Any]) -> dict[str, Any]:
        """How many watchers' views differ from ``members`` (room -> its users): a view
        with another count, or another set of members where it knows them, or a room
        of the watcher's with no view at all."""
        members = {room: set(users) for room, users in command["members"].items()}
        views = wrong = unknown = missing = 0
        examples: list[Any] = []
        for sock in self.socks:
            for room in sock.spec.get("rooms", ()):
                view = sock.views.get(room)
                if view is None:
                    missing += 1
                    continue
                views += 1
                held = sock.members.get(room)
                expected = members.get(room, set())
                if held is None:
                    unknown += 1
                bad = view[1] != len(expected) or (held is not None and held != expected)
                if bad:
                    wrong += 1
                    if len(examples) < 3:
                        examples.append(
                            [
                                room,
                                view[1],
                                len(expected),
                                sorted(expected - (held or set()))[:3],
                                sorted((held or set()) - expected)[:3],
                            ]
                        )
        return {
            "views": views,
            "wrong": wrong,
            "unknown": unknown,
            "missing": missing,
            "examples": examples,
        }

    def leaves_report(self, command: dict[str, Any]) -> dict[str, Any]:
        """Each watcher's leaves by reason, and its times since ``t0``."""
        t0 = command["t0"]
        return {
            "watchers": [
                {
                    "leaves": dict(s.leaves),
                    "last_leave_s": None if s.last_leave is None else s.last_leave - t0,
                    "complete_s": None if s.complete_at is None else s.complete_at - t0,
                    "counts": {room: view[1] for room, view in s.views.items()},
                    "syncs": s.syncs,
                    "gaps": s.gaps,
                    "messages": s.messages,
                }
                for s in self.socks
            ],
            "closed": self.closed,
            "other": dict(self.other),
            **(
                {"left": {u: [when - t0, why] for u, (when, why) in self.left.items()}}
                if command.get("left")
                else {}
            ),
        }

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
            "other": dict(self.other),
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
            sock.ws.send_text(message)
            sent[sock.spec["user"]] = now
            late.append(now - due)

        await asyncio.gather(*(one(i, sock) for i, sock in enumerate(self.socks)))
        late.sort()
        return {
            "sent": sent,
            "late_ms_p99": percentile(late, 99) * 1000,
            "late_ms_max": late[-1] * 1000,
        }

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

    def _heard(self, sock: Sock, text: bytes, wire: int) -> None:
        now = time.monotonic()
        sock.messages += 1
        sock.bytes += wire
        if self.role in ("leaves", "room"):
            self._heard_leaves(sock, text, now)
            return
        if self.role == "member":
            if text.startswith(b'{"type": "snapshot"'):
                waiter = self.snapshots.get(json.loads(text)["session"]["id"])
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif text.startswith((b'{"type": "error"', b'{"type":"error"')):
                self.other[f"error {json.loads(text).get('code')}"] += 1
            return
        if self.role == "joiner":
            # A joiner reads only the errors it is sent (a join refused, say); an
            # error is plain json.dumps, "type" first.
            if text.startswith((b'{"type": "error"', b'{"type":"error"')):
                self.other[f"error {json.loads(text).get('code')}"] += 1
            return
        # The server writes "type" first, then "room", then "seq" (compact JSON).
        head = text[:300]
        if head.startswith(b'{"type":"presence.diff"'):
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
        elif head.startswith(b'{"type":"presence.sync"'):
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

    def _heard_leaves(self, sock: Sock, text: bytes, now: float) -> None:
        head = text[:300]
        if head.startswith(b'{"type":"presence.diff"'):
            room, seq = _room(head), _seq(head)
            known = self.room_diffs.get((room, seq))
            if known is None:
                diff = json.loads(text)
                reasons: Counter[str] = Counter(x.get("reason", "?") for x in diff["leaves"])
                if diff.get("truncated"):
                    reasons["(truncated)"] += 1
                for leave in diff["leaves"]:
                    self.left.setdefault(leave["user"], (now, leave.get("reason", "?")))
                known = self.room_diffs[(room, seq)] = (
                    dict(reasons),
                    diff["count"],
                    None
                    if diff.get("truncated")
                    else (
                        tuple(x["user"] for x in diff["leaves"]),
                        tuple(x["user"] for x in diff["joins"]),
                    ),
                )
            view = sock.views.get(room)
            if view is None or seq <= view[0]:
                return
            if seq != view[0] + 1:
                sock.gaps += 1  # the server syncs a watcher that fell behind
                return
            view[0], view[1] = seq, known[1]
            members = sock.members.get(room)
            if members is None:
                if known[2] is not None and known[2][1]:
                    sock.leaves["(joins)"] += len(known[2][1])  # a view of unknown members
            else:
                if known[2] is None:
                    sock.members[room] = None
                else:
                    members.difference_update(known[2][0])
                    # Joins new to this watcher's view (a member back after a leave, or
                    # one the store lost): a join the sync already showed is not one. A
                    # watcher synced within a diff window sees the members of the diff
                    # still to come, then that diff (bench/analysis.md, crash reclaim).
                    joined = [user for user in known[2][1] if user not in members]
                    if joined:
                        sock.leaves["(joins)"] += len(joined)
                    members.update(known[2][1])
            if known[0]:
                sock.leaves.update(known[0])
                sock.last_leave = now
        elif head.startswith(b'{"type":"presence.sync"'):
            sync = json.loads(text)
            sock.views[sync["room"]] = [sync["seq"], sync["count"]]
            users = {m["user"] for m in sync["members"]}
            sock.members[sync["room"]] = users if len(users) == sync["count"] else None
            sock.syncs += 1
            sock.synced.set()
        else:
            other = json.loads(text)
            kind = str(other.get("type", "?"))
            if kind == "error":
                kind = f"error {other.get('code')}"
                if self.role == "room" and not sock.synced.is_set():
                    self.refused[id(sock)] = str(other.get("code"))
                    sock.synced.set()
            elif kind == "ended":
                kind = f"ended {other.get('reason')}"
            self.other[kind] += 1
            return
        expected = self.room_expected
        if (
            sock.complete_at is None
            and expected
            and all(sock.views.get(r, (0, -1))[1] == n for r, n in expected.items())
        ):
            sock.complete_at = now


def _room(head: bytes) -> str:
    start = head.index(b'"room":"') + 8
    return head[start : head.index(b'"', start)].decode()


def _seq(head: bytes) -> int:
    start = head.index(b'"seq":') + 6
    end = start
    while 48 <= head[end] <= 57:
        end += 1
    return int(head[start:end])


async def main() -> None:
    load = Load()
    await serve(
        {
            "open": lambda c: _opened(load, c),
            "watch": load.watch,
            "watch_rooms": load.watch_rooms,
            "arm_leaves": load.arm_leaves,
            "leaves_report": load.leaves_report,
            "views_wrong": load.views_wrong,
            "arm": load.arm,
            "progress": lambda c: load.progress(),
            "burst": load.burst,
            "report": load.report,
            "join_watch": load.join_watch,
            "room_status": lambda c: load.room_status(),
            "open_map": lambda c: load.open_map(),
            "left": lambda c: load.left_users(),
        }
    )


async def _opened(load: Load, command: dict[str, Any]) -> Any:
    return frozen(await load.open(command))


if __name__ == "__main__":
    asyncio.run(main())
