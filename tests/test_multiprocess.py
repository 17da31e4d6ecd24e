"""Many server processes on one Redis behave as one service.

Real ``python -m presence serve`` processes (and one ``--workers 2`` server) share a
redis-server the tests own: a session made through one is heartbeated, listed and
cleaned up through another; its end, wherever it is caused (delete, cleanup, the
absolute lifetime), closes its sockets wherever they are held, through Redis pub/sub;
and a process killed with SIGKILL leaves its sessions to expire on their TTL.

The processes run with the production heartbeat interval (30 s) unless a test says
otherwise, so the refresher's tick cannot be what closes a socket within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis
from starlette import status
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .utils import JWT_SECRET, UNIT, ServerProcess, server_process, token

pytestmark = pytest.mark.slow

BASE = "/api/v1/chat"
AUTH = {"authorization": f"Bearer {token('alice')}"}
CLOSE_BOUND = 20 * UNIT


def _env(redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "PRESENCE_JWT_SECRET": JWT_SECRET, "LOG_LEVEL": "warning"}


def _wait_subscribed(redis_url: str, listeners: int) -> None:
    """Waits until ``listeners`` processes listen for ended sessions, so that none of
    them can miss an announcement made right after it started."""
    deadline = time.monotonic() + 100 * UNIT
    with redis.Redis.from_url(redis_url) as client:
        while time.monotonic() < deadline:
            if client.pubsub_numsub("presence:ended")[0][1] >= listeners:
                return
            time.sleep(UNIT / 2)
    raise AssertionError(f"fewer than {listeners} processes subscribed to presence:ended")


@contextlib.contextmanager
def _processes(redis_url: str, count: int, **env: str) -> Iterator[list[ServerProcess]]:
    with contextlib.ExitStack() as stack:
        started = [
            stack.enter_context(server_process({**_env(redis_url), **env})) for _ in range(count)
        ]
        _wait_subscribed(redis_url, count)
        yield started


def _client(server) -> httpx.AsyncClient:
    # A new client, hence a new connection, for each use: with --workers, a kept-alive
    # connection would pin every request to the worker that accepted it.
    return httpx.AsyncClient(base_url=server.http + BASE, headers=AUTH)


def _ws_url(server, sid: str) -> str:
    return f"{server.ws}{BASE}/sessions/{sid}/ws?token={token('alice')}"


async def _recv(websocket, within: float = 50 * UNIT) -> dict:
    return json.loads(await asyncio.wait_for(websocket.recv(), timeout=within))


async def _call(server, method: str, path: str, **kwargs) -> httpx.Response:
    async with _client(server) as client:
        return await client.request(method, path, **kwargs)


async def test_three_processes_serve_one_set_of_sessions(redis_url):
    """A session created through one process is heartbeated through a second, read and
    listed through a third, and cleaned up through any: they are one service."""
    with _processes(redis_url, 3) as (a, b, c):
        first = (await _call(a, "POST", "/sessions", json={"data": {"tab": 1}})).json()
        second = (await _call(a, "POST", "/sessions")).json()

        beat = await _call(
            b,
            "POST",
            f"/sessions/{first['id']}/heartbeat",
            json={"state": "away", "data": {"tab": 2}},
        )
        assert beat.status_code == 200
        assert beat.json()["expires_at"] >= first["expires_at"]
        seen = (await _call(c, "GET", f"/sessions/{first['id']}")).json()
        assert (seen["state"], seen["transport"], seen["data"]) == ("away", "http", {"tab": 2})
        listed = (await _call(c, "GET", "/sessions")).json()["sessions"]
        assert [s["id"] for s in listed] == [first["id"], second["id"]]

        cleaned = await _call(
            b, "POST", "/sessions/cleanup", json={"type": "specific", "session_ids": [first["id"]]}
        )
        assert cleaned.json() == {"deleted": 1, "session_ids": [first["id"]]}
        for server in (a, b, c):
            assert (await _call(server, "GET", f"/sessions/{first['id']}")).status_code == 404
        assert (await _call(a, "POST", f"/sessions/{first['id']}/heartbeat")).status_code == 404

        everything = await _call(c, "POST", "/sessions/cleanup", json={"type": "all"})
        assert everything.json()["session_ids"] == [second["id"]]
        for server in (a, b, c):
            assert (await _call(server, "GET", "/sessions")).json() == {"sessions": []}


ENDINGS = {
    "delete": (lambda sid: ("DELETE", f"/sessions/{sid}", None), "deleted"),
    "cleanup-all": (lambda sid: ("POST", "/sessions/cleanup", {"type": "all"}), "cleanup"),
    "cleanup-specific": (
        lambda sid: ("POST", "/sessions/cleanup", {"type": "specific", "session_ids": [sid]}),
        "cleanup",
    ),
}


@pytest.mark.parametrize("ending", ENDINGS)
async def test_ending_a_session_on_one_process_closes_its_socket_on_another(redis_url, ending):
    """A socket held by one process gets {"type": "ended", "reason": ...} and a normal
    close within a second of its session being deleted or cleaned up through another."""
    request, reason = ENDINGS[ending]
    with _processes(redis_url, 2) as (holder, other):
        sid = (await _call(holder, "POST", "/sessions")).json()["id"]
        async with connect(_ws_url(holder, sid), ping_interval=None) as websocket:
            assert (await _recv(websocket))["type"] == "snapshot"
            method, path, body = request(sid)
            started = time.monotonic()
            response = await _call(other, method, path, json=body)
            assert response.status_code in (200, 204)
            message = await _recv(websocket, within=CLOSE_BOUND)
            took = time.monotonic() - started
            assert message == {"type": "ended", "reason": reason}
            with pytest.raises(ConnectionClosed) as closed:
                await _recv(websocket, within=CLOSE_BOUND)
        assert closed.value.rcvd.code == status.WS_1000_NORMAL_CLOSURE
        assert took < CLOSE_BOUND
        print(f"{ending} on another process closed the socket {took * 1000:.1f} ms later")


async def test_max_lifetime_ends_every_socket_of_the_session_on_every_process(redis_url):
    """At a session's absolute deadline, its sockets on two processes (two tabs) both get
    ended with reason expired within a second, though heartbeats kept it busy."""
    lifetime = 30 * UNIT
    env = {"PRESENCE_MAX_LIFETIME_HOURS": repr(lifetime / 3600)}
    with _processes(redis_url, 2, **env) as (a, b):
        created = (await _call(a, "POST", "/sessions")).json()
        sid = created["id"]
        async with (
            connect(_ws_url(a, sid), ping_interval=None) as on_a,
            connect(_ws_url(b, sid), ping_interval=None) as on_b,
        ):
            await _recv(on_a)
            await _recv(on_b)
            deadline = datetime.fromisoformat(created["created_at"]).timestamp() + lifetime
            while time.time() < deadline - 5 * UNIT:
                beat = await _call(b, "POST", f"/sessions/{sid}/heartbeat")
                assert beat.status_code == 200
                await asyncio.sleep(3 * UNIT)
            ended = await asyncio.gather(_recv(on_a, within=lifetime), _recv(on_b, within=lifetime))
            late = time.time() - deadline
        assert ended == [{"type": "ended", "reason": "expired"}] * 2
        assert -UNIT < late < CLOSE_BOUND
        print(f"both sockets ended {late * 1000:.0f} ms after the deadline")
        for server in (a, b):
            assert (await _call(server, "GET", f"/sessions/{sid}")).status_code == 404


async def test_a_sigkilled_process_leaves_its_sessions_to_expire_on_their_ttl(redis_url):
    """While a process holds a socket, its session outlives its TTL; once the process
    is killed with SIGKILL, nothing refreshes it, and it is gone everywhere one TTL
    later; the restarted process holds nothing from before."""
    ttl = 30 * UNIT
    env = {"SESSION_TTL_HOURS": repr(ttl / 3600), "HEARTBEAT_INTERVAL": repr(5 * UNIT)}
    with _processes(redis_url, 2, **env) as (holder, other):
        sid = (await _call(holder, "POST", "/sessions")).json()["id"]
        websocket = await connect(_ws_url(holder, sid), ping_interval=None)
        try:
            await _recv(websocket)
            await asyncio.sleep(2 * ttl)
            alive = await _call(other, "GET", f"/sessions/{sid}")
            assert alive.status_code == 200 and alive.json()["transport"] == "websocket"

            holder.kill()
            killed = time.monotonic()
            with pytest.raises(ConnectionClosed):
                await _recv(websocket)
        finally:
            await websocket.close()
        assert (await _call(other, "GET", f"/sessions/{sid}")).status_code == 200
        async with asyncio.timeout(ttl + CLOSE_BOUND):
            while (await _call(other, "GET", f"/sessions/{sid}")).status_code == 200:  # noqa: ASYNC110
                await asyncio.sleep(UNIT)
        lived = time.monotonic() - killed
        # Refreshed at most one interval before the kill, so it lived about one TTL on.
        assert lived >= ttl - 5 * UNIT - UNIT
        print(f"the killed process's session lasted {lived:.2f}s after SIGKILL (TTL {ttl}s)")
        assert (await _call(other, "GET", "/sessions")).json() == {"sessions": []}
        with redis.Redis.from_url(redis_url) as client:
            assert client.keys(f"*{sid}*") == []

        holder.start()
        _wait_subscribed(redis_url, 2)
        async with httpx.AsyncClient(base_url=holder.http) as client:
            ready = (await client.get("/readyz")).json()
        assert ready["sockets"] == 0 and ready["pending_writes"] == 0
        assert (await _call(holder, "GET", f"/sessions/{sid}")).status_code == 404
        assert (await _call(holder, "GET", "/sessions")).json() == {"sessions": []}
        with pytest.raises(InvalidStatus) as refused:
            async with connect(_ws_url(holder, sid), ping_interval=None):
                pass
        assert refused.value.response.status_code == 404


def _workers(server: ServerProcess) -> list[int]:
    """The worker processes uvicorn spawned (not its resource tracker)."""
    assert server.process is not None
    pid = server.process.pid
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        children += Path(f"/proc/{pid}/task/{task}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """A worker frozen by SIGSTOP: the other worker alone accepts connections."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_two_workers_of_one_server_are_one_service(redis_url):
    """With --workers 2, each worker is made to take the requests by freezing the other:
    a session created by one is heartbeated by the other, and a cleanup handled by one
    closes the socket the other holds, with the ended message, once that worker runs
    again."""
    with server_process(_env(redis_url), "--workers", "2") as server:
        _wait_subscribed(redis_url, 2)
        first, second = _workers(server)
        with _stopped(second):
            sid = (await _call(server, "POST", "/sessions")).json()["id"]
        with _stopped(first):
            beat = await _call(server, "POST", f"/sessions/{sid}/heartbeat", json={"state": "away"})
            assert beat.status_code == 200
            websocket = await connect(_ws_url(server, sid), ping_interval=None)
        try:
            assert (await _recv(websocket))["session"]["state"] == "active"
            with _stopped(second):
                listed = (await _call(server, "GET", "/sessions")).json()["sessions"]
                assert [s["transport"] for s in listed] == ["websocket"]
                cleaned = await _call(server, "POST", "/sessions/cleanup", json={"type": "all"})
                assert cleaned.json() == {"deleted": 1, "session_ids": [sid]}
                # The worker holding the socket is frozen: nothing can reach the client.
                with pytest.raises(TimeoutError):
                    await _recv(websocket, within=5 * UNIT)
            thawed = time.monotonic()
            assert await _recv(websocket, within=CLOSE_BOUND) == {
                "type": "ended",
                "reason": "cleanup",
            }
            print(f"closed {(time.monotonic() - thawed) * 1000:.1f} ms after the worker ran again")
            with pytest.raises(ConnectionClosed) as closed:
                await _recv(websocket, within=CLOSE_BOUND)
            assert closed.value.rcvd.code == status.WS_1000_NORMAL_CLOSURE
        finally:
            await websocket.close()
