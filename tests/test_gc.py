"""presence._gc: what survives a full collection is frozen while the app runs, closed
connections leave nothing in reference cycles (so nothing frozen leaks), and the guard
collects everything once the process's memory has grown enough.

Against a real uvicorn serving the app: sockets joined to rooms and watching, REST
requests, closes by either side; each then counted among the collector's garbage.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import sys
import weakref
from collections.abc import Iterator

import pytest

from presence import _gc
from presence.wsproto import PresenceWebSocketProtocol

from .utils import UNIT, RunningServer, make_settings, serve, token

BASE = "/api/v1/chat"


class _Node:
    """Something the collector tracks, in a cycle with itself, that a weakref can see."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def policy() -> Iterator[_gc.Policy]:
    policy = _gc.Policy(min_bytes=0, min_interval=0)
    policy.install()
    try:
        yield policy
    finally:
        policy.uninstall()
        gc.unfreeze()  # nothing this test froze outlives it


def test_a_full_collection_freezes_what_it_kept(policy):
    kept = [_Node() for _ in range(1_000)]
    before = gc.get_freeze_count()
    gc.collect()
    assert gc.get_freeze_count() >= before + 1_000
    assert not any(n in gc.get_objects(generation=2) for n in kept[:3])
    # Frozen, still freed by its reference count (a list, not a cycle).
    freed = weakref.ref(kept[0])
    kept[0].me = None
    del kept[0]
    assert freed() is None


def test_a_younger_collection_freezes_nothing(policy):
    gc.collect()
    frozen = gc.get_freeze_count()
    kept = [_Node() for _ in range(100)]
    gc.collect(0)
    gc.collect(1)
    assert gc.get_freeze_count() == frozen
    assert kept


def test_the_guard_frees_a_frozen_cycle(policy):
    node = _Node()
    freed = weakref.ref(node)
    gc.collect()  # frozen, in a cycle with itself
    del node
    gc.collect()
    assert freed() is not None  # a frozen cycle escapes every collection...
    assert policy.guard() >= 1
    assert freed() is None  # ...but the guard's
    assert policy.passes == 1


def test_the_guard_waits_longer_after_a_pass_that_found_little(policy):
    policy.baseline = 1
    assert policy.due()
    gc.collect()  # the garbage so far goes; the rest is frozen, and is not garbage
    policy.guard()
    assert policy.growth == 2 * _gc.GUARD_GROWTH
    gc.collect()
    policy.guard()
    gc.collect()
    policy.guard()
    assert policy.growth == _gc.GUARD_MAX_GROWTH
    # Grown by less than the growth since the pass: not due.
    assert not policy.due()


def test_the_guard_is_not_due_for_small_growth():
    policy = _gc.Policy()  # min_bytes: 64 MiB
    now = _gc.rss()
    assert now is not None
    policy.baseline = now // 4  # grown fourfold...
    policy.min_bytes = now  # ...but by less than min_bytes: not due
    assert not policy.due()
    policy.baseline = None
    assert not policy.due()  # no /proc: no guard, never a crash


def test_the_guard_runs_at_most_once_an_interval(policy):
    policy.baseline = 1
    assert policy.due()
    policy.guard()
    policy.baseline = 1
    policy.min_interval = 3600
    assert not policy.due()  # grown, but a pass ran less than an hour ago


async def test_the_watch_runs_the_guard_when_due():
    policy = _gc.Policy(interval=UNIT / 10, min_bytes=0, min_interval=0)
    policy.baseline = 1
    async with _gc.running(policy):
        for _ in range(100):
            if policy.passes:
                break
            await asyncio.sleep(UNIT / 10)
    assert policy.passes >= 1
    assert policy._after_collection not in gc.callbacks  # gone with the app
    assert gc.get_freeze_count() == 0  # and nothing stays frozen


async def test_the_pace_collects_the_young_generations_whatever_the_counts_say():
    """Objects that replace others one for one leave the allocation count where it was,
    so no collection would come; the pace collects them anyway, the oldest generation
    every second time, and what a full collection kept is frozen."""
    policy = _gc.Policy()
    seen: list[int] = []

    def log(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            seen.append(info["generation"])

    gc.callbacks.append(log)
    gc.disable()  # only the pace collects here
    try:
        policy.install()
        pace = asyncio.create_task(policy.pace(interval=UNIT / 20, full_every=2))
        kept = [[i] for i in range(1_000)]
        frozen = gc.get_freeze_count()
        for _ in range(200):
            if seen.count(2) >= 2:
                break
            kept = [[i] for i in range(1_000)]  # a thousand in, a thousand out
            await asyncio.sleep(UNIT / 20)
        pace.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pace
        kept_frozen = gc.get_freeze_count()
    finally:
        gc.enable()
        policy.uninstall()
        gc.callbacks.remove(log)
        gc.unfreeze()
    assert seen.count(1) >= 2 and seen.count(2) >= 2, seen
    assert set(seen) == {1, 2}
    assert seen[:4] in ([1, 2, 1, 2], [2, 1, 2, 1])
    assert kept_frozen >= frozen + len(kept)  # the last thousand lists among them


# -- Connections against a real server ------------------------------------------------


def _garbage_by_type() -> collections.Counter[str]:
    """Unfreezes, collects, and counts the cyclic garbage by type."""
    gc.unfreeze()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return collections.Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


_CONNECTION_TYPES = (
    "_SelectorSocketTransport",
    "TransportSocket",
    "socket",
    "PresenceWebSocketProtocol",
    "ServerProtocol",
    "Task",
)


async def _wait_closed(server: RunningServer) -> None:
    connections = server.server.server_state.connections
    for _ in range(300):
        if not connections:
            return
        await asyncio.sleep(UNIT / 10)
    raise AssertionError(f"{len(connections)} connections still open")


#: The clients, in a process of their own so that their objects (websockets' client
#: connections sit in cycles of their own) are not counted with the server's. Given the
#: server's port and 20 users on stdin; makes 10 sessions for each over REST, says
#: "ready" once every session's socket is open,
#: joined and watching, and goes on at "go": closes half the sockets, ends the other
#: half's sessions over REST (one connection each, a refused request on it too), sends
#: junk instead of HTTP and handshakes without credentials, then waits for the server to
#: close the rest.
_CLIENTS = """
import asyncio, json, sys
import httpx
from websockets.asyncio.client import connect

async def drain(ws):
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 1)
    except Exception:
        pass

async def main():
    port, users = json.loads(sys.stdin.readline())
    base = f"127.0.0.1:{port}/api/v1/chat/sessions"
    sessions = []
    for user, token in users:
        auth = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(headers=auth) as client:
            for _ in range(10):
                response = await client.post(f"http://{base}")
                assert response.status_code == 201, response.text
                sessions.append((user, response.json()["id"], token))
    sockets = []
    for i, (user, sid, token) in enumerate(sessions):
        ws = await connect(f"ws://{base}/{sid}/ws?token={token}", ping_interval=None)
        await ws.recv()
        await ws.send(json.dumps({"type": "presence.join", "room": f"r{i % 10}"}))
        await ws.send(json.dumps({"type": "presence.watch", "room": f"r{i % 10}"}))
        sockets.append(ws)
    await asyncio.gather(*(drain(ws) for ws in sockets))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    half = len(sockets) // 2
    for ws in sockets[:half]:
        await ws.close()
    for user, sid, token in sessions[half:]:
        async with httpx.AsyncClient(base_url=f"http://{base}") as client:
            auth = {"authorization": f"Bearer {token}"}
            cleanup = {"type": "specific", "session_ids": [sid]}
            assert (await client.post("/cleanup", json=cleanup, headers=auth)).status_code == 200
            assert (await client.post(f"/{sid}/heartbeat")).status_code == 401
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\\x16\\x03\\x01 not http at all\\r\\n\\r\\n")
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
        try:
            async with connect(f"ws://{base}/x/ws", ping_interval=None):
                pass
        except Exception:
            pass
    await asyncio.gather(*(drain(ws) for ws in sockets[half:]))
    print("done", flush=True)

asyncio.run(main())
"""


async def test_closed_connections_leave_no_cycles_frozen_or_not():
    """200 sockets joined and watching, frozen by a full collection, then closed: 100 by
    the client, 100 by the server (their sessions ended over REST), with REST requests
    on connections of their own, refused ones and junk among them. Nothing of any
    connection is left in a reference cycle, so the freeze leaks none of it (before the
    transport patch: five objects a connection)."""
    settings = make_settings(session_ttl=300 * UNIT)
    async with serve(settings) as server:
        # Sessions are made by the client process too: an HTTP client's connection here
        # would be frozen with the server's, and counted with them if it died in a cycle.
        users = [(user, token(user)) for user in [f"gc-{i}" for i in range(20)]]
        clients = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLIENTS,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert clients.stdin is not None and clients.stdout is not None
        try:
            clients.stdin.write(json.dumps([server.port, users]).encode() + b"\n")
            ready = await asyncio.wait_for(clients.stdout.readline(), 300 * UNIT)
            assert ready == b"ready\n"
            connections = server.server.server_state.connections
            assert sum(isinstance(c, PresenceWebSocketProtocol) for c in connections) == 200

            gc.collect()  # the app's policy freezes every socket and session now alive
            assert gc.get_freeze_count() > 0
            clients.stdin.write(b"go\n")
            done = await asyncio.wait_for(clients.stdout.readline(), 300 * UNIT)
            assert done == b"done\n"
            assert await asyncio.wait_for(clients.wait(), 100 * UNIT) == 0
        finally:
            if clients.returncode is None:
                clients.kill()
                await clients.wait()
        await _wait_closed(server)
        garbage = _garbage_by_type()
    assert {name: garbage[name] for name in _CONNECTION_TYPES if garbage[name]} == {}
    assert _protocols() == []


def _protocols() -> list[PresenceWebSocketProtocol]:
    """Every protocol object alive (frozen ones are not listed: call after unfreezing)."""
    return [o for o in gc.get_objects() if isinstance(o, PresenceWebSocketProtocol)]
