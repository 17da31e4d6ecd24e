"""uvicorn's ``websockets-sansio`` WebSocket protocol, holding less for each open socket.

Presence holds many idle sockets, and each keeps its protocol object for its whole life.
:class:`PresenceWebSocketProtocol` is uvicorn's
:class:`~uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol`
with the same behaviour (keepalive pings and their timeout, close codes, denial
responses, the message size limit, 1012 on shutdown) and four savings. Measured on
uvicorn 0.54.0 and websockets 17.4 with 1,000 to 4,000 idle sockets, they take about
9.5 KB a socket off what tracemalloc counts, and 10 KiB off the RSS (26 KiB to 16 KiB
a socket, for the service and the bare-Starlette floor alike):

- **No handshake kept.** uvicorn keeps the parsed handshake request and the 101
  response (websockets ``Request``/``Response`` with their ``Headers``) on the protocol
  for the connection's life, although it reads the request only while building the
  scope and the response only until it is sent; and websockets' parser keeps the
  request in its generator's frame. Both are let go once used, and the request is
  emptied (headers, and the path with its query string). The app has what it needs in
  the scope (``scope["headers"]`` and the rest), which is left as uvicorn builds it.
- **A lighter receive queue.** ``asyncio.Queue`` makes three deques and an
  ``asyncio.Event`` (with a fourth) up front, about 3 KiB; uvicorn uses only
  ``put_nowait``, ``get`` and ``empty``. :class:`Inbox` does those, with a deque only
  while messages wait.
- **A lighter write gate.** ``writable`` is an ``asyncio.Event`` (one more deque);
  uvicorn uses ``set``, ``clear`` and ``wait``, which :class:`Gate` does with a list only
  while a writer waits.
- **Slots.** uvicorn sets 37 attributes on each connection, more than an instance dict
  shares its keys for (30), so each connection had a dict of its own, about 1.6 KB;
  here they are slots, 8 bytes each.

It relies on uvicorn's internals: the attribute names of its class (listed in
``__slots__``), what it does with ``queue``, ``writable``, ``request`` and ``response``,
and ``handshake_complete`` meaning that the response is sent or no longer wanted; and
on websockets not reading a handshake request again once it has handed it over. Read
against uvicorn 0.54.0 and websockets 17.4; ``tests/test_wsproto.py`` checks all of it
against whatever is installed. An attribute that a later uvicorn adds still works; it
just lands in an instance dict again, which the tests report.

Connections are never made with this class directly: uvicorn's HTTP protocol upgrades
into it on the same transport (``handle_websocket_upgrade``), so the socket keeps the
``TCP_NODELAY`` that ``presence.cli.no_delay`` set when the connection was made.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
    from uvicorn.config import Config
    from uvicorn.server import ServerState
    from websockets.http11 import Request

__all__ = ["Gate", "Inbox", "PresenceWebSocketProtocol"]


class Inbox:
    """The part of ``asyncio.Queue`` (unbounded) that uvicorn uses for the events it hands
    to the app, with the same semantics: FIFO, getters woken in order, a cancelled getter
    passes its wake-up on. Nothing is allocated while it is empty but for the getters'
    list, and the deque of waiting items goes when the last is taken."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: collections.deque[ASGIReceiveEvent] | None = None
        self._getters: list[asyncio.Future[None]] = []

    def qsize(self) -> int:
        return 0 if self._items is None else len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        self._wakeup_next()

    def get_nowait(self) -> ASGIReceiveEvent:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get(self) -> ASGIReceiveEvent:
        # asyncio.Queue.get, line for line.
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # In case it is not done yet.
                try:
                    self._getters.remove(getter)
                except ValueError:
                    pass  # Already woken (and taken off the list) by put_nowait.
                if self._items and not getter.cancelled():
                    # Woken, then cancelled before it ran: the item is someone else's.
                    self._wakeup_next()
                raise
        return self.get_nowait()

    def _wakeup_next(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break


class Gate:
    """``asyncio.Event``'s ``set``, ``clear``, ``is_set`` and ``wait``, initially set: the
    transport's flow control for uvicorn's ``send``. The waiters' list exists only while
    someone waits (the write buffer is over its high-water mark)."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = True
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for waiter in self._waiters or ():
                if not waiter.done():
                    waiter.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            waiters.remove(waiter)
            if not waiters and self._waiters is waiters:
                self._waiters = None


class PresenceWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol without the per-connection weight that an
    idle socket never uses (see the module's docstring)."""

    # Every attribute uvicorn 0.54's __init__, handle_connect and send set on a connection.
    # Correctness does not depend on this list: a name missing from it is kept in an
    # instance dict, as before. None of them may be a method or class attribute of the
    # base classes (tests/test_wsproto.py checks).
    __slots__ = (
        "app",
        "app_state",
        "asgi_version",
        "client",
        "close_sent",
        "close_timeout",
        "close_timer",
        "config",
        "conn",
        "connections",
        "curr_msg_data_type",
        "default_headers",
        "disconnected",
        "frames",
        "handshake_complete",
        "handshake_initiated",
        "initial_response",
        "last_ping_rtt",
        "logger",
        "loop",
        "pending_ping_payload",
        "ping_interval",
        "ping_sent_at",
        "ping_timeout",
        "ping_timer",
        "pong_timer",
        "queue",
        "read_paused",
        "request",
        "response",
        "root_path",
        "scheme",
        "scope",
        "server",
        "tasks",
        "transport",
        "writable",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn uses put_nowait, get and empty of the queue, and set, clear and wait of
        # writable (set at first, as uvicorn leaves it).
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Gate()  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # uvicorn reads the request only to build the scope (which has copies of what it
        # needs), just done. websockets' parser still holds the request in its generator
        # frame for the connection's life, never to read it again: so it is emptied (the
        # headers, and the path with its query string) as well as let go. The response
        # is needed until the app accepts (uvicorn adds the app's headers and sends it),
        # unless websockets refused the handshake here already.
        event.headers.clear()
        event.path = ""
        self.request = None  # type: ignore[assignment]
        if self.handshake_complete:
            self.response = None  # type: ignore[assignment]

    async def send(self, message: ASGISendEvent) -> None:
        try:
            await super().send(message)
        finally:
            if (
                message["type"] == "websocket.http.response.body"
                and not message.get("more_body", False)
                and self.close_sent
            ):
                # The app's denial response is on the wire: the handshake is over.
                # uvicorn 0.54 leaves handshake_complete unset here, so that run_asgi
                # logs "ASGI callable returned without completing handshake" at ERROR
                # for every refused socket (one line per bad token: noise, and a way
                # for anyone to write error lines); the wsproto implementation sets it,
                # as uvicorn's pull request #3138 proposes for this one.
                self.handshake_complete = True
            # Once the handshake is complete (accepted, refused, or the peer gone),
            # uvicorn never reads the handshake response again.
            if self.handshake_complete and self.response is not None:
                self.response = None  # type: ignore[assignment]
