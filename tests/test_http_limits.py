"""The HTTP protocol's limits on request heads, each attack mounted on a real
``presence serve`` child process over raw sockets.

- size: the request line and headers, blank line included, are capped at
  ``PRESENCE_MAX_HEADER_BYTES`` (exactly: the cap is served, one byte more is 431), so an
  endless header line or URL is cut off near the cap and the server's memory does not
  grow with it; the WebSocket handshake gets the same cap;
- time: a head that is not complete ``PRESENCE_HEADER_TIMEOUT`` after its first byte (on a
  fresh connection: after the connection) is closed, however slowly it trickles, and so
  are thousands of them, their descriptors freed; between requests uvicorn's keep-alive
  timeout alone applies, and neither a body nor an open WebSocket is bound by it;
- descriptors: at a low ``ulimit -n`` the accept loop's errors make a few log lines, not
  a traceback per queued connection, and the server answers again once the clients go.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import logging
import os
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from presence import _http
from presence.settings import Settings

from .test_multiprocess import _stopped, _workers
from .utils import JWT_SECRET, UNIT, ServerProcess, server_process, token

pytestmark = pytest.mark.slow

BASE = "/api/v1/chat"
AUTH = f"Bearer {token('alice')}"
CAP = Settings().max_header_bytes
#: The servers' PRESENCE_HEADER_TIMEOUT in these tests (the default is 10 s).
HEADER_TIMEOUT = 10 * UNIT
#: How late a close may come and still be "within the bound".
SLACK = 20 * UNIT
#: uvicorn's own idle timeout between requests on a kept-alive connection.
KEEP_ALIVE = inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default
ATTACK_BYTES = 100 * 1024 * 1024
MiB = 1024 * 1024


def _env(**extra: str) -> dict[str, str]:
    return {
        "PRESENCE_JWT_SECRET": JWT_SECRET,
        "LOG_LEVEL": "warning",
        "PRESENCE_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        **extra,
    }


def _request(
    size: int,
    method: str = "GET",
    path: str = "/healthz",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> bytes:
    """A request whose line and headers, up to and with the blank line, are ``size``
    bytes (an ``X-Pad`` header makes up the rest), followed by ``body``."""
    start = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    start += "".join(f"{name}: {value}\r\n" for name, value in headers)
    if body:
        start += f"Content-Length: {len(body)}\r\n"
    pad = size - len(start) - len("X-Pad: \r\n\r\n")
    assert pad >= 0
    head = f"{start}X-Pad: {'a' * pad}\r\n\r\n".encode()
    assert len(head) == size
    return head + body


def _connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=50 * UNIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _response(sock: socket.socket | _Replay) -> tuple[int, dict[str, str], bytes]:
    """Reads one response, and not a byte past it: its status, headers (names
    lowercased) and body.

    The head is read a byte at a time and the body to its length, so that a response
    to a pipelined request, which can arrive in the same segment, stays in the socket
    for the next call (read in 64 KiB chunks, it was dropped with the first's body, and
    the next call waited for the keep-alive close).
    """
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError(f"closed after {data!r}")
        data += chunk
    status_line, *lines = data[:-4].decode("latin-1").split("\r\n")
    fields = dict(line.split(":", 1) for line in lines)
    headers = {name.lower(): value.strip() for name, value in fields.items()}
    length = int(headers.get("content-length", "0"))
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def _until_closed(sock: socket.socket, within: float) -> tuple[float | None, bytes]:
    """Reads until the server closes the connection, at most ``within`` seconds.

    Returns:
        The seconds it took (None: still open), and what was received meanwhile.
    """
    start = time.monotonic()
    received = b""
    while (left := start + within - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return time.monotonic() - start, received
        if not chunk:
            return time.monotonic() - start, received
        received += chunk
    return None, received


def _error_code(body: bytes) -> str:
    error = json.loads(body)["error"]
    assert error["message"]
    return str(error["code"])


def _rss(pid: int) -> int:
    """The process's resident set size in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _pid(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.pid


def _healthz(server: ServerProcess) -> int:
    """GET /healthz on a connection of its own, which the server has closed on return."""
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status = _response(sock)[0]
        _until_closed(sock, SLACK)
        return status


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    """A server with the default cap and a header timeout of ten units."""
    with server_process(_env()) as running:
        yield running


# -- size -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    [b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ", b"GET /healthz?q="],
    ids=["header line", "request line"],
)
def test_an_endless_header_line_is_cut_off_near_the_cap_and_the_server_does_not_grow(
    server: ServerProcess, prefix: bytes
) -> None:
    """100 MiB of one header line (or URL), sent as fast as the server reads, is cut off
    near the cap, and the server's resident memory grows by a few MiB at most meanwhile."""
    pid = _pid(server)
    for _ in range(3):  # what serving a request allocates once, before the baseline
        with _connect(server) as sock:
            sock.sendall(_request(CAP, headers=(("Connection", "close"),)))
            assert _response(sock)[0] == 200
    baseline = peak = _rss(pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss(pid))
            done.wait(UNIT / 10)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sent, closed = 0, False
    chunk = b"a" * 65536
    deadline = time.monotonic() + 600 * UNIT
    try:
        with _connect(server) as sock:
            # A small send buffer, so that what "sent" counts is near what the server read.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            try:
                sock.sendall(prefix)
                while sent < ATTACK_BYTES and time.monotonic() < deadline:
                    sent += sock.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
    finally:
        done.set()
        sampler.join()
    growth = max(peak, _rss(pid)) - baseline
    assert closed, f"all {sent / MiB:.0f} MiB sent and the connection still open"
    assert sent < 4 * MiB, f"{sent / MiB:.1f} MiB sent before the server closed"
    assert growth < 8 * MiB, f"the server grew by {growth / MiB:.1f} MiB"
    assert _healthz(server) == 200


def test_headers_of_exactly_the_cap_are_served_and_one_byte_more_is_431(
    server: ServerProcess,
) -> None:
    """A request line and headers of exactly PRESENCE_MAX_HEADER_BYTES, blank line
    included, are served (on a fresh connection, on a kept-alive one, pipelined, and with
    a body in the same packet); one byte more is 431 with a JSON error, then closed."""
    with _connect(server) as sock:
        sock.sendall(_request(CAP))
        assert _response(sock)[0] == 200
        sock.sendall(_request(CAP))
        assert _response(sock)[0] == 200
        sock.sendall(_request(CAP) + _request(CAP))
        assert _response(sock)[0] == 200
        assert _response(sock)[0] == 200
        sock.sendall(_request(CAP + 1))
        status, headers, body = _response(sock)
        assert (status, headers["content-type"]) == (431, "application/json")
        assert headers["connection"] == "close"
        assert _error_code(body) == "headers_too_large"
        took, rest = _until_closed(sock, SLACK)
        assert took is not None and rest == b""
    with _connect(server) as sock:
        sock.sendall(_request(CAP + 1))
        status, _, body = _response(sock)
        assert (status, _error_code(body)) == (431, "headers_too_large")
        assert _until_closed(sock, SLACK)[0] is not None
    credentials = (("Authorization", AUTH), ("Content-Type", "application/json"))
    with _connect(server) as sock:
        sock.sendall(_request(CAP, "POST", f"{BASE}/sessions", credentials, b"{}"))
        assert _response(sock)[0] == 201
        sock.sendall(_request(CAP + 1, "POST", f"{BASE}/sessions", credentials, b"{}"))
        assert _response(sock)[0] == 431


async def test_the_websocket_handshake_gets_the_cap_and_an_open_socket_outlives_the_timeout(
    server: ServerProcess,
) -> None:
    """A WebSocket handshake whose headers pass the cap, or with a line over websockets'
    own limit (8192 bytes), is refused with 431 and the JSON error; one within both opens
    a socket that stays open well past the header timeout."""
    async with httpx.AsyncClient(base_url=server.http + BASE) as client:
        created = await client.post("/sessions", headers={"authorization": AUTH})
    url = f"{server.ws}{BASE}/sessions/{created.json()['id']}/ws?token={token('alice')}"
    for pad in ({"x-pad": "a" * CAP}, {"x-pad": "a" * 8192}):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers=pad, open_timeout=50 * UNIT):
                pass
        assert refused.value.response.status_code == 431
        assert _error_code(refused.value.response.body) == "headers_too_large"
    async with connect(url, additional_headers={"x-pad": "a" * 4096}) as websocket:
        assert json.loads(await websocket.recv())["type"] == "snapshot"
        await asyncio.sleep(3 * HEADER_TIMEOUT)
        await websocket.send(json.dumps({"type": "visibility", "state": "hidden"}))
        snapshot = json.loads(await asyncio.wait_for(websocket.recv(), timeout=50 * UNIT))
        assert snapshot["session"]["state"] == "away"


# -- time -----------------------------------------------------------------------------


def test_a_head_that_never_finishes_is_closed_at_the_header_timeout(
    server: ServerProcess,
) -> None:
    """A connection that sends part of a head and stops, one that trickles it a byte at a
    time, and one that sends nothing are each closed once PRESENCE_HEADER_TIMEOUT has
    passed since it connected, and not before; a head cut short gets a 408 first."""
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        took, received = _until_closed(sock, HEADER_TIMEOUT + SLACK)
    assert took is not None, "a head cut short is held open"
    assert took > 0.9 * HEADER_TIMEOUT
    status, headers, body = _response(_Replay(received))
    assert (status, headers["connection"], _error_code(body)) == (408, "close", "header_timeout")

    with _connect(server) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        closed = False
        while not closed and time.monotonic() - start < HEADER_TIMEOUT + SLACK:
            try:
                sock.sendall(b"a")
                closed = _until_closed(sock, 2 * UNIT)[0] is not None
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        took = time.monotonic() - start
    assert closed, "a trickling head is held open"
    assert 0.9 * HEADER_TIMEOUT < took < HEADER_TIMEOUT + SLACK

    with _connect(server) as sock:
        took, received = _until_closed(sock, HEADER_TIMEOUT + SLACK)
    assert took is not None, "a silent connection is held open"
    assert took > 0.9 * HEADER_TIMEOUT
    # No 408 for a connection that never sent a byte: a browser's preconnected socket
    # would show it as the answer to the request it sends next.
    assert received == b""


class _Replay:
    """Bytes already received, read back like a socket."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv(self, size: int) -> bytes:
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def test_each_request_on_a_kept_alive_connection_gets_its_own_header_bound(
    server: ServerProcess,
) -> None:
    """Requests a few units apart keep a connection open well past the header timeout;
    a later request on it whose head never finishes is closed with a 408 one header
    timeout after its first byte (neither at the keep-alive timeout nor never)."""
    with _connect(server) as sock:
        start = time.monotonic()
        while time.monotonic() - start < 3 * HEADER_TIMEOUT:
            sock.sendall(_request(CAP // 2))
            assert _response(sock)[0] == 200
            time.sleep(3 * UNIT)
        time.sleep(HEADER_TIMEOUT / 2)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        took, received = _until_closed(sock, HEADER_TIMEOUT + SLACK)
    assert took is not None, "a kept-alive connection's unfinished head is held open"
    assert 0.9 * HEADER_TIMEOUT < took < HEADER_TIMEOUT + SLACK
    assert _response(_Replay(received))[0] == 408


@pytest.mark.parametrize("header_timeout", [HEADER_TIMEOUT, 6.0 * KEEP_ALIVE])
def test_an_idle_kept_alive_connection_is_closed_by_the_keep_alive_timeout(
    header_timeout: float,
) -> None:
    """Between requests only uvicorn's keep-alive timeout applies: a header timeout
    shorter than it does not close an idle connection early, nor does a longer one keep
    it open."""
    with (
        server_process(_env(PRESENCE_HEADER_TIMEOUT=str(header_timeout))) as server,
        _connect(server) as sock,
    ):
        sock.sendall(_request(1024))
        assert _response(sock)[0] == 200
        took, received = _until_closed(sock, KEEP_ALIVE + SLACK)
    assert took is not None, "an idle kept-alive connection is held open"
    assert KEEP_ALIVE - 2 * UNIT < took < KEEP_ALIVE + SLACK
    assert received == b""


def test_a_body_still_arriving_after_the_header_timeout_is_read(server: ServerProcess) -> None:
    """The header timeout bounds the head alone: a request whose body arrives slowly,
    its last byte well after the header timeout, is read and answered."""
    with _connect(server) as sock:
        request = _request(
            1024,
            "POST",
            f"{BASE}/sessions",
            (("Authorization", AUTH), ("Content-Type", "application/json")),
            b"{}",
        )
        sock.sendall(request[:-1])
        time.sleep(2 * HEADER_TIMEOUT)
        sock.sendall(request[-1:])
        assert _response(sock)[0] == 201


def test_two_thousand_unfinished_heads_are_all_closed_and_their_descriptors_freed() -> None:
    """2,000 connections whose heads never finish, all held at once, are all closed at
    the header timeout, and the server's descriptor count returns to what it was."""
    count = 2000
    # Long enough for all of them to be open before the first is closed.
    header_timeout = 50 * UNIT
    sockets: list[socket.socket] = []
    selector = selectors.DefaultSelector()
    with server_process(_env(PRESENCE_HEADER_TIMEOUT=str(header_timeout))) as server:
        pid = _pid(server)
        assert _healthz(server) == 200
        baseline = _fds(pid)
        try:
            start = time.monotonic()
            for _ in range(count):
                sockets.append(sock := _connect(server))
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            while _fds(pid) < baseline + count and time.monotonic() - start < header_timeout:
                time.sleep(UNIT / 10)
            held = _fds(pid) - baseline
            assert held >= count, f"the server held at most {held} of the {count} at once"
            for sock in sockets:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            still_open = set(sockets)
            deadline = start + header_timeout + 2 * SLACK
            while still_open and (left := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(left):
                    sock = key.fileobj  # type: ignore[assignment]
                    try:
                        if sock.recv(65536):
                            continue  # the 408
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:
                        pass
                    selector.unregister(sock)
                    still_open.discard(sock)
            assert not still_open, f"{len(still_open)} of {count} unfinished heads still open"
            deadline = time.monotonic() + SLACK
            while _fds(pid) > baseline and time.monotonic() < deadline:
                time.sleep(UNIT)
            assert _fds(pid) <= baseline, f"{_fds(pid) - baseline} descriptors still held"
        finally:
            selector.close()
            for sock in sockets:
                sock.close()


# -- descriptors ----------------------------------------------------------------------

LOW_NOFILE = 64


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_NOFILE, LOW_NOFILE))


def test_at_a_low_descriptor_limit_the_accept_errors_make_a_few_log_lines() -> None:
    """With ulimit -n 64 and a few hundred connections held, the accept loop's errors
    add a few lines to the log (under 20 KB in five seconds, no tracebacks), the server
    answers again once the connections go, and its shutdown adds no more."""
    env = _env(PRESENCE_HEADER_TIMEOUT="600")
    with server_process(env, preexec_fn=_low_nofile) as server:
        assert _healthz(server) == 200
        before = server.log.stat().st_size
        sockets = []
        try:
            for _ in range(300):
                sockets.append(_connect(server))
            time.sleep(50 * UNIT)
            written = server.log.read_bytes()[before:]
        finally:
            for sock in sockets:
                sock.close()
        assert len(written) < 20_000, f"{len(written)} bytes logged in 5 s"
        assert b"Traceback" not in written
        assert b"Too many open files" in written
        deadline = time.monotonic() + 100 * UNIT
        while True:
            try:
                if _healthz(server) == 200:
                    break
            except (OSError, EOFError):
                pass
            assert time.monotonic() < deadline, "the server does not answer again"
            time.sleep(UNIT)
        server.stop()
        written = server.log.read_bytes()[before:]
        assert len(written) < 20_000, f"{len(written)} bytes logged by the end of shutdown"
        assert b"Traceback" not in written


async def test_failing_accepts_are_one_line_then_a_count_and_other_errors_pass_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In the loop's own exception handler: the first failing accept is one line, the
    many after it within the interval one more line with their count when it ends, a
    retry of theirs failing at shutdown nothing, and any other error reaches the handler
    there was before, once."""
    monkeypatch.setattr(_http, "ACCEPT_ERROR_LOG_INTERVAL", 5 * UNIT)
    loop = asyncio.get_running_loop()
    passed_on: list[str] = []
    loop.set_exception_handler(lambda loop, context: passed_on.append(context["message"]))
    lines: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("presence.http").addHandler(handler)
    try:
        _http.limit_accept_error_log()
        _http.limit_accept_error_log()  # a second start-up in this loop wraps nothing more
        failure = {
            "message": "socket.accept() out of system resource",
            "exception": OSError(errno.EMFILE, os.strerror(errno.EMFILE)),
        }
        for _ in range(1000):
            loop.call_exception_handler(failure)
        retry = "Exception in callback BaseSelectorEventLoop._start_serving(...)"
        # What each retry of those says once shutdown has closed the listening socket.
        loop.call_exception_handler({"message": retry, "exception": ValueError("fd -1")})
        loop.call_exception_handler({"message": "something else"})
        await asyncio.sleep(10 * UNIT)
    finally:
        loop.set_exception_handler(None)
        logging.getLogger("presence.http").removeHandler(handler)
    assert len(lines) == 2, lines
    assert "Too many open files" in lines[0]
    assert "999 more times" in lines[1]
    assert passed_on == ["something else"]


# -- every worker ---------------------------------------------------------------------


def test_the_limits_hold_in_every_worker() -> None:
    """With --workers 2 and PRESENCE_MAX_HEADER_BYTES=2048, each worker serves a head of
    exactly 2048 bytes, answers one byte more with 431, and closes a head that never
    finishes at the header timeout."""
    cap = 2048
    env = _env(PRESENCE_MAX_HEADER_BYTES=str(cap))
    with server_process(env, "--workers", "2") as server:
        deadline = time.monotonic() + 150 * UNIT
        while len(workers := _workers(server)) < 2:
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(UNIT)
        for worker, other in (workers, workers[::-1]):
            with _stopped(other):
                # The first answer also waits out the worker's own start-up.
                assert _healthz(server) == 200
                for size, status in ((cap, 200), (cap + 1, 431)):
                    with _connect(server) as sock:
                        sock.sendall(_request(size))
                        assert _response(sock)[0] == status, f"worker {worker}, {size} bytes"
                with _connect(server) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
                    took, _ = _until_closed(sock, HEADER_TIMEOUT + SLACK)
                    assert took is not None, f"worker {worker} holds an unfinished head"
