"""Development-mode identities, cookies and the origin checks that go with them."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from presence.settings import Settings

from .utils import make_settings, serve, token

BASE = "/api/v1/chat"


@pytest.fixture
async def dev_server():
    """A server without PRESENCE_JWT_SECRET: development mode."""
    async with serve(Settings(port=0)) as running:
        yield running


def _origin(server) -> str:
    return f"http://127.0.0.1:{server.port}"


async def test_dev_mode_hands_out_an_anonymous_identity_cookie(dev_server):
    """Creating a session without identity mints one in a signed HttpOnly SameSite cookie,
    and the cookie then proves the same user."""
    async with httpx.AsyncClient(base_url=dev_server.http + BASE) as client:
        created = await client.post("/sessions", headers={"origin": _origin(dev_server)})
        assert created.status_code == 201
        cookie = created.headers["set-cookie"]
        assert cookie.startswith("presence_token=")
        for attribute in ("HttpOnly", "SameSite=Lax", "Path=/"):
            assert attribute in cookie
        listed = await client.get("/sessions")
        assert [s["id"] for s in listed.json()["sessions"]] == [created.json()["id"]]


async def test_two_browsers_get_two_identities(dev_server):
    """Each browser without a cookie becomes its own user; neither sees the other."""
    headers = {"origin": _origin(dev_server)}
    async with (
        httpx.AsyncClient(base_url=dev_server.http + BASE) as one,
        httpx.AsyncClient(base_url=dev_server.http + BASE) as two,
    ):
        a = (await one.post("/sessions", headers=headers)).json()["id"]
        await two.post("/sessions", headers=headers)
        assert (await two.get(f"/sessions/{a}")).status_code == 404
        assert len((await two.get("/sessions")).json()["sessions"]) == 1


async def test_dev_mode_still_refuses_other_requests_without_identity(dev_server):
    """Only create mints an identity; listing without one is 401."""
    async with httpx.AsyncClient(base_url=dev_server.http + BASE) as client:
        assert (await client.get("/sessions")).status_code == 401


async def test_a_forged_cookie_is_not_an_identity(dev_server):
    """A cookie signed with another key is refused."""
    async with httpx.AsyncClient(
        base_url=dev_server.http + BASE,
        cookies={"presence_token": token("alice", secret="y" * 40)},
    ) as client:
        assert (await client.get("/sessions")).status_code == 401


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"origin": "SAME"}, True),
        ({"sec-fetch-site": "same-origin"}, True),
        ({}, False),
        ({"origin": "null"}, False),
        ({"origin": "http://evil.example"}, False),
        ({"origin": "SAME.evil.example"}, False),
        ({"sec-fetch-site": "cross-site"}, False),
        ({"origin": "http://evil.example", "sec-fetch-site": "same-origin"}, False),
    ],
)
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_cookie_authenticated_writes_need_an_allowed_origin(
    dev_server, headers, allowed, content_type
):
    """CSRF: a state-changing request carried by the cookie must come from an allowed
    origin (or say same-origin by Sec-Fetch-Site); anything else is 403 and changes nothing."""
    same = _origin(dev_server)
    async with httpx.AsyncClient(base_url=dev_server.http + BASE) as client:
        sid = (await client.post("/sessions", headers={"origin": same})).json()["id"]
        sent = {k: v.replace("SAME", same) for k, v in headers.items()}
        sent["content-type"] = content_type
        response = await client.post(
            "/sessions/cleanup", content=json.dumps({"type": "all"}), headers=sent
        )
        if allowed:
            assert response.status_code == 200
        else:
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "forbidden"
            assert (await client.get(f"/sessions/{sid}")).status_code == 200


async def test_bearer_requests_need_no_origin():
    """A bearer token cannot be sent by a browser on another site's behalf, so no origin
    check applies to it."""
    async with serve(make_settings()) as server:
        async with httpx.AsyncClient(
            base_url=server.http + BASE, headers={"authorization": f"Bearer {token('a')}"}
        ) as client:
            response = await client.post("/sessions", headers={"origin": "http://evil.example"})
            assert response.status_code == 201


async def test_cookie_socket_without_origin_is_refused(dev_server):
    """A socket authenticated by the cookie must carry an allowed Origin."""
    async with httpx.AsyncClient(base_url=dev_server.http + BASE) as client:
        created = await client.post("/sessions", headers={"origin": _origin(dev_server)})
        sid = created.json()["id"]
        cookie = client.cookies["presence_token"]
    url = f"ws://127.0.0.1:{dev_server.port}{BASE}/sessions/{sid}/ws"
    headers = {"cookie": f"presence_token={cookie}"}
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers=headers, ping_interval=None):
            pass
    assert refused.value.response.status_code == 403
    async with connect(
        url, additional_headers=headers, origin=_origin(dev_server), ping_interval=None
    ) as websocket:
        assert json.loads(await websocket.recv())["type"] == "snapshot"


async def test_allowed_origins_list_replaces_same_origin():
    """With PRESENCE_ALLOWED_ORIGINS set, exactly those origins pass, and CORS answers."""
    settings = Settings(port=0, allowed_origins=("https://app.example.com",))
    async with serve(settings) as server:
        async with httpx.AsyncClient(base_url=server.http + BASE) as client:
            good = await client.post("/sessions", headers={"origin": "https://app.example.com"})
            assert good.status_code == 201
            assert good.headers["access-control-allow-origin"] == "https://app.example.com"
            assert good.headers["access-control-allow-credentials"] == "true"
            for origin in ("https://app.example.com.evil.com", f"http://127.0.0.1:{server.port}"):
                bad = await client.post(
                    "/sessions/cleanup", json={"type": "all"}, headers={"origin": origin}
                )
                assert bad.status_code == 403


def test_a_remembered_token_is_not_trusted_past_its_expiry():
    """Verified tokens are cached, but never beyond their own expiry (plus leeway)."""
    import time

    from presence.auth import Authenticator

    from .utils import JWT_SECRET

    auth = Authenticator(make_settings())
    short = token("alice", expires_in=2)
    assert auth.identify({"authorization": f"Bearer {short}"}, {}).user == "alice"
    _, valid_until = auth._verified[short]
    assert valid_until <= time.time() + 2 + 5
    forged = token("alice", secret="z" * 40)
    assert auth.identify({"authorization": f"Bearer {forged}"}, {}) is None
    assert forged not in auth._verified
    assert Authenticator(make_settings(jwt_secret=JWT_SECRET)).identify({}, {}) is None
