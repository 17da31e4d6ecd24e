"""The HTTP protocol Presence serves with, and a quieter log for failing accepts.

:class:`HttpProtocol` is uvicorn's httptools protocol with ``TCP_NODELAY`` on every
connection and two bounds on each request's head (its line and headers), which uvicorn's
has neither of. Without them, httptools joins a header line, and uvicorn the URL, by
concatenation as it arrives, so a client sending one endless header line grew the
server by twice what it sent (200 MiB at the peak for 100 MiB, measured on uvicorn
0.54.0 and httptools 0.9.0); and a head that never finished held its connection, and a
descriptor, forever: uvicorn's only timer is the keep-alive one, armed after a response
and cancelled by the next byte, so a fresh connection, or a kept-alive one that has sent
a byte, had none.

- **Size.** The bytes of a head are counted as they arrive: one add and compare per
  chunk received, and only until the head is complete. Past ``max_header_bytes`` the
  request is answered 431 (JSON error ``headers_too_large``) and the connection closed.
  A chunk that takes the count past the cap is fed to the parser in two parts, up to the
  cap and the rest, so that a head of exactly the cap with a body (or the next request)
  in the same packet is served, and one byte more is not. The count starts at a
  request's first byte; for a pipelined request, whose first part came in the chunk
  that ended the one before, that part goes uncounted, so it is held to twice the cap.
- **Time.** A head not complete ``header_timeout`` seconds after its first byte (for
  the first request, after the connection was made) is closed: with a 408 (JSON error
  ``header_timeout``) if some of it came, silently if nothing did, since a browser
  would take a 408 on a socket it opened ahead of time for the answer to the request it
  then sends. Bodies are not bound, nor is anything once the headers are complete.
- **A WebSocket handshake** is a head like any other until it is complete; websockets
  then parses it again, refusing a line over 8192 bytes or more than 128 headers, and
  uvicorn never sent that refusal: such a handshake was held open forever. It is
  answered 431 here (400 for any other head websockets refuses) and closed.

There is no timer per request for it. The head shares uvicorn's keep-alive timer
(``timeout_keep_alive_task``): a response arms it for the keep-alive timeout (5 s) and
the next request's first byte no longer cancels it; when it comes due,
:meth:`HttpProtocol.timeout_keep_alive_handler` looks at where the connection is. Idle
between requests: closed, as uvicorn does. A head under way: armed again for what is
left of its bound, or refused. Headers complete: the request is the app's, and the next
response arms the timer anew. So a kept-alive request costs the one timer uvicorn arms
after each response, as before; a connection gets one when it is made, and a head one
of its own only if the header timeout is the shorter. Measured by driving the protocol
with a trivial app on a kept-alive connection, a request costs 13.8 us here against
13.1 us for :class:`NoDelayHttpToolsProtocol`; a timer of its own for each head, armed
at its first byte and cancelled at its end, cost 1.4 us a request more.

:func:`limit_accept_error_log`: when the process is out of descriptors, asyncio's
accept loop (``BaseSelectorEventLoop._accept_connection``) calls the loop's exception
handler with "socket.accept() out of system resource" and a traceback, and does not
stop there: it tries again up to ``backlog`` (8192) times in the same pass, and each
failure schedules a retry a second later (``_start_serving``), which starts another such
pass. At ``ulimit -n 64`` with a few hundred connections waiting, that was 36 MB of log
in 5 s, 7 s before the server answered again once they had gone; and at shutdown, every
retry still pending fails on the closed listening socket, with a traceback each. The
handler it installs writes one line for the first failed accept and then, while they
last, one line every :data:`ACCEPT_ERROR_LOG_INTERVAL` seconds saying how many there
were; it drops the retries that fail at shutdown, and passes every other context on.

Read against uvicorn 0.54.0 (``uvicorn/protocols/http/httptools_impl.py``): the protocol
overrides ``data_received`` (uvicorn's, less its first line), the callbacks
``on_headers_complete`` and ``on_message_complete``, ``handle_websocket_upgrade`` and
the keep-alive handler, and relies on ``timeout_keep_alive_task``, ``cycle`` and
``server_state.default_headers``. ``tests/test_http_limits.py`` checks it against
whatever is installed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.exceptions import SecurityError
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS

__all__ = [
    "ACCEPT_ERROR_LOG_INTERVAL",
    "HttpProtocol",
    "NoDelayHttpToolsProtocol",
    "limit_accept_error_log",
    "no_delay",
]

logger = logging.getLogger("presence.http")

#: Seconds between two log lines about failing accepts.
ACCEPT_ERROR_LOG_INTERVAL = 10.0

_WEBSOCKET_LIMITS = (
    f"A WebSocket handshake's lines are of {MAX_LINE_LENGTH} bytes at most, "
    f"its headers {MAX_NUM_HEADERS} at most"
)


def no_delay(transport: Any) -> None:
    """Sets TCP_NODELAY on a connection's socket.

    asyncio sets it only when the listening socket was made with ``IPPROTO_TCP``, and
    uvicorn's own bind for ``--workers`` (``Config.bind_socket``) makes it with proto 0.
    Without it a response written in two parts (h11 writes the head, then the body)
    waits for the client's delayed ACK: ~40 ms on every keep-alive request after the
    first.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :func:`no_delay` on every connection (a
    WebSocket upgraded from it keeps the socket, and so the option).

    httptools (llhttp, in C) rather than h11 (pure Python): on the REST heartbeat h11's
    parsing and header checks were a tenth of the server's time (bench/RESULTS.md,
    profile under REST heartbeats).
    """

    def connection_made(self, transport: Any) -> None:
        no_delay(transport)
        super().connection_made(transport)


class HttpProtocol(NoDelayHttpToolsProtocol):
    """:class:`NoDelayHttpToolsProtocol` with a size and a time bound on each request's
    line and headers (the module's docstring says how, and why so).

    uvicorn makes one per connection with its own arguments; the bounds come as keywords
    bound beforehand (``functools.partial``, which pickles for ``--workers``).
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        max_header_bytes: int,
        header_timeout: float,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        # Bytes of the current head so far; -1 from its end to the end of its message.
        self._head_bytes = 0
        # When the current head must be complete; None between requests, where
        # uvicorn's keep-alive timeout applies instead.
        self._head_deadline: float | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_deadline = self.loop.time() + self.header_timeout
        self.timeout_keep_alive_task = self.loop.call_later(
            self.header_timeout, self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        count = self._head_bytes
        if count >= 0:
            if self._head_deadline is None:
                self._head_started()
            count += len(data)
            self._head_bytes = count
            if count > self.max_header_bytes:
                self._past_cap(data, count - len(data))
                return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        # uvicorn's data_received without its first line, which cancels the keep-alive
        # timer: here that timer bounds the head that this data may begin.
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _head_started(self) -> None:
        deadline = self.loop.time() + self.header_timeout
        self._head_deadline = deadline
        timer = self.timeout_keep_alive_task
        # The keep-alive timer armed by the last response comes due before the head's
        # bound unless the header timeout is the shorter one.
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.header_timeout, self.timeout_keep_alive_handler
            )

    def _past_cap(self, data: bytes, counted: int) -> None:
        room = self.max_header_bytes - counted
        if room > 0:
            self._feed(data[:room])
            if self.transport.is_closing():
                return  # refused as malformed
            if self._head_bytes <= self.max_header_bytes:
                # The head ended within the cap. After an upgrade uvicorn drops the rest
                # of the chunk, as here; otherwise it is the head's body or the next
                # request, whose head is counted afresh.
                if self.parser is not None and not self.parser.should_upgrade():
                    self.data_received(data[room:])
                return
        self._refuse(
            431,
            "headers_too_large",
            f"The request line and headers are over {self.max_header_bytes} bytes.",
        )

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        self._head_bytes = 0
        self._head_deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # uvicorn cancels the timer only on a clean close; a reset must not leave this
        # object alive until the timer comes due.
        self._unset_keepalive_if_required()

    def handle_websocket_upgrade(self) -> None:
        # The socket is the WebSocket protocol's from now on: this timer must neither
        # close it nor keep this object alive.
        self._unset_keepalive_if_required()
        super().handle_websocket_upgrade()
        # websockets parses the head again, with limits of its own; uvicorn never sends
        # the refusal it makes of a head past them, and holds the connection forever.
        protocol = self.transport.get_protocol()
        if isinstance(protocol, WebSocketsSansIOProtocol):
            refused = protocol.conn.handshake_exc
            if isinstance(refused, SecurityError):
                self._refuse(431, "headers_too_large", f"{_WEBSOCKET_LIMITS}: {refused}.")
            elif refused is not None:
                self._refuse(400, "invalid_handshake", f"Not a WebSocket handshake: {refused}.")
        # The transport is the WebSocket protocol's now, and this object no longer read
        # from: dropping the parser (which holds this object's callbacks) breaks their
        # cycle, so this object goes with its last reference, not at a collection that
        # could come after a freeze (presence._gc).
        self.parser = None  # type: ignore[assignment]

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        if self.transport.is_closing() or self._head_bytes < 0:
            return  # closed, or the headers are complete and the request is the app's
        deadline = self._head_deadline
        if deadline is None:
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()  # idle for uvicorn's keep-alive timeout
            return
        left = deadline - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(
                left, self.timeout_keep_alive_handler
            )
        elif self._head_bytes == 0:
            self.transport.close()
        else:
            self._refuse(
                408,
                "header_timeout",
                f"The request line and headers did not arrive within {self.header_timeout:g} s.",
            )

    def _refuse(self, status: int, code: str, message: str) -> None:
        # A response still being written for an earlier (pipelined) request would be
        # garbled by one written now: that connection is closed without one.
        if self.cycle is None or self.cycle.response_complete:
            body = json.dumps({"error": {"code": code, "message": message}}).encode()
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content += [name, b": ", value, b"\r\n"]
            content += [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
                body,
            ]
            self.transport.write(b"".join(content))
        logger.debug("refused a request with %d: %s", status, message)
        self.transport.close()


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class _AcceptErrorLog:
    """The loop's exception handler: failing accepts sparingly, the rest passed on."""

    failed = "socket.accept() out of system resource"
    retry_failed = "Exception in callback BaseSelectorEventLoop._start_serving("

    def __init__(self, previous: ExceptionHandler | None) -> None:
        self.previous = previous
        self.logged_at: float | None = None
        self.unlogged = 0
        self.last_error: object = None
        self.flush: asyncio.TimerHandle | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = context.get("message", "")
        if message != self.failed:
            if (
                self.logged_at is not None
                and message.startswith(self.retry_failed)
                and isinstance(context.get("exception"), ValueError)
            ):
                # A retry of a failed accept, due after shutdown closed the listening
                # socket: one for each failure of the last second or more, each with a
                # traceback (60,000 of them, 90 MB, seen at a shutdown). Nothing is lost.
                return
            if self.previous is None:
                loop.default_exception_handler(context)
            else:
                self.previous(loop, context)
            return
        self.last_error = context.get("exception")
        now = loop.time()
        if self.logged_at is None or now - self.logged_at >= ACCEPT_ERROR_LOG_INTERVAL:
            self.logged_at = now
            logger.error(
                "cannot accept connections: %s (raise the process's open file limit, "
                "ulimit -n); while this lasts it is logged once every %g s",
                self.last_error,
                ACCEPT_ERROR_LOG_INTERVAL,
            )
            return
        self.unlogged += 1
        if self.flush is None:
            self.flush = loop.call_at(self.logged_at + ACCEPT_ERROR_LOG_INTERVAL, self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self.flush = None
        if self.unlogged:
            logger.error(
                "cannot accept connections: %s, %d more times in the last %g s",
                self.last_error,
                self.unlogged,
                ACCEPT_ERROR_LOG_INTERVAL,
            )
            self.logged_at = loop.time()
            self.unlogged = 0


def limit_accept_error_log() -> None:
    """Makes the running loop log failing accepts (out of descriptors) sparingly: one
    line for the first, then one every :data:`ACCEPT_ERROR_LOG_INTERVAL` seconds with
    their count, no tracebacks. Every other error reaches the handler there was."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    if not isinstance(previous, _AcceptErrorLog):
        loop.set_exception_handler(_AcceptErrorLog(previous))
