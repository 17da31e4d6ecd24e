"""``PRESENCE_WS_PROTOCOL=websockets-sansio``: a real ``presence serve`` process on
uvicorn's stock WebSocket protocol, with a real Redis and real WebSocket clients.

It serves sockets, sessions and presence; the limits uvicorn, websockets and the app
enforce still hold (message size, message rate, ping timeout); those only
``presence.wsproto`` enforces are absent, as the README says and start-up logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette import status
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from presence.cli import uvicorn_options
from presence.exceptions import ConfigError
from presence.settings import Settings

from .utils import JWT_SECRET, UNIT, ServerProcess, server_process, token

BASE = "/api/v1/chat"
BURST = 40  # Settings.ws_message_burst


@pytest.fixture(scope="module")
def stock(redis_server) -> Iterator[ServerProcess]:
    """One server on the stock protocol for the module: Redis, JWT mode, open rooms, no
    offline grace, and keepalive pings far apart (none within a test)."""
    env = {
        "PRESENCE_WS_PROTOCOL": "websockets-sansio",
        "PRESENCE_JWT_SECRET": JWT_SECRET,
        "PRESENCE_OPEN_ROOMS": "true",
        "PRESENCE_OFFLINE_GRACE": "0",
        "REDIS_URL": redis_server.url,
        "SESSION_TTL_HOURS": "1",
        "HEARTBEAT_INTERVAL": "600",
        "LOG_LEVEL": "info",
    }
    with server_process(env) as process:
        yield process


def _user() -> str:
    return f"stock-{uuid.uuid4().hex}"


async def _session(server: ServerProcess, user: str) -> str:
    async with httpx.AsyncClient(
        base_url=server.http + BASE,
        headers={"authorization": f"Bearer {token(user)}"},
        timeout=50 * UNIT,
    ) as client:
        response = await client.post("/sessions")
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@contextlib.asynccontextmanager
async def _socket(server: ServerProcess, user: str, sid: str) -> AsyncIterator[ClientConnection]:
    url = f"{server.ws}{BASE}/sessions/{sid}/ws?token={token(user)}"
    async with connect(url, ping_interval=None, max_size=None) as websocket:
        yield websocket


async def _recv_type(websocket: ClientConnection, kind: str) -> dict:
    async with asyncio.timeout(50 * UNIT):
        while True:
            message = json.loads(await websocket.recv())
            if message["type"] == kind:
                return message


async def _closed_code(websocket: ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(50 * UNIT):
            while True:
                await websocket.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def test_the_setting_picks_uvicorns_stock_protocol_and_refuses_others():
    """The default is presence.wsproto's protocol; websockets-sansio is uvicorn's own, by
    name; anything else stops start-up naming the variable."""
    assert Settings().ws_protocol == "presence"
    default = uvicorn_options(Settings())["ws"]
    assert default.func.__module__ == "presence.wsproto"
    settings = Settings.from_env({"PRESENCE_WS_PROTOCOL": "WebSockets-SansIO"})
    assert uvicorn_options(settings)["ws"] == "websockets-sansio"
    with pytest.raises(ConfigError, match="PRESENCE_WS_PROTOCOL"):
        Settings.from_env({"PRESENCE_WS_PROTOCOL": "wsproto"})


def test_start_up_says_which_limits_are_absent(stock):
    """A warning line at start-up names the protocol and the limits it lacks."""
    deadline = time.monotonic() + 100 * UNIT
    while "presence ready" not in stock.log.read_text() and time.monotonic() < deadline:
        time.sleep(UNIT)
    text = stock.log.read_text()
    (line,) = [line for line in text.splitlines() if "PRESENCE_WS_PROTOCOL" in line]
    assert "WARNING" in line and "websockets-sansio" in line
    for limit in ("ping, pong and continuation frames", "fragments", "unsent"):
        assert limit in line


async def test_sockets_sessions_and_presence_are_served(stock):
    """A socket gets its snapshot and keeps its session active; a watcher sees a join
    and, when the member's socket closes, its leave."""
    ann, bob = _user(), _user()
    ann_sid, bob_sid = await _session(stock, ann), await _session(stock, bob)
    room = f"room-{uuid.uuid4().hex[:8]}"
    async with _socket(stock, bob, bob_sid) as watcher:
        snapshot = await _recv_type(watcher, "snapshot")
        assert snapshot["session"]["id"] == bob_sid
        assert snapshot["session"]["transport"] == "websocket"
        await watcher.send(json.dumps({"type": "presence.watch", "room": room}))
        assert (await _recv_type(watcher, "presence.sync"))["count"] == 0
        async with _socket(stock, ann, ann_sid) as member:
            await _recv_type(member, "snapshot")
            await member.send(json.dumps({"type": "presence.join", "room": room}))
            diff = await _recv_type(watcher, "presence.diff")
            assert [join["user"] for join in diff["joins"]] == [ann]
        diff = await _recv_type(watcher, "presence.diff")
        assert [(leave["user"], leave["reason"]) for leave in diff["leaves"]] == [(ann, "closed")]
    async with httpx.AsyncClient(
        base_url=stock.http + BASE, headers={"authorization": f"Bearer {token(ann)}"}
    ) as client:
        session = (await client.get(f"/sessions/{ann_sid}")).json()
    assert session["state"] == "disconnected"


async def test_a_refused_handshake_is_an_http_error(stock):
    """Another user's session is refused before accept, with the service's status."""
    sid = await _session(stock, _user())
    with pytest.raises(Exception, match="HTTP 404"):
        async with _socket(stock, _user(), sid):
            pass


async def test_the_message_size_still_closes_1009(stock):
    """websockets' own bound on a message's bytes applies: 64 KiB + 1 closes 1009."""
    user = _user()
    async with _socket(stock, user, await _session(stock, user)) as websocket:
        await _recv_type(websocket, "snapshot")
        await websocket.send("x" * (64 * 1024 + 1))
        assert await _closed_code(websocket) == status.WS_1009_MESSAGE_TOO_BIG


async def test_the_message_rate_still_closes_1008(stock):
    """The app counts messages itself: a flood past the burst closes 1008."""
    user = _user()
    visible = json.dumps({"type": "visibility", "state": "visible"})
    async with _socket(stock, user, await _session(stock, user)) as websocket:
        await _recv_type(websocket, "snapshot")
        with contextlib.suppress(ConnectionClosed):
            for _ in range(BURST * 3):
                await websocket.send(visible)
        assert await _closed_code(websocket) == status.WS_1008_POLICY_VIOLATION


async def test_ping_frames_count_against_no_rate(stock):
    """What the README documents as absent: pings past the frame burst (which
    presence.wsproto closes with 1008) are all answered, and the socket stays open."""
    user = _user()
    async with _socket(stock, user, await _session(stock, user)) as websocket:
        await _recv_type(websocket, "snapshot")
        pongs = [await websocket.ping(i.to_bytes(4, "big")) for i in range(BURST * 3)]
        async with asyncio.timeout(50 * UNIT):
            await asyncio.gather(*pongs)
        await websocket.send(json.dumps({"type": "visibility", "state": "hidden"}))
        assert (await _recv_type(websocket, "snapshot"))["session"]["state"] == "away"


def test_a_client_that_answers_no_ping_is_closed_1011(redis_server):
    """uvicorn's keepalive applies: a client that answers no ping gets 1011 within the
    ping interval plus the ping timeout."""
    env = {
        "PRESENCE_WS_PROTOCOL": "websockets-sansio",
        "PRESENCE_JWT_SECRET": JWT_SECRET,
        "REDIS_URL": redis_server.url,
        "SESSION_TTL_HOURS": "1",
        "HEARTBEAT_INTERVAL": repr(3 * UNIT),
        "PRESENCE_PING_TIMEOUT": repr(5 * UNIT),
        "LOG_LEVEL": "warning",
    }

    async def silent(server: ServerProcess) -> int:
        user = _user()
        sid = await _session(server, user)
        url = f"{server.ws}{BASE}/sessions/{sid}/ws?token={token(user)}"
        # The client's own pong replies are turned off by never reading: websockets
        # answers pings only while its connection reads, and this one is paused.
        async with connect(url, ping_interval=None) as websocket:
            websocket.transport.pause_reading()
            await asyncio.sleep(3 * UNIT + 5 * UNIT + 20 * UNIT)
            websocket.transport.resume_reading()
            return await _closed_code(websocket)

    with server_process(env) as server:
        assert asyncio.run(silent(server)) == 1011
