"""presence._fanout: a room's diff framed once and the same bytes written to every
watcher's transport, against a real uvicorn running the app with the production options
and real clients.

What must hold: every watcher gets the diff it would have got the ordinary way; the
frame is built once for all of them; a socket whose client reads nothing is skipped at
its write gate, never written past it; a closing socket is not written to; and a socket
that the shared frame does not fit is sent the text the ordinary way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from presence import _fanout
from presence.wsproto import PresenceWebSocketProtocol

from .test_attacks import RawSocket
from .test_wsproto import _protocols
from .utils import UNIT, RunningServer, make_settings, serve, token

BASE = "/api/v1/chat"


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with serve(make_settings(open_rooms=True)) as running:
        yield running


async def _session(server: RunningServer, user: str) -> str:
    async with httpx.AsyncClient(
        base_url=server.http + BASE, headers={"authorization": f"Bearer {token(user)}"}
    ) as client:
        response = await client.post("/sessions")
        assert response.status_code == 201
        return str(response.json()["id"])


def _url(server: RunningServer, sid: str, user: str) -> str:
    return f"{server.ws}{BASE}/sessions/{sid}/ws?token={token(user)}"


async def _next(websocket: Any, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(50 * UNIT):
        while True:
            message = json.loads(await websocket.recv())
            if message["type"] == kind:
                return message  # type: ignore[no-any-return]


async def test_every_watcher_gets_the_diff_from_one_frame_built_once(server, monkeypatch):
    """Three watchers of a room each get the join's diff whole, and the bytes written
    to their transports (and the joiner's, who watches by joining) are one object,
    built once."""
    written: list[tuple[PresenceWebSocketProtocol, bytes]] = []
    real = _fanout.write

    def spy(protocol: PresenceWebSocketProtocol, frame: bytes) -> bool | None:
        written.append((protocol, frame))
        return real(protocol, frame)

    monkeypatch.setattr(_fanout, "write", spy)
    watchers = []
    for i in range(3):
        sid = await _session(server, f"w{i}")
        websocket = await connect(_url(server, sid, f"w{i}"))
        watchers.append(websocket)
        await websocket.send(json.dumps({"type": "presence.watch", "room": "lobby"}))
        assert (await _next(websocket, "presence.sync"))["members"] == []
    sid = await _session(server, "joiner")
    async with connect(_url(server, sid, "joiner")) as joiner:
        await joiner.send(json.dumps({"type": "presence.join", "room": "lobby", "meta": {}}))
        diffs = [await _next(w, "presence.diff") for w in watchers]
    for w in watchers:
        await w.close()
    assert all([m["user"] for m in d["joins"]] == ["joiner"] for d in diffs)
    assert len({json.dumps(d) for d in diffs}) == 1
    frames = {id(frame) for _, frame in written}
    assert len(frames) == 1 and len({id(p) for p, _ in written}) == 4


async def test_a_shared_frame_is_the_text_frame_websockets_would_send():
    """The frame is an unmasked, final text frame of the text's UTF-8 bytes."""
    text = _fanout.Shared('{"type":"presence.diff","room":"é"}')
    frame = text.frame
    assert frame is text.frame  # built once
    assert frame == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    assert frame[0] == 0x81 and frame[1] == len(text.encode())


async def test_a_socket_that_reads_nothing_is_skipped_at_its_write_gate(server):
    """Written to while its transport takes it, then skipped (False) once it is past
    its high-water mark: never written further, and left open (the ping timeout and the
    unsent-bytes bound are the protocol's to apply)."""
    sid = await _session(server, "alice")
    raw = await RawSocket.open(server, sid)
    try:
        (protocol,) = _protocols(server)
        text = _fanout.Shared(json.dumps({"type": "presence.diff", "pad": "x" * 60_000}))
        results = []
        for _ in range(200):
            results.append(_fanout.write(protocol, text.frame))
            if results[-1] is False:
                break
            await asyncio.sleep(0)
        assert results[0] is True and results[-1] is False
        unsent = protocol.transport.get_write_buffer_size()
        assert unsent <= protocol.limits.max_unsent_bytes
        assert _fanout.write(protocol, text.frame) is False
        assert not protocol.transport.is_closing()
    finally:
        raw.close()


async def test_a_closing_socket_is_not_written_to(server):
    """Once the close frame is sent, a shared frame is not written (False)."""
    sid = await _session(server, "alice")
    async with connect(_url(server, sid, "alice")) as websocket:
        await _next(websocket, "snapshot")
        (protocol,) = _protocols(server)
        text = _fanout.Shared("{}")
        assert _fanout.write(protocol, text.frame) is True
        await websocket.close()
        async with asyncio.timeout(50 * UNIT):
            while not (protocol.close_sent or protocol.disconnected):  # noqa: ASYNC110 - no event
                await asyncio.sleep(UNIT / 10)
        assert _fanout.write(protocol, text.frame) is False


async def test_a_socket_with_its_own_frames_queued_is_sent_the_ordinary_way(server):
    """A connection whose websockets state has frames not yet written (or an extension
    negotiated) is not given the shared bytes: None, the text goes the ordinary way."""
    sid = await _session(server, "alice")
    async with connect(_url(server, sid, "alice")) as websocket:
        await _next(websocket, "snapshot")
        (protocol,) = _protocols(server)
        protocol.conn.send_ping(b"queued")
        try:
            assert _fanout.write(protocol, _fanout.Shared("{}").frame) is None
        finally:
            protocol.transport.write(b"".join(protocol.conn.data_to_send()))
