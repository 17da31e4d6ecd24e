"""A load process: WebSocket clients that behave like browser tabs.

Like a browser, each client offers per-message compression (the websockets default),
answers the server's pings by itself and sends no pings of its own. In ``browser`` mode
a client that loses its socket does what ``web/src/chatSessionManager.js`` does: one
REST heartbeat at once and then every ``heartbeat_interval`` while it polls, and a new
socket after ``backoffDelay(attempt)`` -- full jitter, ``random() * min(cap, base *
2**attempt)`` -- with ``attempt`` back to 0 only after a socket that stayed up for
``stable`` seconds. A tab whose spec names a ``room`` sends ``presence.join`` for it on
each socket it opens, as the JS client joins its rooms again after a reconnect, and
again after a jittered delay when the join is refused for a passing reason.

A tab whose spec says ``eio`` is a Socket.IO client instead (Engine.IO 4, websocket
transport, for :mod:`bench.peers`): on the server's open packet ``0{...}`` it connects
the default namespace (``40``), waits for ``40{"sid":...}`` and answers every ping
``2`` with a pong ``3`` (in Engine.IO 4 the server pings). The connects completed and
the pongs sent are counted (``status``). A tab whose spec says ``count_pings`` keeps
the ordinary protocol pings, which the ``websockets`` client answers by itself, and
counts each ping frame it receives (so answers) among the pongs too.

Driven over stdin/stdout by :class:`bench._clients.Loader`, one JSON object a line:
``open``, ``status``, ``open_map``, ``mark``, ``storm``, ``ping_mark``, ``ping_check``,
``exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import Frame, Opcode

from bench._commands import frozen, serve
from bench._stats import percentile


class PingCounting(ClientConnection):
    """A client connection that counts the protocol pings it receives (the sans-I/O
    protocol answers each with a pong by itself)."""

    pings = 0  # every connection's, in this process
    seen = 0  # this connection's

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            PingCounting.pings += 1
            self.seen += 1
        super().process_event(event)


class Tab:
    __slots__ = (
        "address", "attempt", "back_at", "lost", "lost_at", "polling", "pongs", "spec", "ws"
    )  # fmt: skip

    def __init__(self, spec: dict[str, Any], address: str) -> None:
        self.spec = spec
        self.address = address
        self.ws: ClientConnection | None = None
        self.attempt = 0
        self.polling: asyncio.Task[None] | None = None
        self.lost = False
        self.lost_at: float | None = None
        self.back_at: float | None = None
        # Engine.IO pongs this tab sent (Socket.IO tabs).
        self.pongs = 0


class Load:
    def __init__(self) -> None:
        self.tabs: list[Tab] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.open_now = 0
        self.opens = 0
        self.closes: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        # In-band errors the server sent (a join refused, say), by code.
        self.errors: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.heartbeats: Counter[str] = Counter()
        self.mark: float | None = None
        self.marked_connects: list[float] = []
        self.mode = "hold"
        self.base, self.cap, self.stable = 0.5, 30.0, 10.0
        self.heartbeat_interval = 30.0
        self.timeout = 30.0
        # Socket.IO tabs (spec "eio"): namespace connects completed, pongs sent.
        self.sio_connects = 0
        self.pongs = 0
        # Pings answered by each open tab at the last ping_mark, by the tab's id.
        self.ping_marks: dict[int, int] = {}

    # --- commands ---------------------------------------------------------------

    async def open(self, command: dict[str, Any]) -> dict[str, Any]:
        self.mode = command.get("mode", "hold")
        backoff = command.get("backoff", {})
        self.base = backoff.get("base", self.base)
        self.cap = backoff.get("cap", self.cap)
        self.stable = backoff.get("stable", self.stable)
        self.heartbeat_interval = command.get("heartbeat_interval", self.heartbeat_interval)
        self.timeout = command.get("timeout", self.timeout)
        retries = command.get("retries", 0)
        addresses = command["addresses"]
        specs = command["clients"]
        gate = asyncio.Semaphore(command.get("concurrency", 256))
        times: list[float] = []
        first_failures: Counter[str] = Counter()
        pending = len(specs)
        done = asyncio.Event()
        if not specs:
            done.set()

        def first_result(seconds: float | None, failure: str | None, final: bool = True) -> None:
            nonlocal pending
            if seconds is not None:
                times.append(seconds)
            if failure is not None:
                first_failures[failure] += 1
            if not final:
                return
            pending -= 1
            if pending == 0:
                done.set()

        started = time.monotonic()
        for i, spec in enumerate(specs):
            tab = Tab(spec, addresses[i % len(addresses)])
            self.tabs.append(tab)
            task = asyncio.create_task(self.run(tab, gate, first_result, retries))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        await done.wait()
        elapsed = time.monotonic() - started
        times.sort()
        return {
            "requested": len(specs),
            "opened": len(times),
            # Failed attempts, by kind; a tab retried in hold mode may open after one.
            "failed": dict(first_failures),
            "elapsed": elapsed,
            "rate": len(times) / elapsed if elapsed > 0 else 0.0,
            "handshake_ms": {
                "p50": percentile(times, 50) * 1000,
                "p90": percentile(times, 90) * 1000,
                "p99": percentile(times, 99) * 1000,
                "max": (times[-1] if times else float("nan")) * 1000,
            },
            "open": self.open_now,
        }

    async def reconnect(self, command: dict[str, Any]) -> dict[str, Any]:
        """A reconnect storm: ``count`` open sockets lose their connection at once (each
        aborted, as a network blip or a balancer's restart drops them) and their tabs
        open new ones straight away, ``concurrency`` handshakes in flight; returns what
        ``open`` does for those."""
        dropped = [tab for tab in self.tabs if tab.ws is not None][: command["count"]]
        for tab in dropped:
            assert tab.ws is not None
            tab.ws.transport.abort()
        for _ in range(600):  # every hold has seen its socket go (at most 60 s)
            if all(tab.ws is None for tab in dropped):
                break
            await asyncio.sleep(0.1)
        gone = {id(tab) for tab in dropped}
        self.tabs = [tab for tab in self.tabs if id(tab) not in gone]
        return await self.open(
            {**command, "clients": [tab.spec for tab in dropped], "mode": self.mode}
        )

    def status(self) -> dict[str, Any]:
        return {
            "tabs": len(self.tabs),
            "open": self.open_now,
            "opens": self.opens,
            "closes": dict(self.closes),
            "ended": dict(self.ended),
            "failures": dict(self.failures),
            "heartbeats": dict(self.heartbeats),
            "sio_connects": self.sio_connects,
            "pongs": self.pongs + PingCounting.pings,
        }

    def answered(self, tab: Tab) -> int:
        """Pings this tab's socket answered: its Engine.IO pongs, or the protocol pings
        its connection received (``count_pings``)."""
        if tab.spec.get("eio"):
            return tab.pongs
        return getattr(tab.ws, "seen", 0)

    def ping_mark(self) -> dict[str, Any]:
        """From now on, ``ping_check`` tells the open sockets that answered no ping."""
        self.ping_marks = {id(tab): self.answered(tab) for tab in self.tabs if tab.ws}
        return {"open": self.open_now}

    def ping_check(self) -> dict[str, Any]:
        """Open sockets that answered no ping since ``ping_mark`` (open at the mark too)."""
        marks = self.ping_marks
        open_tabs = [tab for tab in self.tabs if tab.ws is not None and id(tab) in marks]
        answers = sorted(self.answered(tab) - marks[id(tab)] for tab in open_tabs)
        return {
            "checked": len(open_tabs),
            "unpinged": sum(1 for a in answers if a <= 0),
            "min": answers[0] if answers else None,
            "max": answers[-1] if answers else None,
        }

    def set_mark(self) -> dict[str, Any]:
        """From now on, count who loses its socket and when it is back."""
        self.mark = time.monotonic()
        self.marked_connects = []
        self.failures.clear()
        self.heartbeats.clear()
        self.closes.clear()
        self.errors.clear()
        for tab in self.tabs:
            tab.lost = False
            tab.lost_at = tab.back_at = None
        return {"open": self.open_now}

    def storm(self, detail: bool = False) -> dict[str, Any]:
        assert self.mark is not None
        lost = [tab for tab in self.tabs if tab.lost]
        back = sorted(tab.back_at for tab in lost if tab.back_at is not None)
        per_second: Counter[int] = Counter(int(t - self.mark) for t in self.marked_connects)
        rate = [per_second.get(i, 0) for i in range(max(per_second, default=-1) + 1)]
        return {
            "tabs": len(self.tabs),
            "open": self.open_now,
            "lost": len(lost),
            "back": len(back),
            "all_back": self.open_now == len(self.tabs) and len(back) == len(lost),
            "back_s": {
                "p50": percentile(back, 50),
                "p99": percentile(back, 99),
                "max": back[-1] if back else float("nan"),
            },
            "connects_per_s": rate,
            "failures": dict(self.failures),
            "heartbeats": dict(self.heartbeats),
            "closes": dict(self.closes),
            "errors": dict(self.errors),
            # With detail: each tab lost since the mark, its user, when its socket went
            # and when it was back (seconds since the mark; None: not back).
            **(
                {"lost_tabs": [[tab.spec.get("user"), tab.lost_at, tab.back_at] for tab in lost]}
                if detail
                else {}
            ),
        }

    # --- one tab ----------------------------------------------------------------

    async def run(
        self, tab: Tab, gate: asyncio.Semaphore, first_result: Any, retries: int = 0
    ) -> None:
        first = True
        while True:
            if first:
                async with gate:
                    seconds, failure = await self.connect(tab)
                # In hold mode a refused handshake may be tried again a few times (a
                # second later), so a plateau reaches its N; every failure is counted.
                while seconds is None and retries > 0 and self.mode != "browser":
                    retries -= 1
                    first_result(None, failure, final=False)
                    await asyncio.sleep(1.0)
                    async with gate:
                        seconds, failure = await self.connect(tab)
                first_result(seconds, failure)
                first = False
            else:
                seconds, failure = await self.connect(tab)
            if seconds is not None:
                if tab.polling is not None:
                    tab.polling.cancel()
                    tab.polling = None
                opened_at = time.monotonic()
                await (self.hold_eio(tab) if tab.spec.get("eio") else self.hold(tab))
                # Only a socket that stayed up a while resets the backoff (as the JS does).
                if time.monotonic() - opened_at >= self.stable:
                    tab.attempt = 0
            if self.mode != "browser":
                return
            if tab.polling is None:
                tab.polling = asyncio.create_task(self.poll(tab))
            delay = random.random() * min(self.cap, self.base * 2**tab.attempt)
            tab.attempt += 1
            await asyncio.sleep(delay)

    async def connect(self, tab: Tab) -> tuple[float | None, str | None]:
        spec = tab.spec
        started = time.monotonic()
        try:
            ws = await connect(
                f"ws://127.0.0.1:{spec['port']}{spec['ws']}",
                ping_interval=None,
                open_timeout=self.timeout,
                close_timeout=2,
                max_size=64 * 1024,
                local_addr=(tab.address, 0),
                **({"create_connection": PingCounting} if spec.get("count_pings") else {}),
            )
        except InvalidStatus as exc:
            return None, self.fail(f"http_{exc.response.status_code}")
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return None, self.fail(type(exc).__name__)
        if spec.get("eio"):
            failure = await self.connect_eio(ws)
            if failure is not None:
                await ws.close()
                return None, self.fail(failure)
            return self.opened(tab, ws, started), None
        try:
            first = await asyncio.wait_for(ws.recv(), self.timeout)
            kind = json.loads(first).get("type")
        except (ConnectionClosed, TimeoutError, ValueError) as exc:
            await ws.close()
            return None, self.fail(f"first_message_{type(exc).__name__}")
        if kind != "snapshot":
            await ws.close()
            return None, self.fail(f"first_message_{kind}")
        room = spec.get("room")
        if room is not None:
            message = {"type": "presence.join", "room": room, "meta": None}
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps(message))
        return self.opened(tab, ws, started), None

    def opened(self, tab: Tab, ws: ClientConnection, started: float) -> float:
        now = time.monotonic()
        tab.ws = ws
        self.open_now += 1
        self.opens += 1
        if self.mark is not None:
            self.marked_connects.append(now)
            if tab.lost and tab.back_at is None:
                tab.back_at = now - self.mark
        return now - started

    async def connect_eio(self, ws: ClientConnection) -> str | None:
        """The Socket.IO connect of the default namespace; the failure's name, or None."""
        try:
            opening = await asyncio.wait_for(ws.recv(), self.timeout)
            if not isinstance(opening, str) or not opening.startswith("0{"):
                return "eio_open_unexpected"
            json.loads(opening[1:])  # the handshake: sid, pingInterval, pingTimeout
            await ws.send("40")
            while True:
                reply = await asyncio.wait_for(ws.recv(), self.timeout)
                if reply == "2":  # a ping before the connect's answer: answer it too
                    await ws.send("3")
                    self.pongs += 1
                    continue
                break
            if not isinstance(reply, str) or not reply.startswith("40"):
                return "sio_connect_unexpected"
            if "sid" not in json.loads(reply[2:] or "{}"):
                return "sio_connect_no_sid"
        except (ConnectionClosed, TimeoutError, ValueError) as exc:
            return f"sio_connect_{type(exc).__name__}"
        self.sio_connects += 1
        return None

    async def hold_eio(self, tab: Tab) -> None:
        """A Socket.IO tab's socket: every Engine.IO ping answered, until it closes."""
        ws = tab.ws
        assert ws is not None
        try:
            async for message in ws:
                if message == "2":
                    await ws.send("3")
                    self.pongs += 1
                    tab.pongs += 1
        except ConnectionClosed:
            pass
        self._lost(tab, ws)

    async def hold(self, tab: Tab) -> None:
        ws = tab.ws
        assert ws is not None
        # A join refused for a passing reason is sent again after a full-jitter delay
        # from 1 s, doubling to 30 s, reset by the room's sync (presenceRoom.js).
        attempt, retry = 0, None
        try:
            async for message in ws:
                with contextlib.suppress(ValueError, AttributeError):
                    parsed = json.loads(message)
                    kind = parsed.get("type")
                    if kind == "ended":
                        self.ended[str(parsed.get("reason"))] += 1
                    elif kind == "error":
                        code = str(parsed.get("code"))
                        self.errors[code] += 1
                        room = tab.spec.get("room")
                        if room and parsed.get("room") == room and code not in _FINAL:
                            if retry is None or retry.done():
                                delay = random.random() * min(30.0, 2.0**attempt)
                                attempt += 1
                                retry = asyncio.create_task(_join_later(ws, room, delay))
                    elif kind == "presence.sync":
                        attempt = 0
        except ConnectionClosed:
            pass
        if retry is not None:
            retry.cancel()
        self._lost(tab, ws)

    def _lost(self, tab: Tab, ws: ClientConnection) -> None:
        """A tab's socket closed: counted by its close code, and the tab marked lost when
        a mark is set (its loss timed from the mark)."""
        self.open_now -= 1
        self.closes[str(ws.close_code)] += 1
        tab.ws = None
        if self.mark is not None:
            tab.lost = True
            tab.lost_at = time.monotonic() - self.mark
            tab.back_at = None

    async def poll(self, tab: Tab) -> None:
        while True:
            self.heartbeats[await self.heartbeat(tab)] += 1
            await asyncio.sleep(self.heartbeat_interval)

    async def heartbeat(self, tab: Tab) -> str:
        spec = tab.spec
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", spec["port"], local_addr=(tab.address, 0)),
                self.timeout,
            )
            writer.write(
                (
                    f"POST {spec['heartbeat']} HTTP/1.1\r\nHost: 127.0.0.1:{spec['port']}\r\n"
                    f"Authorization: {spec['auth']}\r\nContent-Type: application/json\r\n"
                    "Content-Length: 2\r\nConnection: close\r\n\r\n{}"
                ).encode()
            )
            line = await asyncio.wait_for(reader.readline(), self.timeout)
            status = line.split()[1].decode() if line else "no_response"
        except (OSError, TimeoutError, IndexError) as exc:
            status = type(exc).__name__
        finally:
            if writer is not None:
                writer.close()
        if status.startswith("5"):
            self.failures[f"heartbeat_http_{status}"] += 1
        return status

    def fail(self, kind: str) -> str:
        self.failures[kind] += 1
        return kind


# In-band refusals that asking again cannot change (presenceRoom.js REFUSALS).
_FINAL = frozenset(
    {"room_forbidden", "forbidden", "invalid_room", "too_many_rooms", "invalid_body",
     "invalid_message", "not_in_room"}
)  # fmt: skip


async def _join_later(ws: ClientConnection, room: str, delay: float) -> None:
    await asyncio.sleep(delay)
    with contextlib.suppress(ConnectionClosed):
        await ws.send(json.dumps({"type": "presence.join", "room": room, "meta": None}))


async def main() -> None:
    load = Load()
    await serve(
        {
            "open": lambda c: _opened(load, c),
            "reconnect": lambda c: _reconnected(load, c),
            "status": lambda c: load.status(),
            "ping_mark": lambda c: load.ping_mark(),
            "ping_check": lambda c: load.ping_check(),
            # One character per tab, in the order opened: 1 open, 0 not.
            "open_map": lambda c: {
                "map": "".join("1" if t.ws is not None else "0" for t in load.tabs)
            },
            "mark": lambda c: load.set_mark(),
            "storm": lambda c: load.storm(c.get("detail", False)),
        }
    )


async def _opened(load: Load, command: dict[str, Any]) -> Any:
    return frozen(await load.open(command))


async def _reconnected(load: Load, command: dict[str, Any]) -> Any:
    return frozen(await load.reconnect(command))


if __name__ == "__main__":
    asyncio.run(main())
