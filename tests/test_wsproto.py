"""presence.wsproto: uvicorn's sans-I/O WebSocket protocol holding less per open socket.

Against a real uvicorn running the app with the production options and real clients:
what an open socket no longer holds, and that keepalive, close codes, refusals, flow
control, TCP_NODELAY and the 1012 on shutdown behave as uvicorn's own class does. Then
its queue and write gate on their own, step for step against asyncio's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import pickle
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request

from presence.asgi.app import create_app
from presence.cli import uvicorn_options
from presence.settings import Settings
from presence.wsproto import FrameLimits, Gate, Inbox, PresenceWebSocketProtocol

from .test_attacks import RawSocket
from .utils import UNIT, RunningServer, make_settings, serve, token

BASE = "/api/v1/chat"
INTERVAL = 3 * UNIT
PING_TIMEOUT = 5 * UNIT


def _settings() -> Settings:
    return make_settings(
        heartbeat_interval=INTERVAL, ping_timeout=PING_TIMEOUT, session_ttl=15 * UNIT
    )


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with serve(_settings()) as running:
        yield running


@pytest.fixture
async def alice(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    client = httpx.AsyncClient(
        base_url=server.http + BASE, headers={"authorization": f"Bearer {token('alice')}"}
    )
    yield client
    await client.aclose()


async def _session(client: httpx.AsyncClient) -> str:
    response = await client.post("/sessions")
    assert response.status_code == 201
    return str(response.json()["id"])


def _url(server: RunningServer, sid: str, user: str | None = "alice") -> str:
    url = f"{server.ws}{BASE}/sessions/{sid}/ws"
    return f"{url}?token={token(user)}" if user else url


async def _recv(websocket: Any) -> Any:
    return json.loads(await asyncio.wait_for(websocket.recv(), timeout=50 * UNIT))


def _protocols(server: RunningServer) -> list[PresenceWebSocketProtocol]:
    """The server's open WebSocket connections (an upgraded HTTP connection leaves the
    set; the WebSocket protocol that took over joins it)."""
    connections = server.server.server_state.connections
    return [c for c in connections if isinstance(c, PresenceWebSocketProtocol)]


# -- What an open socket holds ---------------------------------------------------------


def test_the_production_options_run_this_protocol_with_the_settings_limits() -> None:
    """uvicorn is given this class with the settings' frame limits bound, in a form that
    pickles (uvicorn pickles its Config for --workers)."""
    settings = make_settings(ws_messages_per_second=3.0, ws_max_unsent_bytes=2**17)
    ws = uvicorn_options(settings)["ws"]
    assert isinstance(ws, functools.partial) and ws.func is PresenceWebSocketProtocol
    assert ws.keywords == {"limits": FrameLimits(3.0, settings.ws_message_burst, 2**17)}
    copy = pickle.loads(pickle.dumps(ws))  # noqa: S301 - our own bytes, as uvicorn does
    assert copy.func is PresenceWebSocketProtocol and copy.keywords == ws.keywords


def test_no_slot_hides_a_method_or_class_attribute_of_uvicorns_class() -> None:
    """A slot named like something the base classes define would shadow it."""
    defined = {name for cls in WebSocketsSansIOProtocol.__mro__ for name in vars(cls)}
    assert not set(PresenceWebSocketProtocol.__slots__) & defined


async def test_an_open_socket_holds_no_handshake(server, alice):
    """Once open, neither uvicorn's protocol nor websockets' parser holds the handshake
    request or response (nor their headers, nor the URL with its token): no Request or
    Headers object with them is left in the process but the client's own. The protocol
    leaves the scope as uvicorn builds it; the session endpoint, once it has read the
    headers and accepted, empties them there (test_websocket.py). Every attribute is in
    a slot (a new one that uvicorn sets lands in an instance dict: add it to
    __slots__)."""
    sid = await _session(alice)
    probe = "probe-" + sid
    async with connect(
        _url(server, sid), additional_headers={"x-probe": probe}, ping_interval=None
    ) as websocket:
        assert (await _recv(websocket))["type"] == "snapshot"
        (protocol,) = _protocols(server)
        assert protocol.handshake_complete
        assert protocol.request is None
        assert protocol.response is None
        assert protocol.scope["headers"] == []  # read by the endpoint, then let go
        assert isinstance(protocol.queue, Inbox)
        assert isinstance(protocol.writable, Gate)
        assert vars(protocol) == {}

        own = {id(websocket.request), id(websocket.request.headers)}
        gc.collect()
        gc.unfreeze()  # the app's policy froze what the collection kept: list it too
        held = [
            o
            for o in gc.get_objects()
            if isinstance(o, Request | Headers)
            and id(o) not in own
            and (
                (isinstance(o, Headers) and probe in o.values())
                or (isinstance(o, Request) and (probe in o.headers.values() or sid in o.path))
            )
        ]
        assert held == []


async def test_a_closed_socket_is_freed_without_the_cycle_collector(server, alice):
    """A closed connection's protocol (and all it holds: parser, queues, buffers, the
    scope) goes when its last reference does: it sits in no reference cycle, so it waits
    for no full collection, which at 15,000 sockets stops the process for most of a
    second, and it would not leak if the collector froze it (gc.freeze)."""
    sid = await _session(alice)
    gc.collect()
    gc.disable()
    try:
        async with connect(_url(server, sid), ping_interval=None) as websocket:
            assert (await _recv(websocket))["type"] == "snapshot"
            (protocol,) = _protocols(server)
            freed = weakref.ref(protocol)
            del protocol
        for _ in range(200):
            if freed() is None:
                break
            await asyncio.sleep(UNIT / 10)
        assert freed() is None, [type(r).__name__ for r in gc.get_referrers(freed())]
    finally:
        gc.enable()


async def test_a_refused_handshake_holds_no_response_either(server, alice):
    """The app's refusal (a denial response) is sent whole, with its status, headers and
    body, and then the connection is gone; so is one that websockets itself refuses (an
    unsupported version is 400)."""
    sid = await _session(alice)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(_url(server, sid, user=None), ping_interval=None):
            pass
    response = refused.value.response
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body)["error"]["code"] == "unauthorized"

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            (
                f"GET {BASE}/sessions/{sid}/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 50 * UNIT)
        assert head.startswith(b"HTTP/1.1 400")
        await asyncio.wait_for(reader.read(), 50 * UNIT)  # The server closes.
    finally:
        writer.close()
    async with asyncio.timeout(50 * UNIT):
        while _protocols(server):  # noqa: ASYNC110 - connection_lost runs on its own
            await asyncio.sleep(UNIT / 10)


async def test_a_refused_handshake_logs_no_error(server, alice, caplog):
    """A denial is the app's answer, not a failure: uvicorn 0.54's own class logs
    "ASGI callable returned without completing handshake" at ERROR for each one (a line
    per bad token, for anyone to cause); this one logs none, and still sends the whole
    refusal."""
    sid = await _session(alice)
    caplog.set_level("INFO", logger="uvicorn.error")
    for _ in range(3):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(_url(server, sid, user=None), ping_interval=None):
                pass
        assert refused.value.response.status_code == 401
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors == []
    refusals = [r for r in caplog.records if '"WebSocket %s"' in str(r.msg)]
    assert len(refusals) == 3  # uvicorn's INFO line per refusal is still there


# -- Keepalive -------------------------------------------------------------------------


async def test_pongs_keep_a_quiet_socket_open(server, alice):
    """A client that sends nothing but answers pings stays open through several ping
    rounds (each pong matched: a round-trip time is measured), then still talks."""
    sid = await _session(alice)
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        await _recv(websocket)
        (protocol,) = _protocols(server)
        await asyncio.sleep(3 * (INTERVAL + PING_TIMEOUT))
        assert protocol.last_ping_rtt > 0
        # Filed on the process's keepalive schedule (presence._pings), with no timer of
        # its own: its next ping or its pong's deadline.
        assert protocol.keepalive_tick is not None
        assert protocol.ping_timer is None and protocol.pong_timer is None
        await websocket.send(json.dumps({"type": "visibility", "state": "hidden"}))
        assert (await _recv(websocket))["session"]["state"] == "away"


async def test_a_client_that_answers_no_ping_is_closed_1011(server, alice):
    """A client that never answers a ping gets a close frame with 1011 within one ping
    interval plus the ping timeout, and the app sees it go."""
    sid = await _session(alice)
    raw = await RawSocket.open(server, sid)
    try:
        assert raw.head.startswith("HTTP/1.1 101")
        loop = asyncio.get_running_loop()
        opened = loop.time()
        assert await raw.close_code() == 1011  # Pings are read and left unanswered.
        assert loop.time() - opened < INTERVAL + PING_TIMEOUT + 20 * UNIT
    finally:
        raw.close()
    async with asyncio.timeout(50 * UNIT):
        while len(server.services.registry):  # noqa: ASYNC110 - polls the server
            await asyncio.sleep(UNIT / 2)


# -- Close codes, flow control, shutdown -------------------------------------------------


async def test_a_client_close_is_echoed_and_reaches_the_app(server, alice):
    """The client's close code comes back in the server's closing frame, and the app
    marks the session disconnected."""
    sid = await _session(alice)
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        await _recv(websocket)
        await websocket.close(4001, "bye")
    assert websocket.close_code == 4001

    async def state() -> str:
        return str((await alice.get(f"/sessions/{sid}")).json()["state"])

    async with asyncio.timeout(50 * UNIT):
        while await state() != "disconnected":  # noqa: ASYNC110 - polls the server
            await asyncio.sleep(UNIT / 2)


@pytest.mark.parametrize(
    ("act", "code"),
    [
        (lambda ws, alice, sid: alice.delete(f"/sessions/{sid}"), 1000),
        (lambda ws, alice, sid: ws.send("x" * (64 * 1024 + 1)), 1009),
    ],
    ids=["ended", "too-big"],
)
async def test_server_closes_keep_their_codes(
    server,
    alice,
    act: Callable[[Any, httpx.AsyncClient, str], Awaitable[object]],
    code: int,
):
    sid = await _session(alice)
    async with connect(_url(server, sid), ping_interval=None, max_size=None) as websocket:
        await _recv(websocket)
        await act(websocket, alice, sid)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(websocket.recv(), timeout=50 * UNIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code


async def test_sends_wait_while_the_transport_is_paused(server, alice):
    """uvicorn's flow control goes through the gate: while the transport has paused
    writing (for less than the ping timeout, which would abort it), the app's send
    waits; on resume it goes out."""
    sid = await _session(alice)
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        await _recv(websocket)
        (protocol,) = _protocols(server)
        protocol.pause_writing()
        await websocket.send(json.dumps({"type": "visibility", "state": "hidden"}))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(websocket.recv(), timeout=PING_TIMEOUT / 3)
        protocol.resume_writing()
        assert (await _recv(websocket))["session"]["state"] == "away"


async def test_shutdown_closes_open_sockets_1012(alice, server):
    """On shutdown every open socket gets a close frame with 1012 (service restart)."""
    sid = await _session(alice)
    async with connect(_url(server, sid), ping_interval=None) as websocket:
        await _recv(websocket)
        server.server.should_exit = True
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(websocket.recv(), timeout=50 * UNIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012


@contextlib.asynccontextmanager
async def _serve_on_plain_socket(settings: Settings) -> AsyncIterator[RunningServer]:
    """tests.utils.serve, but listening on a socket made with proto 0, as uvicorn's own
    bind for --workers makes it: asyncio then sets no TCP_NODELAY by itself."""
    app = create_app(settings)
    options = uvicorn_options(settings)
    options["log_config"] = None
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, **options))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    assert sock.proto == 0
    sock.bind(("127.0.0.1", 0))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(UNIT / 10)
        yield RunningServer(server, sock.getsockname()[1], app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=100 * UNIT)
        sock.close()


async def test_an_open_socket_keeps_tcp_nodelay():
    """The WebSocket protocol is only ever upgraded into from the HTTP one, on the same
    socket, so it keeps the TCP_NODELAY that the HTTP protocol set (presence.cli)."""
    async with _serve_on_plain_socket(_settings()) as running:
        client = httpx.AsyncClient(
            base_url=running.http + BASE, headers={"authorization": f"Bearer {token('alice')}"}
        )
        try:
            sid = await _session(client)
        finally:
            await client.aclose()
        async with connect(_url(running, sid), ping_interval=None) as websocket:
            await _recv(websocket)
            (protocol,) = _protocols(running)
            sock = protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# -- The queue and the gate, against asyncio's ---------------------------------------------


async def _queue_story(queue: Any) -> list[object]:
    """What a queue does through puts, waiting getters, a getter cancelled after it was
    woken, and get_nowait on empty; the same list for asyncio.Queue and Inbox."""
    log: list[object] = [queue.empty(), queue.qsize()]
    with contextlib.suppress(asyncio.QueueEmpty):
        queue.get_nowait()
        log.append("got from empty")

    queue.put_nowait(1)
    queue.put_nowait(2)
    log += [queue.empty(), queue.qsize(), await queue.get(), await queue.get(), queue.empty()]

    async def getter(name: str) -> None:
        try:
            log.append((name, await queue.get()))
        except asyncio.CancelledError:
            log.append((name, "cancelled"))
            raise

    first = asyncio.create_task(getter("first"))
    second = asyncio.create_task(getter("second"))
    third = asyncio.create_task(getter("third"))
    await asyncio.sleep(0)
    queue.put_nowait(3)
    first.cancel()  # Woken by the put, cancelled before it ran: 3 is second's.
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    queue.put_nowait(4)
    await asyncio.gather(first, second, third, return_exceptions=True)
    log.append((queue.empty(), queue.qsize()))

    waiting = asyncio.create_task(getter("waiting"))
    await asyncio.sleep(0)
    waiting.cancel()  # Cancelled while waiting: the next put is not lost.
    await asyncio.gather(waiting, return_exceptions=True)
    queue.put_nowait(5)
    log.append(await queue.get())
    return log


async def test_inbox_behaves_as_asyncio_queue():
    assert await _queue_story(Inbox()) == await _queue_story(asyncio.Queue())


async def test_inbox_holds_no_deque_while_empty():
    inbox = Inbox()
    assert inbox._items is None
    inbox.put_nowait({"type": "websocket.connect"})
    assert await inbox.get() == {"type": "websocket.connect"}
    assert inbox._items is None and inbox._getters == []


async def _gate_story(event: Any) -> list[object]:
    """What an event does through set, clear, several waiters and a cancelled one; the
    same list for asyncio.Event (set first, as uvicorn leaves it) and Gate."""
    event.set()
    log: list[object] = [event.is_set(), await event.wait()]
    event.clear()
    log.append(event.is_set())

    async def waiter(name: str) -> None:
        log.append((name, await event.wait()))

    tasks = [asyncio.create_task(waiter(name)) for name in ("a", "b", "c")]
    await asyncio.sleep(0)
    tasks[1].cancel()
    await asyncio.sleep(0)
    log.append([task.done() for task in tasks])
    event.set()
    event.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    log.append([type(result).__name__ for result in results])
    event.clear()
    late = asyncio.create_task(waiter("late"))
    await asyncio.sleep(0)
    log.append(late.done())
    event.set()
    await late
    return log


async def test_gate_behaves_as_asyncio_event():
    assert await _gate_story(Gate()) == await _gate_story(asyncio.Event())
    gate = Gate()
    gate.clear()
    waiting = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)
    gate.set()
    assert await waiting is True
    assert gate._waiters is None
