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


async def test_allowed_origins_are_in_addition_to_the_servers_own():
    """With PRESENCE_ALLOWED_ORIGINS set, those origins pass besides the server's own (its
    /chat keeps working), CORS answers them, and a look-alike does not pass."""
    settings = Settings(port=0, allowed_origins=("https://app.example.com",))
    async with serve(settings) as server:
        async with httpx.AsyncClient(base_url=server.http + BASE) as client:
            good = await client.post("/sessions", headers={"origin": "https://app.example.com"})
            assert good.status_code == 201
            assert good.headers["access-control-allow-origin"] == "https://app.example.com"
            assert good.headers["access-control-allow-credentials"] == "true"
            own = await client.post(
                "/sessions/cleanup",
                json={"type": "all"},
                headers={"origin": f"http://127.0.0.1:{server.port}"},
            )
            assert own.status_code == 200
            assert "access-control-allow-origin" not in own.headers
            for origin in ("https://app.example.com.evil.com", "http://app.example.com"):
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
    assert auth.identify(f"Bearer {short}").user == "alice"
    _, _, valid_until = auth._verified[short]
    assert valid_until <= time.time() + 2 + 5
    forged = token("alice", secret="z" * 40)
    assert auth.identify(f"Bearer {forged}") is None
    assert forged not in auth._verified
    assert Authenticator(make_settings(jwt_secret=JWT_SECRET)).identify(None) is None


# What a request's credentials are read from, next to what Starlette's accessors answer
# for the same request: the service reads them from the ASGI scope itself, once.
_HEADER_CASES = [
    [],
    [(b"cookie", b"presence_token=abc")],
    [(b"cookie", b"a=1; presence_token=one"), (b"cookie", b"presence_token=two; b=2")],
    [(b"cookie", b"presence_token=one"), (b"cookie", b"presence_token=")],
    [(b"cookie", b"presence_token=one"), (b"cookie", b"other=presence_token")],
    [(b"cookie", b' presence_token = "quoted\\073value" ; x')],
    [(b"cookie", b"presence_tokenx=1; xpresence_token=2")],
    [(b"cookie", b"presence_token"), (b"cookie", b"=presence_token")],
    [(b"cookie", "presence_token=caf\u00e9".encode("latin-1"))],
    [(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b"), (b"origin", b"o")],
    [(b"host", b"h1"), (b"x", b"y"), (b"host", b"h2"), (b"sec-fetch-site", b"same-origin")],
]
_QUERY_CASES = [
    b"",
    b"token=abc",
    b"token=a&token=b",
    b"token=a&token=",
    b"%74oken=encoded",
    b"token=a+b%2Bc",
    b"x=1&tokens=2",
    b"token",
    b"token=caf%C3%A9&token=%FF",
    "token=caf\u00e9".encode("latin-1"),
    b"a=1;token=2",
]


@pytest.mark.parametrize("raw", _HEADER_CASES)
def test_headers_and_cookie_are_read_as_starlette_reads_them(raw):
    """first_headers() answers what Headers.get does, and cookie_token() what
    request.cookies does, for repeated, quoted, empty and look-alike cookies."""
    from starlette.requests import Request

    from presence.auth import COOKIE_NAME, cookie_token, first_headers, header

    scope = {"type": "http", "headers": list(raw), "query_string": b""}
    request = Request(scope)
    headers = first_headers(raw)
    for name in ("authorization", "cookie", "origin", "host", "sec-fetch-site", "x"):
        assert header(headers, name.encode()) == request.headers.get(name)
    assert cookie_token(raw) == request.cookies.get(COOKIE_NAME)


@pytest.mark.parametrize("query_string", _QUERY_CASES)
def test_the_query_token_is_read_as_starlette_reads_it(query_string):
    """query_token() answers what websocket.query_params.get("token") does."""
    from starlette.requests import Request

    from presence.auth import query_token

    request = Request({"type": "http", "headers": [], "query_string": query_string})
    assert query_token(query_string) == request.query_params.get("token")


def test_cookies_are_read_only_when_no_token_came_another_way():
    """A bearer or query token is judged without reading the cookie at all; the cookie
    is read only when neither came, and a bad bearer token never falls back to it."""
    from presence.auth import Authenticator

    auth = Authenticator(make_settings())
    good = token("alice")

    def unread() -> str:
        raise AssertionError("the cookie was read")

    assert auth.identify(f"Bearer {good}", unread).via == "bearer"
    assert auth.identify(f"bearer  {good} ", unread).user == "alice"
    assert auth.identify("Bearer forged", unread) is None
    assert auth.identify(None, unread, query_token=good).via == "query"
    assert auth.identify("Basic abc", lambda: good).via == "cookie"
    assert auth.identify("Bearer", lambda: good).via == "cookie"  # No token after it.
    assert auth.identify(None, lambda: "") is None
    assert auth.identify(None, lambda: None, query_token="") is None


@pytest.mark.slow
async def test_a_dev_mode_identity_survives_a_restart_and_every_process_takes_it(redis_url):
    """In development mode over Redis, the key of anonymous identities lives in Redis:
    a browser's cookie from one server process is its identity on another, and after
    the first is killed and started again, with its session still there."""
    from .utils import ServerProcess

    env = {"REDIS_URL": redis_url}
    first, second = ServerProcess(env), ServerProcess(env)
    first.start()
    second.start()
    try:
        async with httpx.AsyncClient(base_url=first.http + BASE) as client:
            created = await client.post("/sessions", headers={"origin": first.http})
            assert created.status_code == 201
            cookie = {"cookie": created.headers["set-cookie"].split(";")[0]}
        async with httpx.AsyncClient(base_url=second.http + BASE) as client:
            listed = await client.get("/sessions", headers=cookie)
            assert [s["id"] for s in listed.json()["sessions"]] == [created.json()["id"]]
        first.kill()
        first.start()
        async with httpx.AsyncClient(base_url=first.http + BASE) as client:
            listed = await client.get("/sessions", headers=cookie)
            assert listed.status_code == 200
            assert [s["id"] for s in listed.json()["sessions"]] == [created.json()["id"]]
    finally:
        first.stop()
        second.stop()


async def test_a_dev_mode_key_file_is_made_once_and_kept(tmp_path):
    """PRESENCE_DEV_SECRET_FILE names the key: made (readable by its owner alone) on
    first use, then read, so that identities outlive a restart without Redis too; a file
    holding too short a key is a configuration error."""
    path = tmp_path / "dev.key"
    settings = Settings(port=0, dev_secret_file=str(path))
    async with serve(settings) as server:
        async with httpx.AsyncClient(base_url=server.http + BASE) as client:
            created = await client.post("/sessions", headers={"origin": _origin(server)})
            cookie = {"cookie": created.headers["set-cookie"].split(";")[0]}
    assert oct(path.stat().st_mode & 0o777) == "0o600" and len(path.read_text()) >= 32
    async with serve(settings) as server:
        async with httpx.AsyncClient(base_url=server.http + BASE) as client:
            # The memory store forgot the session, but not who the browser is.
            assert (await client.get("/sessions", headers=cookie)).status_code == 200
    path.write_text("short")
    from .utils import ServerProcess

    broken = ServerProcess({"PRESENCE_DEV_SECRET_FILE": str(path)})
    with pytest.raises(RuntimeError, match="PRESENCE_DEV_SECRET_FILE"):
        broken.start()
