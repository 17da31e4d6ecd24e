"""The WebSocket keepalive against a real uvicorn and a real websockets client."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

import httpx
import pytest
from starlette import status
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .utils import REPO, UNIT, make_settings, serve, token

BASE = "/api/v1/chat"
INTERVAL = 3 * UNIT
PING_TIMEOUT = 5 * UNIT
TTL = 15 * UNIT


@pytest.fixture(params=["memory", "redis"])
async def server(request):
    """A server with a TTL of 1.5 units of ten, pinging every few tenths of a second."""
    changes = {
        "heartbeat_interval": INTERVAL,
        "ping_timeout": PING_TIMEOUT,
        "session_ttl": TTL,
    }
    if request.param == "redis":
        changes["redis_url"] = request.getfixturevalue("redis_url")
    async with serve(make_settings(**changes)) as running:
        yield running


@pytest.fixture
async def alice(server):
    client = httpx.AsyncClient(
        base_url=server.http + BASE, headers={"authorization": f"Bearer {token('alice')}"}
    )
    yield client
    await client.aclose()


async def _new_session(client) -> str:
    response = await client.post("/sessions")
    assert response.status_code == 201
    return response.json()["id"]


def _url(server, sid: str, user: str | None = "alice") -> str:
    url = f"{server.ws}{BASE}/sessions/{sid}/ws"
    return f"{url}?token={token(user)}" if user else url


async def _recv(websocket) -> dict:
    return json.loads(await asyncio.wait_for(websocket.recv(), timeout=50 * UNIT))


async def _wait_for(predicate, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not await predicate():  # noqa: ASYNC110 - polls the server; no event to await
            await asyncio.sleep(UNIT / 2)


async def test_snapshot_on_connect(server, alice):
    """The server sends the session on connect, marked active over websocket."""
    sid = await _new_session(alice)
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        message = await _recv(websocket)
    assert message["type"] == "snapshot"
    assert message["session"]["id"] == sid
    assert message["session"]["transport"] == "websocket"
    assert message["session"]["state"] == "active"


async def test_session_outlives_its_ttl_on_ping_frames_alone(server, alice):
    """With only protocol pings (no HTTP heartbeat, no client messages), the session
    lives through several TTLs."""
    sid = await _new_session(alice)
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        await _recv(websocket)
        await asyncio.sleep(3.5 * TTL)
        response = await alice.get(f"/sessions/{sid}")
        assert response.status_code == 200
        assert response.json()["transport"] == "websocket"
    assert server.services.refresher.ticks >= 3


async def test_visibility_sets_away_and_active(server, alice):
    """A hidden tab makes the session away, a visible one active again."""
    sid = await _new_session(alice)
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        await _recv(websocket)
        await websocket.send(json.dumps({"type": "visibility", "state": "hidden"}))
        assert (await _recv(websocket))["session"]["state"] == "away"
        assert (await alice.get(f"/sessions/{sid}")).json()["state"] == "away"
        await websocket.send(json.dumps({"type": "visibility", "state": "visible"}))
        assert (await _recv(websocket))["session"]["state"] == "active"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{oops", "malformed_json"),
        ("[]", "bad_message"),
        ('{"type": "teleport"}', "unknown_type"),
        ('{"type": "visibility", "state": "sideways"}', "bad_message"),
        (b"\x00binary", "bad_message"),
    ],
)
async def test_bad_messages_get_an_error_and_the_socket_stays(server, alice, message, code):
    """A message the server cannot use is answered with an error; the socket lives on."""
    sid = await _new_session(alice)
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        await _recv(websocket)
        await websocket.send(message)
        error = await _recv(websocket)
        assert error["type"] == "error" and error["code"] == code and error["message"]
        await websocket.send(json.dumps({"type": "visibility", "state": "hidden"}))
        assert (await _recv(websocket))["type"] == "snapshot"


async def test_close_marks_disconnected_and_reconnect_resumes(server, alice):
    """Closing records last_seen and disconnected; reconnecting resumes the same session."""
    sid = await _new_session(alice)
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        opened = (await _recv(websocket))["session"]

    async def disconnected() -> bool:
        session = (await alice.get(f"/sessions/{sid}")).json()
        return session["state"] == "disconnected"

    await _wait_for(disconnected, 20 * UNIT)
    closed = (await alice.get(f"/sessions/{sid}")).json()
    assert closed["transport"] == "none"
    assert closed["last_seen"] >= opened["last_seen"]
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        resumed = (await _recv(websocket))["session"]
    assert resumed["id"] == sid and resumed["state"] == "active"
    assert resumed["created_at"] == opened["created_at"]


async def test_stopped_client_is_dropped_within_interval_plus_timeout(server, alice):
    """A client frozen by SIGSTOP stops answering pings and is dropped within
    interval + timeout; its session is then marked disconnected."""
    sid = await _new_session(alice)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.ws_client",
        _url(server, sid),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=100 * UNIT)
        assert line.strip() == b"open"
        assert len(server.services.registry) == 1
        process.send_signal(signal.SIGSTOP)
        stopped_at = asyncio.get_running_loop().time()

        async def dropped() -> bool:
            return len(server.services.registry) == 0

        await _wait_for(dropped, INTERVAL + PING_TIMEOUT + 20 * UNIT)
        took = asyncio.get_running_loop().time() - stopped_at

        # The socket leaves the registry first; its presence tab is released and then
        # the session marked, each a Redis call, so a read in between still sees it
        # active.
        async def disconnected() -> bool:
            return (await alice.get(f"/sessions/{sid}")).json()["state"] == "disconnected"

        await _wait_for(disconnected, 20 * UNIT)
        # Reported, not asserted: the bound above is what must hold.
        print(f"dropped {took:.2f}s after SIGSTOP (interval {INTERVAL}, timeout {PING_TIMEOUT})")
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        await process.wait()


@pytest.mark.parametrize(
    ("end", "reason"),
    [
        (lambda c, sid: c.delete(f"/sessions/{sid}"), "deleted"),
        (lambda c, sid: c.post("/sessions/cleanup", json={"type": "all"}), "cleanup"),
        (
            lambda c, sid: c.post(
                "/sessions/cleanup", json={"type": "specific", "session_ids": [sid]}
            ),
            "cleanup",
        ),
    ],
)
async def test_ending_the_session_closes_its_socket_with_ended(server, alice, end, reason):
    """Deleting or cleaning up the session sends ended with the reason, then closes 1000."""
    sid = await _new_session(alice)
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        await _recv(websocket)
        await end(alice, sid)
        message = await _recv(websocket)
        assert message == {"type": "ended", "reason": reason}
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(websocket.recv(), timeout=20 * UNIT)
    assert closed.value.rcvd.code == status.WS_1000_NORMAL_CLOSURE
    assert (await alice.get(f"/sessions/{sid}")).status_code == 404


async def _refused(url: str, **kwargs) -> httpx.Response:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, ping_interval=None, **kwargs):
            pass
    return refused.value.response


async def test_missing_identity_is_refused_before_accept(server, alice):
    """No token and no cookie: the handshake is answered 401 with a JSON error."""
    sid = await _new_session(alice)
    response = await _refused(_url(server, sid, user=None))
    assert response.status_code == 401
    assert json.loads(response.body)["error"]["code"] == "unauthorized"


async def test_other_users_or_unknown_session_is_refused(server, alice):
    """Another user's session and an unknown id both answer 404 before accept."""
    sid = await _new_session(alice)
    assert (await _refused(_url(server, sid, user="mallory"))).status_code == 404
    assert (await _refused(_url(server, "A" * 22))).status_code == 404
    assert (await _refused(_url(server, "short"))).status_code == 404


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "null", "http://127.0.0.1.evil.example", "https://127.0.0.1"],
)
async def test_bad_origin_is_refused_before_accept(server, alice, origin):
    """A foreign, null or look-alike Origin answers 403 before accept."""
    sid = await _new_session(alice)
    response = await _refused(_url(server, sid), origin=origin)
    assert response.status_code == 403
    assert json.loads(response.body)["error"]["code"] == "forbidden"


async def test_same_origin_is_accepted(server, alice):
    """The server's own origin is accepted."""
    sid = await _new_session(alice)
    origin = f"http://127.0.0.1:{server.port}"
    async with connect(_url(server, sid), origin=origin, ping_interval=None) as websocket:
        assert (await _recv(websocket))["type"] == "snapshot"


async def test_compression_is_refused(server, alice):
    """The server declines permessage-deflate that the client offers."""
    sid = await _new_session(alice)
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        assert "sec-websocket-extensions" not in websocket.response.headers
        await _recv(websocket)


async def test_oversized_message_closes_1009(server, alice):
    """A message over 64 KiB closes the socket with 1009."""
    sid = await _new_session(alice)
    async with connect(_url(server, sid), ping_interval=None, max_size=None) as websocket:
        await _recv(websocket)
        await websocket.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(websocket.recv(), timeout=20 * UNIT)
    assert closed.value.rcvd.code == status.WS_1009_MESSAGE_TOO_BIG


async def test_message_flood_closes_1008(server, alice):
    """A client flooding messages past the rate limit is closed with 1008."""
    sid = await _new_session(alice)
    burst = server.services.settings.ws_message_burst
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        await _recv(websocket)
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(burst * 3):
                await websocket.send(json.dumps({"type": "visibility", "state": "visible"}))
            while True:
                await asyncio.wait_for(websocket.recv(), timeout=20 * UNIT)
    assert closed.value.rcvd.code == status.WS_1008_POLICY_VIOLATION


async def test_an_open_socket_keeps_no_parsed_request(server, alice):
    """Identity and origin are checked from the scope itself: the open connection holds
    no parsed headers, cookies, query string or URL for its life, nor the scope's raw
    headers and query string once accepted, and it is routed beside the API's Mount,
    not under it."""
    sid = await _new_session(alice)
    async with connect(
        _url(server, sid),
        additional_headers={"cookie": "other=1"},
        origin=f"http://127.0.0.1:{server.port}",
        ping_interval=None,
    ) as websocket:
        await _recv(websocket)
        registry = server.services.registry
        (held,) = [registry._sockets[ref] for ref in registry.refs() if ref[1] == sid]
        connection = held.websocket
        cached = {"_headers", "_cookies", "_query_params", "_url", "_base_url"}
        assert not cached & set(vars(connection))
        assert connection.scope["root_path"] == ""  # No Mount's child scope.
        # Read once accepted, the handshake's headers and its query (the token) are let go.
        assert connection.scope["headers"] == [] and connection.scope["query_string"] == b""


def _awaiting(coroutine) -> list[str]:
    """The files of the frames a suspended coroutine holds, outermost first."""
    files = []
    while coroutine is not None and hasattr(coroutine, "cr_frame"):
        if coroutine.cr_frame is not None:
            files.append(coroutine.cr_frame.f_code.co_filename)
        coroutine = coroutine.cr_await
    return files


@pytest.mark.parametrize("level", ["WARNING", "INFO"])
async def test_an_open_socket_holds_no_frame_of_starlettes_stack(server, alice, level):
    """A socket's ASGI call goes to the socket endpoint ahead of Starlette's app, its
    middleware, router and route (presence.asgi._socket_route): the suspended call holds
    none of their frames, with the access log on (INFO) or off; the endpoint still reads
    its path parameter and answers as before."""
    access = logging.getLogger("presence.access")
    old = access.level
    access.setLevel(level)
    try:
        sid = await _new_session(alice)
        async with connect(_url(server, sid), ping_interval=None) as websocket:
            snapshot = await _recv(websocket)
            assert snapshot["session"]["id"] == sid
            chains = [_awaiting(task.get_coro()) for task in asyncio.all_tasks()]
            (chain,) = [c for c in chains if any(f.endswith("presence/asgi/sockets.py") for f in c)]
            stack = {"routing.py", "applications.py", "_exception_handler.py", "exceptions.py"}
            held = [f for f in chain if "/starlette/" in f and f.rsplit("/", 1)[1] in stack]
            assert not held, chain
            assert any(f.endswith("presence/asgi/app.py") for f in chain) is (level == "INFO")
    finally:
        access.setLevel(old)


async def test_a_socket_under_a_root_path_is_routed_the_ordinary_way():
    """Behind a proxy that mounts the service under a path (uvicorn's ``root_path``),
    the socket goes through Starlette's router, which strips the root path, and is
    served as under none."""
    async with serve(make_settings(heartbeat_interval=INTERVAL), root_path="/presence") as running:
        headers = {"authorization": f"Bearer {token('alice')}"}
        async with httpx.AsyncClient(base_url=running.http, headers=headers) as client:
            created = await client.post(f"{BASE}/sessions")
            assert created.status_code == 201, created.text
            sid = created.json()["id"]
        async with connect(_url(running, sid), ping_interval=None) as websocket:
            snapshot = await _recv(websocket)
            assert snapshot["session"]["id"] == sid
            (held,) = [
                running.services.registry._sockets[ref]
                for ref in running.services.registry.refs()
                if ref[1] == sid
            ]
            assert held.websocket.scope["root_path"] == "/presence"


def test_the_registry_holds_one_socket_as_it_is_and_more_in_a_list():
    """The registry's add, discard and end, with one socket per session (held without
    a list) and with several."""
    from presence.registry import Registry

    ended: list[tuple[str, str]] = []

    class Socket:
        def __init__(self, name: str) -> None:
            self.name = name

        async def end(self, reason: str, session_id: str | None = None) -> None:
            ended.append((self.name, reason))

    registry = Registry()
    a, b, c = Socket("a"), Socket("b"), Socket("c")
    ref = ("alice", "s1")
    assert registry.discard(ref, a) is True  # Nothing held: nothing left.
    registry.add(ref, a)
    assert registry._sockets[ref] is a and len(registry) == 1
    assert registry.discard(ref, b) is False  # Not held: a stays.
    registry.add(ref, b)
    registry.add(ref, c)
    assert registry._sockets[ref] == [a, b, c] and registry.refs() == [ref]
    asyncio.run(registry.end("alice", "s1", "deleted"))
    assert ended == [("a", "deleted"), ("b", "deleted"), ("c", "deleted")]
    assert registry.discard(ref, b) is False
    assert registry.discard(ref, b) is False
    assert registry.discard(ref, a) is False
    assert registry._sockets[ref] is c
    ended.clear()
    asyncio.run(registry.end("alice", "s1", "expired"))
    asyncio.run(registry.end("alice", "nothing", "expired"))
    assert ended == [("c", "expired")]
    assert registry.discard(ref, c) is True
    assert len(registry) == 0
