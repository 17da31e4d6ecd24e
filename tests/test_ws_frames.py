"""WebSocket frames that no message limit sees: control frames, continuation frames, and
what a client leaves unread (``presence.wsproto``).

Each attack is mounted against a real ``presence serve`` process by a client that speaks
frames itself (a TCP socket; websockets' sans-I/O client parses what it reads), while
the server's memory (VmRSS), descriptors (``/proc/<pid>/fd``) and ``/healthz`` are
measured. Figures are printed (``pytest -s``); the bounds asserted are generous.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette import status
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from presence.wsproto import MAX_FRAGMENTS, PresenceWebSocketProtocol

from .utils import JWT_SECRET, UNIT, ServerProcess, make_settings, serve, server_process, token

BASE = "/api/v1/chat"
BURST = 40  # Settings.ws_message_burst
MiB = 1024 * 1024
# What the server may grow by during an attack that is cut off: generous, the point
# being "bounded" against the hundreds of MiB an unbounded one reaches.
RSS_SLACK = 32 * MiB
# Rates that leave one limit to be seen alone: no refill within a test, or no rate at all.
NO_REFILL = "0.001"
NO_RATE = "1000000000"
VISIBLE = json.dumps({"type": "visibility", "state": "visible"}).encode()
HIDDEN = json.dumps({"type": "visibility", "state": "hidden"}).encode()


def _env(**extra: str) -> dict[str, str]:
    """A server in JWT mode on the memory store, logging warnings and up."""
    return {
        "PRESENCE_JWT_SECRET": JWT_SECRET,
        "LOG_LEVEL": "warning",
        "REDIS_URL": "memory://",
        **extra,
    }


# Keepalive pings far apart: no ping of the server's (nor its pong) within a test.
QUIET = {"SESSION_TTL_HOURS": "1", "HEARTBEAT_INTERVAL": "600"}


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex}"


@contextlib.contextmanager
def _api(server: ServerProcess, user: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.http + BASE,
        headers={"authorization": f"Bearer {token(user)}"},
        timeout=50 * UNIT,
    ) as client:
        yield client


def _session(api: httpx.Client) -> str:
    response = api.post("/sessions")
    assert response.status_code == 201
    return str(response.json()["id"])


def _wait_until(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(UNIT / 2)
    return True


def _state(api: httpx.Client, sid: str) -> str:
    return str(api.get(f"/sessions/{sid}").json()["state"])


def _rss(pid: int) -> int:
    """The process's resident memory in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _sockets(pid: int) -> int:
    """How many sockets the process holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(fd).startswith("socket:")
    return count


def _pid(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.pid


def _frames(opcode: Opcode, count: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """``count`` masked frames, as a client sends them (one mask key for all: the server
    only unmasks)."""
    return Frame(opcode, payload, fin=fin).serialize(mask=True) * count


def _fragmented(text: bytes, fragments: int, *, fin: bool = True) -> bytes:
    """A text message in ``fragments`` frames: the text in the first, the rest empty."""
    if fragments == 1:
        return Frame(Opcode.TEXT, text, fin=fin).serialize(mask=True)
    return (
        Frame(Opcode.TEXT, text, fin=False).serialize(mask=True)
        + _frames(Opcode.CONT, fragments - 2, fin=False)
        + Frame(Opcode.CONT, b"", fin=fin).serialize(mask=True)
    )


class RawClient:
    """A WebSocket client on a blocking TCP socket: it sends whatever bytes it is given,
    and reads only when told to (websockets' sans-I/O client parses what it reads)."""

    def __init__(self, port: int, sid: str, user: str, *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # Before connecting, so the window starts small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(50 * UNIT)
        uri = parse_uri(f"ws://127.0.0.1:{port}{BASE}/sessions/{sid}/ws?token={token(user)}")
        self.protocol = ClientProtocol(uri, max_size=None)
        self.pending: list[Frame] = []
        try:
            self.sock.connect(("127.0.0.1", port))
            self.protocol.send_request(self.protocol.connect())
            self.sock.sendall(b"".join(self.protocol.data_to_send()))
            while self.protocol.state is State.CONNECTING:
                self._read()
        except BaseException:
            self.sock.close()
            raise

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self.pending.append(event)
            else:
                assert isinstance(event, Response) and event.status_code == 101, event
        return bool(data)

    def frame(self) -> Frame | None:
        """The next frame from the server; None once the connection is closed."""
        while not self.pending:
            if not self._read() and not self.pending:
                return None
        return self.pending.pop(0)

    def message(self) -> dict:
        """The next text message, skipping control frames."""
        while True:
            frame = self.frame()
            assert frame is not None, "closed"
            if frame.opcode is Opcode.TEXT:
                return dict(json.loads(frame.data))

    def close_code(self) -> int | None:
        """Reads up to the server's close frame; its code (None: closed without one, or
        nothing for 50 units)."""
        try:
            while (frame := self.frame()) is not None:
                if frame.opcode is Opcode.CLOSE:
                    return Close.parse(frame.data).code
        except TimeoutError:
            pass
        return None

    def close(self) -> None:
        self.sock.close()


def _flood(client: RawClient, data: bytes, seconds: float) -> tuple[str, float]:
    """Sends ``data`` again and again, reading nothing, for ``seconds`` or until the
    server drops the connection; how it ended ("dropped", "blocked", "time") and when."""
    started = time.monotonic()
    client.sock.settimeout(10 * UNIT)
    while time.monotonic() - started < seconds:
        try:
            client.sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            return "dropped", time.monotonic() - started
        except TimeoutError:
            return "blocked", time.monotonic() - started
    return "time", time.monotonic() - started


def _flood_and_measure(
    client: RawClient, data: bytes, seconds: float, pid: int
) -> tuple[str, float, int]:
    """:func:`_flood` in a thread while the server's RSS is sampled; how the flood ended,
    when, and the server's peak growth in RSS."""
    before = _rss(pid)
    peak = before
    ended: list[tuple[str, float]] = []
    flood = threading.Thread(target=lambda: ended.append(_flood(client, data, seconds)))
    flood.start()
    while flood.is_alive():
        peak = max(peak, _rss(pid))
        flood.join(UNIT / 2)
    peak = max(peak, _rss(pid))
    ((how, took),) = ended
    return how, took, peak - before


# -- Control frames ------------------------------------------------------------------------


def test_a_ping_flood_that_reads_no_pongs_is_closed_and_memory_stays_bounded(user):
    """A client sending pings as fast as it can and reading none of the pongs is cut off
    by the rate limit at once; the server's memory stays where it was, and the session
    is marked disconnected."""
    with server_process(_env()) as server, _api(server, user) as api:
        sid = _session(api)
        client = RawClient(server.port, sid, user, rcvbuf=4096)
        try:
            client.message()  # the snapshot; nothing is read after it
            pings = _frames(Opcode.PING, 500, b"p" * 125)
            how, took, growth = _flood_and_measure(client, pings, 100 * UNIT, _pid(server))
        finally:
            client.close()
        print(f"ping flood: {how} after {took:.2f}s, server RSS +{growth / MiB:.1f} MiB")
        assert how == "dropped"
        assert growth < RSS_SLACK
        assert _wait_until(lambda: _state(api, sid) == "disconnected", 50 * UNIT)


@pytest.mark.parametrize("kind", ["ping", "pong", "continuation"])
def test_exactly_the_burst_of_frames_is_allowed_and_one_more_closes_1008(user, kind):
    """With no refill to speak of, the burst's worth of pings (each answered), of
    unsolicited pongs, or of continuation frames (a message in burst + 1 fragments) is
    taken and the socket carries on; the next such frame closes it with 1008, that ping
    unanswered."""
    env = _env(PRESENCE_WS_MESSAGES_PER_SECOND=NO_REFILL, **QUIET)
    with server_process(env) as server, _api(server, user) as api:
        sid = _session(api)
        client = RawClient(server.port, sid, user)
        try:
            client.message()
            if kind == "ping":
                client.send(_frames(Opcode.PING, BURST, b"burst"))
                for _ in range(BURST):
                    frame = client.frame()
                    assert frame is not None and frame.opcode is Opcode.PONG
                    assert frame.data == b"burst"
                one_more = _frames(Opcode.PING, 1, b"over")
            elif kind == "pong":
                client.send(_frames(Opcode.PONG, BURST, b"unasked"))
                one_more = _frames(Opcode.PONG, 1, b"over")
            else:
                one_more = _fragmented(b"", 2)
            # A message (in burst + 1 fragments for "continuation") is still answered.
            client.send(_fragmented(HIDDEN, BURST + 1 if kind == "continuation" else 1))
            assert client.message()["session"]["state"] == "away"
            client.send(one_more)
            frame = client.frame()
            assert frame is not None and frame.opcode is Opcode.CLOSE, frame
            assert Close.parse(frame.data).code == status.WS_1008_POLICY_VIOLATION
        finally:
            client.close()
        assert _wait_until(lambda: _state(api, sid) == "disconnected", 50 * UNIT)


# -- Continuation frames --------------------------------------------------------------------

MILLIONS = 2_000_000


@pytest.mark.parametrize(
    ("rate", "code"),
    [(None, status.WS_1008_POLICY_VIOLATION), (NO_RATE, status.WS_1009_MESSAGE_TOO_BIG)],
    ids=["rate-limit", "fragment-limit"],
)
def test_empty_continuation_frames_in_the_millions_are_cut_off_and_healthz_stays_fast(
    user, rate, code
):
    """A message begun and continued with two million empty frames is cut off early,
    by the rate (1008) or, with no rate to speak of, by the fragment count (1009); all
    the while another client's /healthz answers fast, and the server's memory stays
    where it was."""
    env = _env() if rate is None else _env(PRESENCE_WS_MESSAGES_PER_SECOND=rate)
    with server_process(env) as server, _api(server, user) as api:
        sid = _session(api)
        client = RawClient(server.port, sid, user)
        client.message()
        chunk = 1 << 20
        block = _frames(Opcode.CONT, chunk // 6, fin=False)
        sent = [0]
        done = threading.Event()

        def attack() -> None:
            try:
                client.send(Frame(Opcode.TEXT, b"", fin=False).serialize(mask=True))
                while sent[0] < MILLIONS:
                    client.send(block)
                    sent[0] += chunk // 6
                client.send(Frame(Opcode.CONT, b"", fin=True).serialize(mask=True))
            except (ConnectionResetError, BrokenPipeError, TimeoutError):
                pass
            finally:
                done.set()

        latencies: list[float] = []
        statuses: set[int] = set()
        read = threading.Event()
        pid = _pid(server)
        rss = [_rss(pid)]

        def poll_healthz() -> None:
            # Until the attack is over and its socket read to the end (the server has
            # dealt with all it was sent, join included), and at least 20 times.
            with httpx.Client(base_url=server.http, timeout=100 * UNIT) as health:
                while not (done.is_set() and read.is_set()) or len(latencies) < 20:
                    started = time.perf_counter()
                    statuses.add(health.get("/healthz").status_code)
                    latencies.append(time.perf_counter() - started)
                    rss.append(_rss(pid))
                    time.sleep(UNIT / 10)

        threads = [threading.Thread(target=attack), threading.Thread(target=poll_healthz)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            closed_with = client.close_code()
            closed_after = time.monotonic() - started
        finally:
            read.set()
            done.wait(100 * UNIT)
            client.close()
            for thread in threads:
                thread.join(100 * UNIT)
        print(
            f"{MILLIONS:,} empty continuation frames: close {closed_with} after "
            f"{closed_after:.2f}s, {sent[0]:,} sent by then; worst /healthz "
            f"{max(latencies) * 1000:.0f} ms over {len(latencies)} requests; server RSS "
            f"+{(max(rss) - rss[0]) / MiB:.1f} MiB at most"
        )
        assert closed_with == code
        assert sent[0] < MILLIONS
        assert statuses == {200}
        assert max(latencies) < 5 * UNIT
        assert max(rss) - rss[0] < RSS_SLACK
        assert _wait_until(lambda: _state(api, sid) == "disconnected", 50 * UNIT)


def test_a_message_of_the_fragment_limit_is_read_and_one_fragment_more_closes_1009(user):
    """With no rate to speak of, a message in exactly MAX_FRAGMENTS frames is read and
    answered; one in a frame more closes the socket with 1009 at that frame, before the
    message ends."""
    with (
        server_process(_env(PRESENCE_WS_MESSAGES_PER_SECOND=NO_RATE)) as server,
        _api(server, user) as api,
    ):
        sid = _session(api)
        client = RawClient(server.port, sid, user)
        try:
            client.message()
            client.send(_fragmented(HIDDEN, MAX_FRAGMENTS))
            assert client.message()["session"]["state"] == "away"
            client.send(_fragmented(VISIBLE, MAX_FRAGMENTS + 1, fin=False))
            assert client.close_code() == status.WS_1009_MESSAGE_TOO_BIG
        finally:
            client.close()


# -- What a client leaves unread --------------------------------------------------------------


def test_a_client_that_reads_no_pongs_is_dropped_past_the_unsent_limit(user):
    """With no rate to speak of, pongs that a client never reads pile up in the server's
    write buffer until they pass PRESENCE_WS_MAX_UNSENT_BYTES: the connection is then
    dropped at once (long before the ping timeout), the server's memory stays bounded,
    its socket is closed and the session is marked disconnected."""
    env = _env(
        PRESENCE_WS_MESSAGES_PER_SECOND=NO_RATE,
        PRESENCE_WS_MAX_UNSENT_BYTES=str(256 * 1024),
        PRESENCE_PING_TIMEOUT="60",
        LOG_LEVEL="info",
        **QUIET,
    )
    with server_process(env) as server, _api(server, user) as api:
        sid = _session(api)
        pid = _pid(server)
        before = _sockets(pid)
        client = RawClient(server.port, sid, user, rcvbuf=4096)
        try:
            client.message()
            assert _sockets(pid) == before + 1
            pings = _frames(Opcode.PING, 500, b"p" * 125)
            how, took, growth = _flood_and_measure(client, pings, 100 * UNIT, pid)
        finally:
            client.close()
        print(f"unread pongs: {how} after {took:.2f}s, server RSS +{growth / MiB:.1f} MiB")
        assert how == "dropped"
        assert growth < RSS_SLACK
        assert _wait_until(lambda: _sockets(pid) == before, 50 * UNIT)
        assert _wait_until(lambda: _state(api, sid) == "disconnected", 50 * UNIT)
        assert "bytes unsent" in server.log.read_text()


def test_a_client_that_reads_none_of_its_messages_is_dropped_within_the_ping_timeout(user):
    """A client that sends messages (each answered by a snapshot) and reads none of the
    answers fills the server's buffers until the app's send waits on flow control; one
    ping timeout later the connection is dropped, the app's send gives up, and the
    session is marked disconnected. The keepalive is far off, so it is not what ends it."""
    ping_timeout = 10 * UNIT
    env = _env(
        PRESENCE_WS_MESSAGES_PER_SECOND=NO_RATE,
        PRESENCE_PING_TIMEOUT=str(ping_timeout),
        LOG_LEVEL="info",
        **QUIET,
    )
    with server_process(env) as server, _api(server, user) as api:
        sid = _session(api)
        pid = _pid(server)
        before = _sockets(pid)
        client = RawClient(server.port, sid, user, rcvbuf=4096)
        try:
            client.message()
            messages = (
                Frame(Opcode.TEXT, HIDDEN).serialize(mask=True)
                + Frame(Opcode.TEXT, VISIBLE).serialize(mask=True)
            ) * 50
            # Sends until the server stops taking them (the app is stuck in a send).
            how, took = _flood(client, messages, 100 * UNIT)
            print(f"unread snapshots: the flood ended ({how}) after {took:.2f}s")
            assert how in ("blocked", "dropped")
            assert _wait_until(lambda: _state(api, sid) == "disconnected", 100 * UNIT)
            assert _wait_until(lambda: _sockets(pid) == before, 50 * UNIT)
        finally:
            client.close()
        assert "not taken in time" in server.log.read_text()


@pytest.mark.parametrize("how", ["client-close", "keepalive-timeout"])
async def test_a_socket_closed_with_bytes_unsent_is_dropped_after_the_ping_timeout(how):
    """A socket closed while its client leaves bytes unread (the client's close frame
    echoed, or its ping unanswered) is dropped one ping timeout after the close rather
    than waiting for a drain that never comes; the app sees the disconnect."""
    # The first keepalive ping comes once the pongs wait in the buffer.
    interval, ping_timeout = 20 * UNIT, 5 * UNIT
    settings = make_settings(
        heartbeat_interval=interval if how == "keepalive-timeout" else 600.0,
        session_ttl=3600.0,
        ping_timeout=ping_timeout,
        ws_messages_per_second=float(NO_RATE),
    )
    async with serve(settings) as server:
        async with httpx.AsyncClient(
            base_url=server.http + BASE, headers={"authorization": f"Bearer {token('alice')}"}
        ) as api:
            sid = (await api.post("/sessions")).json()["id"]
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", server.port))
                uri = parse_uri(f"{server.ws}{BASE}/sessions/{sid}/ws?token={token('alice')}")
                client = ClientProtocol(uri)
                client.send_request(client.connect())
                await loop.sock_sendall(sock, b"".join(client.data_to_send()))
                async with asyncio.timeout(50 * UNIT):
                    while client.state is State.CONNECTING:
                        client.receive_data(await loop.sock_recv(sock, 65536))
                (protocol,) = [
                    c
                    for c in server.server.server_state.connections
                    if isinstance(c, PresenceWebSocketProtocol)
                ]
                # Pongs, read by no one, until some wait in the server's write buffer.
                pings, sent = _frames(Opcode.PING, 200, b"p" * 125), 0
                async with asyncio.timeout(100 * UNIT):
                    while protocol.transport.get_write_buffer_size() == 0:
                        await loop.sock_sendall(sock, pings)
                        sent += 200
                        await asyncio.sleep(UNIT / 100)
                unsent = protocol.transport.get_write_buffer_size()
                assert 0 < unsent < 64 * 1024  # Not paused: the close is what must bound it.
                if how == "client-close":
                    await loop.sock_sendall(
                        sock, Frame(Opcode.CLOSE, Close(1000, "").serialize()).serialize(mask=True)
                    )
                started = loop.time()
                async with asyncio.timeout(interval + 2 * ping_timeout + 50 * UNIT):
                    while protocol in server.server.server_state.connections:  # noqa: ASYNC110 - polls the server
                        await asyncio.sleep(UNIT / 10)
                print(
                    f"{how}: dropped {loop.time() - started:.2f}s on, {unsent} bytes unsent "
                    f"after {sent} pings"
                )
                async with asyncio.timeout(50 * UNIT):
                    while (await api.get(f"/sessions/{sid}")).json()["state"] != "disconnected":  # noqa: ASYNC110 - polls the server
                        await asyncio.sleep(UNIT / 2)
            finally:
                sock.close()


# -- Clients that do nothing wrong, and every worker ---------------------------------------------


@pytest.mark.slow
async def test_browser_like_clients_are_never_closed_even_a_thousand_at_once(redis_url):
    """A thousand clients that answer the server's pings (every half second here), send a
    visibility change now and then and some a ping of their own, are never closed by any
    of these limits."""
    count, seconds = 1000, 40 * UNIT
    env = _env(
        REDIS_URL=redis_url,
        HEARTBEAT_INTERVAL=str(5 * UNIT),
        PRESENCE_PING_TIMEOUT="20",
        LOG_LEVEL="info",
    )
    with server_process(env) as server:
        users = [f"user-{uuid.uuid4().hex}" for _ in range(count)]
        limits = httpx.Limits(max_connections=50)
        # At most 50 requests at once, so that each one's timeout counts its own request
        # and not the wait for a pooled connection behind the others (a PoolTimeout on
        # a loaded machine).
        creating = asyncio.Semaphore(50)

        async def create(api: httpx.AsyncClient, user: str) -> httpx.Response:
            async with creating:
                return await api.post(
                    "/sessions", headers={"authorization": f"Bearer {token(user)}"}
                )

        async with httpx.AsyncClient(
            base_url=server.http + BASE, limits=limits, timeout=300 * UNIT
        ) as api:
            created = await asyncio.gather(*(create(api, u) for u in users))
        sids = [response.json()["id"] for response in created]
        closed: list[str] = []
        answers = [0] * count
        opening = asyncio.Semaphore(50)

        async def browser(index: int) -> None:
            url = f"{server.ws}{BASE}/sessions/{sids[index]}/ws?token={token(users[index])}"
            async with opening:
                websocket = await connect(
                    url, ping_interval=1.0 if index % 2 else None, open_timeout=100 * UNIT
                )
            try:
                assert json.loads(await websocket.recv())["type"] == "snapshot"
                started = time.monotonic()
                state = "hidden"
                while time.monotonic() - started < seconds:
                    await asyncio.sleep(random.uniform(5 * UNIT, 15 * UNIT))
                    await websocket.send(json.dumps({"type": "visibility", "state": state}))
                    assert json.loads(await websocket.recv())["type"] == "snapshot"
                    answers[index] += 1
                    state = "visible" if state == "hidden" else "hidden"
            except ConnectionClosed as exc:
                closed.append(f"{index}: {exc}")
            finally:
                await websocket.close()

        await asyncio.gather(*(browser(index) for index in range(count)))
        print(f"{count} browsers: {sum(answers)} snapshots, {len(closed)} closed")
        assert closed == []
        assert min(answers) >= 1
        assert "aborted" not in server.log.read_text()


def _workers(server: ServerProcess) -> list[int]:
    """The server's worker processes (uvicorn spawns them; the resource tracker is not one)."""
    pid = _pid(server)
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def _holder(workers: list[int], server_port: int, client: RawClient) -> int:
    """The worker that holds the server's end of a client's connection."""
    client_port = client.sock.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            inode = fields[9]
    assert inode is not None
    for worker in workers:
        for fd in Path(f"/proc/{worker}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):
                if os.readlink(fd) == f"socket:[{inode}]":
                    return worker
    raise AssertionError("no worker holds the connection")


@pytest.mark.slow
def test_the_limits_reach_every_worker(redis_url):
    """Under --workers 2 (sharing a redis-server) each worker applies the limits from the
    environment: with no rate to speak of, a message in 100 fragments (past the default
    burst) is answered on both workers' sockets, and one in a fragment more than the
    limit closes 1009."""
    env = _env(PRESENCE_WS_MESSAGES_PER_SECOND=NO_RATE, REDIS_URL=redis_url)
    with server_process(env, "--workers", "2") as server:
        assert _wait_until(lambda: len(_workers(server)) == 2, 100 * UNIT)
        workers = _workers(server)
        clients: dict[int, RawClient] = {}
        try:
            # The kernel hands each connection to either worker: open sockets, a user
            # each, until both hold one.
            for _ in range(64):
                user = f"user-{uuid.uuid4().hex}"
                with _api(server, user) as api:
                    sid = _session(api)
                client = RawClient(server.port, sid, user)
                client.message()
                holder = _holder(workers, server.port, client)
                if holder in clients:
                    client.close()
                else:
                    clients[holder] = client
                if len(clients) == 2:
                    break
            assert len(clients) == 2
            for client in clients.values():
                client.send(_fragmented(HIDDEN, 100))
                assert client.message()["session"]["state"] == "away"
                client.send(_fragmented(VISIBLE, MAX_FRAGMENTS + 1, fin=False))
                assert client.close_code() == status.WS_1009_MESSAGE_TOO_BIG
        finally:
            for client in clients.values():
                client.close()
