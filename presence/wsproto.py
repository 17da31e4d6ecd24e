"""uvicorn's ``websockets-sansio`` WebSocket protocol, holding less for each open socket
and bounding what a client can make one hold.

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

Its keepalive runs on one schedule for the whole process (:mod:`presence._pings`), not on
two timer handles a ping: a socket is filed under the tick (a tenth of a second, or
finer for short intervals) of its next ping, then of its pong's deadline, and one loop
timer a tick serves every socket due. The ping interval (less the last round trip, as
uvicorn has it) and the timeout keep their meaning, each at most one tick late.

It also bounds what a client can make a socket hold or cost, which uvicorn and websockets
leave open (``tests/test_ws_frames.py`` mounts each attack against a server process):

- **Control and continuation frames count against a rate.** The app's bucket
  (``presence.sockets``) sees messages, one per message however many frames it came in;
  websockets answers pings by itself and uvicorn keeps continuation frames, so neither
  reached any limit. A client flooding pings and reading no pongs grew the server's
  write buffer without bound (its RSS by 238 MiB in 10 s). Here pings, pongs and continuation frames
  from the client each take a token from a bucket of the socket's own, with the app's
  rate and burst (``PRESENCE_WS_MESSAGES_PER_SECOND``, bursts of ``ws_message_burst``);
  the frame that finds it empty closes the socket with 1008, unanswered. A message's
  first (text or binary) frame is not counted here, being the app's to count once for
  the message: a one-frame message takes one token (the app's), a message in n frames
  one from the app's bucket and n - 1 from this one. The buckets stay apart so that a
  message flood is still the app's to answer in-band (an ``error``, then 1008), which it
  can do only while it counts messages itself; so a client may send up to the rate in
  messages and the rate again in control and continuation frames, each kind bounded.
- **Fragments.** websockets bounds a message's bytes across its frames
  (``ws_max_message_bytes``, 1009 past it, unchanged), not their number: empty
  continuation frames grew uvicorn's list of fragments by 8 B each (two million, 20 MiB),
  and joining them takes a table of 80 B a fragment (the hardening issue saw 420 MB at
  the peak). A message may come in at most :data:`MAX_FRAGMENTS` frames; the frame past
  that closes the socket with 1009 ("too many fragments") before it is kept, and nothing
  is joined. 1009, not 1008, as websockets' own asyncio and threading servers close for
  too many fragments (at 4,096), and as RFC 6455 words it ("a message that is too big
  for it to process"): 1008 stays the rate's, so a client can tell "too fast" from "too
  big". Under the default rate the burst (40) cuts such a message first, with 1008; the
  count still bounds it under a rate raised for other reasons.
- **Reads parsed in pieces.** websockets parses all it is given before anything can look
  at a frame, and asyncio reads up to 256 KiB at once: some 43,000 of the smallest
  frames (6 bytes), about 100 ms of the event loop for every other socket and request.
  Each read is given to it :data:`_PIECE_BYTES` at a time (at most ~700 frames, 1-2 ms),
  the limits are checked after each piece, and the rest of a read is dropped once the
  socket is closed. The pongs websockets queued for the pings of the piece that broke
  the rate are dropped too, but for those of the pings before it. Two million empty
  continuation frames kept another client's ``/healthz`` waiting up to 0.3-0.6 s; cut
  off in their first piece now, it answers within 10 ms.
- **Unsent bytes.** uvicorn writes pongs (and close frames) with no flow control, and an
  asyncio transport closed with bytes unsent waits for them to drain before it closes:
  forever, for a peer that does not read, and until then the app sees no disconnect and
  the refresher keeps the session alive. The protocol writes through :class:`_Outbox`: a
  write that leaves more than ``ws_max_unsent_bytes`` in the transport's buffer aborts
  the connection (a peer that does not read cannot be sent a close frame either);
  writing paused (the buffer over asyncio's high-water mark, 64 KiB) for the ping
  timeout aborts it, which also ends an app ``send`` waiting on flow control; and a
  transport closed with bytes unsent is aborted if they are not taken within the ping
  timeout. The app's flow control keeps its own messages near the high-water mark, so
  ``ws_max_unsent_bytes`` is reached by pongs (under a raised rate) and the ping timeout
  by a peer that stops reading its messages. Either way the app sees a disconnect
  (``connection_lost``) and cleans up as for any other.

Per socket this costs a token bucket (about 100 B), the :class:`_Outbox` (about 50 B)
and three slots: an idle socket's RSS was the same within the noise (17.3-17.4 KiB
against 17.3-17.5 KiB, 1,800 sockets).

It relies on uvicorn's internals: the attribute names of its class (listed in
``__slots__``), what it does with ``queue``, ``writable``, ``request``, ``response`` and
``frames``, its handlers for each kind of event (``handle_events`` is replaced, with the
same dispatch), that it writes and closes only through ``transport``, and
``handshake_complete`` meaning that the response is sent or no longer wanted; on
websockets queueing nothing but pongs (and a close frame for a close it reads) while it
parses; and on websockets not reading a handshake request again once it has handed it
over. Read against uvicorn 0.54.0 and websockets 17.4; ``tests/test_wsproto.py`` checks all of it
against whatever is installed. An attribute that a later uvicorn adds still works; it
just lands in an instance dict again, which the tests report.

Connections are never made with this class directly: uvicorn's HTTP protocol upgrades
into it on the same transport (``handle_websocket_upgrade``), so the socket keeps the
``TCP_NODELAY`` that ``presence.cli.no_delay`` set when the connection was made.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette import status
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

from ._pings import resolution_for, schedule_for
from .limits import TokenBucket
from .settings import Settings

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
    from uvicorn.config import Config
    from uvicorn.server import ServerState
    from websockets.protocol import Event

#: The scope extension under which the socket's write gate is found (a :class:`Gate`:
#: set while the transport takes writes at once).
WRITABLE_EXTENSION = "presence.writable"
#: The scope extension under which the socket's protocol is found, for a fan-out that
#: writes one frame built once to many sockets (:mod:`presence._fanout`).
FRAMES_EXTENSION = "presence.frames"

__all__ = [
    "FRAMES_EXTENSION",
    "MAX_FRAGMENTS",
    "WRITABLE_EXTENSION",
    "FrameLimits",
    "Gate",
    "Inbox",
    "PresenceWebSocketProtocol",
]

logger = logging.getLogger("presence.wsproto")

#: The most frames one message may come in: the largest message (64 KiB) in frames of
#: 512 bytes, far more than a sender needs (Presence's client sends each message, under
#: 100 bytes, in one frame); websockets' own limit, 4,096 for its default 1 MiB, is
#: frames of 256 bytes. Each fragment is kept until the message is whole (a list slot
#: and a bytes object, ~40 B) and costs ~2 us of parsing: 128 add ~5 KB and a fraction
#: of a millisecond to what the message's byte limit allows.
MAX_FRAGMENTS = 128

#: How much of a read websockets is given at once: ~700 of the smallest (6-byte) frames,
#: 1-2 ms of parsing, between two looks at the limits (see the module's docstring).
_PIECE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """What a socket's client may send and leave unread, beyond the message size
    (uvicorn's ``ws_max_size``) and the ping timeout (``ws_ping_timeout``), which uvicorn
    takes itself.

    Attributes:
        frames_per_second: control and continuation frames a second, on average.
        frame_burst: how many of them at once.
        max_unsent_bytes: the most a socket's transport may hold unsent.
    """

    frames_per_second: float
    frame_burst: int
    max_unsent_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> FrameLimits:
        """The limits for ``settings``: the app's message rate and burst, and
        ``ws_max_unsent_bytes``."""
        return cls(
            settings.ws_messages_per_second,
            settings.ws_message_burst,
            settings.ws_max_unsent_bytes,
        )


_DEFAULT_LIMITS = FrameLimits.from_settings(Settings())


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
    idle socket never uses, and with limits on what a client may send and leave unread
    (see the module's docstring).

    uvicorn makes it with ``config``, ``server_state`` and ``app_state``; ``limits`` is
    bound beforehand (``functools.partial``, as ``presence.cli.uvicorn_options`` does), and
    without it the settings' defaults apply.
    """

    # Every attribute uvicorn 0.54's __init__, handle_connect and send set on a connection,
    # and this class's own five. Correctness does not depend on this list: a name missing
    # from it is kept in an instance dict, as before. None of them may be a method or class
    # attribute of the base classes (tests/test_wsproto.py checks).
    __slots__ = (
        "app",
        "app_state",
        "asgi_version",
        "bucket",
        "client",
        "close_sent",
        "close_timeout",
        "close_timer",
        "config",
        "conn",
        "connections",
        "curr_msg_data_type",
        "deadline",
        "default_headers",
        "disconnected",
        "frames",
        "handshake_complete",
        "handshake_initiated",
        "initial_response",
        "keepalive_tick",
        "last_ping_rtt",
        "limits",
        "logger",
        "loop",
        "pending_ping_payload",
        "ping_interval",
        "ping_sent_at",
        "ping_timeout",
        "ping_timer",
        "pings",
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
        *,
        limits: FrameLimits = _DEFAULT_LIMITS,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn uses put_nowait, get and empty of the queue, and set, clear and wait of
        # writable (set at first, as uvicorn leaves it).
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Gate()  # type: ignore[assignment]
        self.limits = limits
        self.bucket = TokenBucket(limits.frames_per_second, limits.frame_burst, time.monotonic())
        # The abort timer of a transport that is not taking what it is given.
        self.deadline: asyncio.TimerHandle | None = None
        # The keepalive: the process's schedule, and the tick this socket is filed under
        # (None: not filed). uvicorn's ping_timer and pong_timer stay None.
        self.pings = schedule_for(self.loop, resolution_for(self.ping_interval, self.ping_timeout))
        self.keepalive_tick: int | None = None

    # -- The keepalive, on the process's schedule (presence._pings) -------------------
    # uvicorn's, line for line, but for its two TimerHandles a ping: the socket is filed
    # under the tick of its next ping, then of its pong's deadline, and called back
    # (keepalive_due) when that tick comes.

    def schedule_ping(self) -> None:
        assert self.ping_interval is not None
        delay = max(0.0, self.ping_interval - self.last_ping_rtt)
        self.pings.discard(self)
        self.pings.add(self, self.loop.time() + delay)

    def keepalive_due(self) -> None:
        """The tick this socket was filed under has come: its pong's deadline if a ping
        is unanswered (and there is a ping timeout), else its next ping."""
        if self.pending_ping_payload is not None and self.ping_timeout is not None:
            self.keepalive_timeout()
        else:
            self.send_keepalive_ping()

    def send_keepalive_ping(self) -> None:
        if self.close_sent or self.transport.is_closing():
            return
        # A random 4-byte payload identifies the ping; handle_pong ignores any other.
        self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
        self.ping_sent_at = self.loop.time()
        self.conn.send_ping(self.pending_ping_payload)
        self.transport.write(b"".join(self.conn.data_to_send()))
        if self.ping_timeout is not None:
            self.pings.add(self, self.ping_sent_at + self.ping_timeout)
        else:
            self.schedule_ping()

    def handle_pong(self, event: Frame) -> None:
        # Unsolicited pongs, and stale ones whose payload is not the ping's in flight.
        if self.pending_ping_payload is None or bytes(event.data) != self.pending_ping_payload:
            return
        self.last_ping_rtt = self.loop.time() - self.ping_sent_at
        self.pending_ping_payload = None
        # Answered in time: the deadline goes and the next ping is filed (without a
        # ping timeout the next ping was filed with this one).
        if self.ping_timeout is not None:
            self.schedule_ping()

    def stop_keepalive(self) -> None:
        self.pings.discard(self)
        super().stop_keepalive()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = _Outbox(self.transport, self)  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        super().connection_lost(exc)
        # The two reference cycles a connection makes are broken here, so that its
        # objects (a hundred or so: protocol, parser, transport, queues, buffers) go
        # when their last reference does, not at the next full collection: the
        # protocol and its outbox point at each other, and the scope's extensions
        # point back at the protocol. The app may still hold the protocol (the fan-out
        # checks ``disconnected`` first) and the outbox (its writes are then no-ops).
        scope = getattr(self, "scope", None)
        if scope is not None:
            extensions = scope.get("extensions")
            if extensions is not None:
                extensions.pop(FRAMES_EXTENSION, None)
        if isinstance(self.transport, _Outbox):
            self.transport.release()

    def keepalive_timeout(self) -> None:
        closing = self.close_sent or self.transport.is_closing()
        super().keepalive_timeout()
        if not closing:
            # uvicorn sends the peer 1011 but tells the app nothing until the connection
            # is lost, and then says 1005, as for any close: the app could not tell a
            # client that went silent (presence's leave reason ``timeout``) from one
            # that closed. So the app hears the close code the peer was sent, as it does
            # for a limit's close (_close_over_limit).
            self.queue.put_nowait(
                {
                    "type": "websocket.disconnect",
                    "code": status.WS_1011_INTERNAL_ERROR,
                    "reason": "keepalive ping timeout",
                }
            )

    def pause_writing(self) -> None:
        super().pause_writing()
        self.abort_unless_drained()

    def resume_writing(self) -> None:
        super().resume_writing()
        # A closing transport keeps its deadline: it must drain whole, not below a mark.
        if self.deadline is not None and not self.transport.is_closing():
            self.deadline.cancel()
            self.deadline = None

    def abort_unless_drained(self) -> None:
        """Aborts the connection if writing is still paused, or the transport closing with
        bytes unsent, one ping timeout from now."""
        if self.deadline is None and not self.disconnected:
            timeout = self.ping_timeout if self.ping_timeout is not None else self.close_timeout
            self.deadline = self.loop.call_later(timeout, self._drain_overdue)

    def _drain_overdue(self) -> None:
        self.deadline = None
        if not self.disconnected and (self.transport.is_closing() or not self.writable.is_set()):
            self.abort(f"{self.transport.get_write_buffer_size()} bytes not taken in time")

    def abort(self, why: str) -> None:
        """Drops the connection at once, unsent bytes and all; the app sees a disconnect."""
        if not self.disconnected:
            logger.info("aborted a WebSocket whose client does not read: %s", why)
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        # uvicorn's, but handing websockets the read a piece at a time (see the module's
        # docstring), and no more of it once the socket is closing.
        conn = self.conn
        for start in range(0, len(data), _PIECE_BYTES):
            conn.receive_data(data[start : start + _PIECE_BYTES])
            if conn.parser_exc is not None:
                self.handle_parser_exception()
                return
            self.handle_events()
            if self.transport.is_closing():
                return

    def handle_events(self) -> None:
        # uvicorn's dispatch, up to the first frame over a limit.
        events = self.conn.events_received()
        if not events:
            return
        over = self._over_limits(events)
        if over is not None:
            cut = over[0]
            # websockets queued a pong for each ping of the piece as it parsed it; only
            # those before the cut are owed.
            self.conn.data_to_send()
            del events[cut:]
            if self.conn.state is not State.CONNECTING:  # No pong before the handshake.
                for event in events:
                    if isinstance(event, Frame) and event.opcode is Opcode.PING:
                        self.conn.send_pong(event.data)
        for event in events:
            if isinstance(event, Request):
                self.handle_connect(event)
            elif isinstance(event, Frame):
                opcode = event.opcode
                if opcode is Opcode.CONT:
                    self.handle_cont(event)
                elif opcode is Opcode.TEXT:
                    self.handle_text(event)
                elif opcode is Opcode.BINARY:
                    self.handle_bytes(event)
                elif opcode is Opcode.PING:
                    self.handle_ping()
                elif opcode is Opcode.PONG:
                    self.handle_pong(event)
                elif opcode is Opcode.CLOSE:
                    self.handle_close(event)
        if over is not None:
            self._close_over_limit(over[1], over[2])

    def _over_limits(self, events: list[Event]) -> tuple[int, int, str] | None:
        """Where the events break a limit (the index of the first frame that does, the
        close code and reason), or None."""
        bucket = self.bucket
        fragments = len(self.frames)  # Of the message being received.
        for index, event in enumerate(events):
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                fragments = 1  # The app counts the message.
                continue
            if opcode is Opcode.CLOSE:
                continue
            if opcode is Opcode.CONT:
                if fragments >= MAX_FRAGMENTS:
                    return index, status.WS_1009_MESSAGE_TOO_BIG, "too many fragments"
                fragments = 0 if event.fin else fragments + 1
            if not bucket.allow(time.monotonic()):
                return index, status.WS_1008_POLICY_VIOLATION, "too many frames"
        return None

    def _close_over_limit(self, code: int, reason: str) -> None:
        # As uvicorn closes for websockets' own limits (handle_parser_exception), with this
        # limit's code, and letting go of the fragments kept so far.
        self.frames = []
        self.conn.fail(code, reason)
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()

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
        scope = getattr(self, "scope", None)
        if scope is not None:
            # The write gate, for an app that fans a message out to many sockets: a
            # socket whose gate is shut (its client reads nothing) is skipped rather
            # than waited on (see presence.asgi.sockets.SessionSocket.offer).
            extensions = scope.setdefault("extensions", {})
            extensions[WRITABLE_EXTENSION] = self.writable
            extensions[FRAMES_EXTENSION] = self

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


class _Outbox:
    """A connection's transport as its protocol writes to and closes it: a write that
    leaves more than the limit unsent aborts the connection, and a close that leaves
    bytes unsent gives them the ping timeout to drain (see the module's docstring)."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: PresenceWebSocketProtocol):
        self._transport = transport
        self._protocol: PresenceWebSocketProtocol | None = protocol

    def release(self) -> None:
        """Lets go of the protocol once the connection is lost (see
        ``PresenceWebSocketProtocol.connection_lost``): a lost transport takes no more
        writes, so there is nothing left to bound."""
        self._protocol = None

    def write(self, data: bytes) -> None:
        transport = self._transport
        transport.write(data)
        protocol = self._protocol
        if protocol is not None:
            unsent = transport.get_write_buffer_size()
            if unsent > protocol.limits.max_unsent_bytes:
                protocol.abort(f"{unsent} bytes unsent")

    def close(self) -> None:
        transport = self._transport
        transport.close()
        protocol = self._protocol
        if protocol is not None and transport.get_write_buffer_size():
            protocol.abort_unless_drained()

    def abort(self) -> None:
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        # Anything else uvicorn may ask of a transport.
        return getattr(self._transport, name)
