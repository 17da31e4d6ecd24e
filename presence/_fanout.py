"""One frame for every watcher: a room's diff is framed once per process and the same
bytes are written to each watcher's transport.

A diff is one text for all of a process's watchers of a room, yet sent the ordinary way
each socket frames it again: Starlette's ``send``, an ASGI message, uvicorn's protocol,
websockets' framing, then ``transport.write``. The fan-out benchmark measured about
51 us of server CPU a frame that way (10,000 watchers over 3 processes on one CPU, 15
diffs: 7.6 s), of which ``transport.write`` itself was a quarter. A server's frames are
not masked, so without a per-message extension (the service turns permessage-deflate
off, ``presence.cli``) a text's frame is the same bytes for every socket: built once,
they are written as uvicorn's ``send`` would write them, under the same conditions.

What stays as it was:

- **The write gate.** A socket whose transport is over its high-water mark (its client
  reads nothing) is skipped, as :meth:`presence.asgi.sockets.SessionSocket.offer`
  skips it, and the room service syncs it once it reads again.
- **The unsent-bytes bound.** The bytes go through the protocol's transport, which is
  :mod:`presence.wsproto`'s ``_Outbox``: a write that leaves more than
  ``ws_max_unsent_bytes`` unsent aborts the connection, and a paused transport still
  has the ping timeout to drain.
- **Anything else goes the ordinary way.** A socket with an extension negotiated,
  frames of its own queued in websockets and not yet written, or another server's
  protocol is sent the text as before (:func:`write` answers None).

Measured on this 2-core machine (uvicorn 0.54, websockets 17.4), one text of 7.8 KB sent
to 1,000 open sockets of a real uvicorn with :mod:`presence.wsproto`, clients in another
process reading: Starlette's ``send_text`` per socket took 16.0-20.6 us of the server's
CPU a frame, the shared frame 12.7-14.6 us, of which about 9 us is the kernel's
``send`` (``os.times``: the floor, one system call a socket). In ``bench/fanout.py`` at
2,000 watchers and 300 joins, the servers' CPU per frame delivered (everything they
did in the burst, over the frames) fell from 36 us to 24-25 us; ``bench/analysis.md``
("fan-out") has the full-size figures.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from websockets.frames import Frame, Opcode
from websockets.protocol import State

if TYPE_CHECKING:
    from .wsproto import PresenceWebSocketProtocol

__all__ = ["Shared", "write"]


class Shared(str):
    """A text sent to many sockets (a room's diff): a ``str`` wherever it goes, whose
    WebSocket frame is built on first use and then shared."""

    @functools.cached_property
    def frame(self) -> bytes:
        """The unmasked text frame, with no extension, as websockets serializes it."""
        return Frame(Opcode.TEXT, self.encode()).serialize(mask=False)


def write(protocol: PresenceWebSocketProtocol, frame: bytes) -> bool | None:
    """Writes ``frame`` (from :attr:`Shared.frame`) to the socket if it takes it now,
    as uvicorn's ``send`` would write it.

    Returns:
        True when written; False when the socket does not take it now (its gate shut,
        or closing); None when this socket must be sent the text the ordinary way.
    """
    conn = protocol.conn
    if conn.extensions or conn.writes or conn.expect_continuation_frame:
        return None
    if (
        not protocol.handshake_complete
        or protocol.close_sent
        or protocol.disconnected
        or protocol.initial_response is not None
        or conn.state is not State.OPEN
        or not protocol.writable.is_set()
    ):
        return False
    transport = protocol.transport
    if transport.is_closing():
        return False
    transport.write(frame)
    return True
