"""One socket carrying several sessions of its user (``session.attach`` and
``session.detach``, a browser's tabs sharing one socket), against a real uvicorn and a
real websockets client: each attach checked as a handshake is, each session's state its
own, and every abuse answered in band with the socket left open."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette import status
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from presence.limits import TokenBucket

from .utils import UNIT, make_settings, serve, token

BASE = "/api/v1/chat"


@pytest.fixture(params=["memory", "redis"])
async def server(request):
    changes: dict[str, object] = {"session_ttl": 60 * UNIT, "max_sessions_per_user": 3}
    if request.param == "redis":
        changes["redis_url"] = request.getfixturevalue("redis_url")
    async with serve(make_settings(**changes)) as running:
        yield running


def _client(server, user: str) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    return httpx.AsyncClient(
        base_url=server.http + BASE, headers={"authorization": f"Bearer {token(user)}"}
    )


@pytest.fixture
async def alice(server):
    async with _client(server, "alice") as client:
        yield client


@pytest.fixture
async def bob(server):
    async with _client(server, "bob") as client:
        yield client


async def _new_session(client) -> str:  # type: ignore[no-untyped-def]
    response = await client.post("/sessions")
    assert response.status_code == 201
    return str(response.json()["id"])


def _url(server, sid: str, user: str = "alice") -> str:  # type: ignore[no-untyped-def]
    return f"{server.ws}{BASE}/sessions/{sid}/ws?token={token(user)}"


async def _recv(websocket) -> dict:  # type: ignore[no-untyped-def, type-arg]
    return dict(json.loads(await asyncio.wait_for(websocket.recv(), timeout=50 * UNIT)))


async def _send(websocket, message: dict) -> None:  # type: ignore[no-untyped-def, type-arg]
    await websocket.send(json.dumps(message))


async def _session(client, sid: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    response = await client.get(f"/sessions/{sid}")
    assert response.status_code == 200
    return dict(response.json())


async def test_attach_carries_a_further_session_of_the_same_user(server, alice):
    """An attached session gets its own snapshot, is kept alive by the socket, and the
    server holds one socket for both."""
    own, other = await _new_session(alice), await _new_session(alice)
    async with connect(_url(server, own), ping_interval=None) as websocket:
        assert (await _recv(websocket))["session"]["id"] == own
        await _send(websocket, {"type": "session.attach", "session": other})
        snapshot = await _recv(websocket)
        assert snapshot["type"] == "snapshot"
        assert snapshot["session"]["id"] == other
        assert snapshot["session"]["transport"] == "websocket"
        assert "heartbeat_interval" in snapshot["session"]
        assert server.services.registry.sockets == 1
        assert len(server.services.registry) == 2
        assert (await _session(alice, other))["transport"] == "websocket"


async def test_visibility_is_each_sessions_own(server, alice):
    """A visibility message tagged with an attached session changes that session only."""
    own, other = await _new_session(alice), await _new_session(alice)
    async with connect(_url(server, own), ping_interval=None) as websocket:
        await _recv(websocket)
        await _send(websocket, {"type": "session.attach", "session": other})
        await _recv(websocket)
        await _send(websocket, {"type": "visibility", "state": "hidden", "session": other})
        snapshot = await _recv(websocket)
        assert snapshot["session"]["id"] == other
        assert snapshot["session"]["state"] == "away"
        assert (await _session(alice, own))["state"] == "active"
        assert (await _session(alice, other))["state"] == "away"


async def test_attach_refuses_another_users_session(server, alice, bob):
    """Wrong user: bob's session cannot ride alice's socket; the refusal names the
    session, the socket stays open and bob's session is untouched."""
    own, bobs = await _new_session(alice), await _new_session(bob)
    async with connect(_url(server, own), ping_interval=None) as websocket:
        await _recv(websocket)
        await _send(websocket, {"type": "session.attach", "session": bobs})
        error = await _recv(websocket)
        assert error == {
            "type": "error",
            "code": "session_not_found",
            "message": error["message"],
            "session": bobs,
        }
        assert len(server.services.registry) == 1
        assert (await _session(bob, bobs))["transport"] == "none"
        # Still open, still serving its own session.
        await _send(websocket, {"type": "visibility", "state": "hidden"})
        assert (await _recv(websocket))["session"]["id"] == own


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"type": "session.attach"}, "bad_message"),
        ({"type": "session.attach", "session": 42}, "bad_message"),
        ({"type": "session.attach", "session": ["x"]}, "bad_message"),
        ({"type": "session.attach", "session": "not-an-id"}, "session_not_found"),
        ({"type": "session.attach", "session": "A" * 22}, "session_not_found"),
        ({"type": "session.detach", "session": "A" * 22}, "session_not_found"),
        ({"type": "visibility", "state": "hidden", "session": "A" * 22}, "session_not_found"),
    ],
)
async def test_malformed_or_unknown_attach_is_answered_in_band(server, alice, message, code):
    """Malformed: a missing or non-string session, an id of no one's, a detach or a
    message about a session the socket does not carry: an error, the socket open."""
    own = await _new_session(alice)
    async with connect(_url(server, own), ping_interval=None) as websocket:
        await _recv(websocket)
        await _send(websocket, message)
        error = await _recv(websocket)
        assert error["type"] == "error"
        assert error["code"] == code
        await _send(websocket, {"type": "visibility", "state": "visible"})
        assert (await _recv(websocket))["type"] == "snapshot"


async def test_a_socket_carries_up_to_max_sessions_per_user(server, alice):
    """Too many: a socket carries every session its user may have (the cap is
    PRESENCE_MAX_SESSIONS_PER_USER, 3 here), all of them then held open (no fourth can
    be made), an attach of one it carries already takes no further place, and an
    attach of a session gone is refused."""
    own = await _new_session(alice)
    others = [await _new_session(alice) for _ in range(2)]
    async with connect(_url(server, own), ping_interval=None) as websocket:
        await _recv(websocket)
        for sid in [*others, others[0], own]:
            await _send(websocket, {"type": "session.attach", "session": sid})
            snapshot = await _recv(websocket)
            assert (snapshot["type"], snapshot["session"]["id"]) == ("snapshot", sid)
        assert len(server.services.registry) == 3
        assert (await alice.post("/sessions")).status_code == 429
        await alice.delete(f"/sessions/{others[1]}")
        assert (await _recv(websocket))["type"] == "ended"
        await _send(websocket, {"type": "session.attach", "session": others[1]})
        refused = await _recv(websocket)
        assert (refused["code"], refused["session"]) == ("session_not_found", others[1])


async def test_detach_lets_go_of_a_session_and_the_socket_stays(server, alice):
    """A detached session is no longer kept alive by the socket (disconnected); the
    socket's own session cannot be detached, only closed."""
    own, other = await _new_session(alice), await _new_session(alice)
    async with connect(_url(server, own), ping_interval=None) as websocket:
        await _recv(websocket)
        await _send(websocket, {"type": "session.attach", "session": other})
        await _recv(websocket)
        await _send(websocket, {"type": "session.detach", "session": other})
        await _send(websocket, {"type": "session.detach", "session": own})
        error = await _recv(websocket)
        assert error["type"] == "error" and error["code"] == "bad_message"
        assert len(server.services.registry) == 1
        assert (await _session(alice, other))["transport"] == "none"
        assert (await _session(alice, own))["transport"] == "websocket"


async def test_an_attached_session_ended_elsewhere_ends_only_itself(server, alice):
    """Deleting an attached session tells the socket which one ended; its own goes on,
    and when its own ends too while it carries none, the socket closes."""
    own, other = await _new_session(alice), await _new_session(alice)
    async with connect(_url(server, own), ping_interval=None) as websocket:
        await _recv(websocket)
        await _send(websocket, {"type": "session.attach", "session": other})
        await _recv(websocket)
        assert (await alice.delete(f"/sessions/{other}")).status_code == 204
        assert await _recv(websocket) == {"type": "ended", "reason": "deleted", "session": other}
        await _send(websocket, {"type": "visibility", "state": "hidden"})
        assert (await _recv(websocket))["session"]["id"] == own
        assert (await alice.delete(f"/sessions/{own}")).status_code == 204
        assert await _recv(websocket) == {"type": "ended", "reason": "deleted"}
        await asyncio.wait_for(websocket.wait_closed(), timeout=50 * UNIT)


async def test_the_socket_goes_on_for_attached_sessions_when_its_own_ends(server, alice):
    """Its own session deleted, the socket stays open for the sessions it carries."""
    own, other = await _new_session(alice), await _new_session(alice)
    async with connect(_url(server, own), ping_interval=None) as websocket:
        await _recv(websocket)
        await _send(websocket, {"type": "session.attach", "session": other})
        await _recv(websocket)
        await alice.delete(f"/sessions/{own}")
        assert await _recv(websocket) == {"type": "ended", "reason": "deleted"}
        await _send(websocket, {"type": "visibility", "state": "hidden", "session": other})
        assert (await _recv(websocket))["session"]["id"] == other
        assert (await _session(alice, other))["transport"] == "websocket"


async def test_closing_the_socket_disconnects_every_session_it_carried(server, alice):
    """The socket closes: each session it carried is disconnected (alive in its TTL)."""
    own, other = await _new_session(alice), await _new_session(alice)
    async with connect(_url(server, own), ping_interval=None) as websocket:
        await _recv(websocket)
        await _send(websocket, {"type": "session.attach", "session": other})
        await _recv(websocket)
    async with asyncio.timeout(50 * UNIT):
        while len(server.services.registry):  # noqa: ASYNC110 - polls the registry
            await asyncio.sleep(UNIT / 2)
    for sid in (own, other):
        session = await _session(alice, sid)
        assert (session["transport"], session["state"]) == ("none", "disconnected")


async def test_each_carried_session_brings_its_own_message_budget(server, alice):
    """Too fast, shared: a socket carrying three sessions takes three sessions' burst
    (what three sockets would), and one message more than that is closed with 1008."""
    burst = server.services.settings.ws_message_burst
    own = await _new_session(alice)
    others = [await _new_session(alice) for _ in range(2)]
    async with connect(_url(server, own), ping_interval=None) as websocket:
        await _recv(websocket)
        for sid in others:
            await _send(websocket, {"type": "session.attach", "session": sid})
            await _recv(websocket)
        # Two attaches spent, so the burst of three, less those, is allowed at once.
        for i in range(3 * burst - 2):
            sid = [own, *others][i % 3]
            await _send(websocket, {"type": "visibility", "state": "visible", "session": sid})
        for _ in range(3 * burst - 2):
            assert (await _recv(websocket))["type"] == "snapshot"
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(3 * burst):
                await _send(websocket, {"type": "visibility", "state": "visible"})
            while True:
                await _recv(websocket)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == status.WS_1008_POLICY_VIOLATION


def test_a_token_bucket_that_grows_gets_the_newcomers_burst_at_once():
    """resize(): growing adds the extra burst at once; shrinking caps what is held."""
    bucket = TokenBucket(10.0, 4, now=0.0)
    assert [bucket.allow(0.0) for _ in range(5)] == [True] * 4 + [False]
    bucket.resize(20.0, 8)
    assert [bucket.allow(0.0) for _ in range(5)] == [True] * 4 + [False]
    bucket.resize(10.0, 4)
    assert bucket.allow(10.0) and bucket.wait(10.0) == 0.0
    assert [bucket.allow(10.0) for _ in range(4)] == [True] * 3 + [False]
