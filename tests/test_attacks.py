"""Hostile input and attacks, each caused against a real server.

- CSRF: every Origin, content type and credential for a state-changing request, under
  both origin policies (same-origin, and an allow-list), and the Origin check of every
  state-changing endpoint;
- cross-site WebSocket hijacking: the same Origin matrix against the handshake;
- limits: body size, ids per cleanup, WebSocket message size, floods, compression;
- malformed input: JSON a parser takes but no response can carry, WebSocket frames that
  break the protocol, messages built to crash a handler;
- the absolute maximum lifetime, which neither heartbeats nor an open socket extend.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import httpx
import jwt as pyjwt
import pytest
from starlette import status
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from presence.sessions import new_session_id

from .utils import JWT_SECRET, UNIT, make_settings, serve, server_process, token

BASE = "/api/v1/chat"
LISTED = "https://app.example.com"


# -- Origin policies and the matrix ---------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """A running server and the origin its policy lets in."""

    name: str
    port: int
    home: str
    client: httpx.Client

    def origin(self, case: str) -> str | None:
        """The Origin header a case sends (None: no header)."""
        scheme, _, host = self.home.partition("://")
        other_scheme = "https" if scheme == "http" else "http"
        if ":" in host:
            name, _, port = host.rpartition(":")
            other_port = f"{name}:{int(port) + 1}"
        else:
            other_port = f"{host}:8443"
        return {
            "home": self.home,
            "own": f"http://127.0.0.1:{self.port}",
            "missing": None,
            "fetch-same-origin": None,
            "null": "null",
            "look-alike": self.home + ".evil.com",
            "other-scheme": f"{other_scheme}://{host}",
            "other-port": f"{scheme}://{other_port}",
            "other-site": "https://evil.example",
        }[case]

    def headers(self, case: str) -> dict[str, str]:
        origin = self.origin(case)
        if case == "fetch-same-origin":
            return {"sec-fetch-site": "same-origin"}
        return {} if origin is None else {"origin": origin}

    def allows_http(self, case: str) -> bool:
        """What must pass the CSRF check: the policy's origin, the server's own (a list
        of allowed origins is in addition to it), or no Origin with Sec-Fetch-Site:
        same-origin."""
        return case in ("home", "own", "fetch-same-origin")

    def allows_socket(self, case: str) -> bool:
        """The handshake has no Sec-Fetch-Site rule: an Origin the policy lets in."""
        return case in ("home", "own")


ORIGINS = [
    "home",
    "own",
    "missing",
    "fetch-same-origin",
    "null",
    "look-alike",
    "other-scheme",
    "other-port",
    "other-site",
]
CONTENT_TYPES = {
    "json": "application/json",
    "text-plain": "text/plain;charset=UTF-8",
    "form": "application/x-www-form-urlencoded",
    "multipart": "multipart/form-data; boundary=presence",
    "none": None,
}
BODIES = {
    "form": b"type=all",
    "multipart": (
        b'--presence\r\nContent-Disposition: form-data; name="type"\r\n\r\nall\r\n--presence--\r\n'
    ),
}
AUTHS = ["cookie", "bearer", "query", "none"]


@pytest.fixture(scope="module")
def policies() -> Iterator[dict[str, Policy]]:
    """Two real server processes in JWT mode: one judging origins same-origin, one by
    PRESENCE_ALLOWED_ORIGINS; each with a client for its API. JWT mode sets no cookie,
    so each request carries exactly the credentials it names."""
    env = {"PRESENCE_JWT_SECRET": JWT_SECRET, "LOG_LEVEL": "warning"}
    with (
        server_process(env) as same,
        server_process({**env, "PRESENCE_ALLOWED_ORIGINS": LISTED}) as listed,
        httpx.Client(base_url=same.http + BASE) as same_client,
        httpx.Client(base_url=listed.http + BASE) as listed_client,
    ):
        yield {
            "same-origin": Policy("same-origin", same.port, same.http, same_client),
            "allow-list": Policy("allow-list", listed.port, LISTED, listed_client),
        }


@pytest.fixture(params=["same-origin", "allow-list"])
def policy(request, policies) -> Policy:
    return policies[request.param]


def _user() -> str:
    return f"user-{uuid.uuid4().hex}"


def _credentials(auth: str, user: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and query parameters that carry ``user``'s token the ``auth`` way."""
    jwt = token(user)
    return {
        "cookie": ({"cookie": f"presence_token={jwt}"}, {}),
        "bearer": ({"authorization": f"Bearer {jwt}"}, {}),
        "query": ({}, {"token": jwt}),
        "none": ({}, {}),
    }[auth]


def _new_session(policy: Policy, user: str) -> dict:
    response = policy.client.post("/sessions", headers=_bearer(user))
    assert response.status_code == 201
    return response.json()


def _bearer(user: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(user)}"}


@pytest.mark.parametrize("auth", AUTHS)
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@pytest.mark.parametrize("origin", ORIGINS)
def test_cleanup_matrix_of_origin_content_type_and_credential(policy, origin, content_type, auth):
    """A cleanup (what a sendBeacon sends) succeeds only with a bearer token, or with the
    cookie from an allowed origin; a token in the query string is no identity on REST;
    form and multipart bodies are refused whoever sends them; and a refused request
    changes nothing."""
    user = _user()
    headers, params = _credentials(auth, user)
    headers.update(policy.headers(origin))
    if CONTENT_TYPES[content_type]:
        headers["content-type"] = CONTENT_TYPES[content_type]
    body = BODIES.get(content_type, b'{"type": "all"}')
    if auth in ("query", "none"):
        expected = 401
    elif auth == "cookie" and not policy.allows_http(origin):
        expected = 403
    elif content_type in ("form", "multipart"):
        expected = 415
    else:
        expected = 200
    sid = _new_session(policy, user)["id"]
    response = policy.client.post("/sessions/cleanup", content=body, headers=headers, params=params)
    assert response.status_code == expected, response.text
    if expected == 200:
        assert response.json()["session_ids"] == [sid]
    else:
        assert response.json()["error"]["message"]
    still_there = policy.client.get(f"/sessions/{sid}", headers=_bearer(user)).status_code == 200
    assert still_there is (expected != 200)


WRITES = {
    "create": ("POST", "/sessions", 201),
    "heartbeat": ("POST", "/sessions/{sid}/heartbeat", 200),
    "delete": ("DELETE", "/sessions/{sid}", 204),
    "cleanup": ("POST", "/sessions/cleanup", 200),
}


@pytest.mark.parametrize("origin", ORIGINS)
@pytest.mark.parametrize("endpoint", WRITES)
def test_every_state_changing_endpoint_checks_the_cookie_origin(policy, endpoint, origin):
    """Create, heartbeat, delete and cleanup carried by the cookie answer 403 from an
    origin the policy does not let in, and leave the session exactly as it was."""
    user = _user()
    method, path, ok = WRITES[endpoint]
    headers, _ = _credentials("cookie", user)
    headers.update(policy.headers(origin))
    before = _new_session(policy, user)
    response = policy.client.request(
        method,
        path.format(sid=before["id"]),
        json={"type": "all"} if endpoint == "cleanup" else None,
        headers=headers,
    )
    after = policy.client.get("/sessions", headers=_bearer(user)).json()["sessions"]
    if policy.allows_http(origin):
        assert response.status_code == ok, response.text
    else:
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
        assert after == [before]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/sessions"),
        ("GET", "/sessions"),
        ("GET", "/sessions/{sid}"),
        ("DELETE", "/sessions/{sid}"),
        ("POST", "/sessions/{sid}/heartbeat"),
        ("POST", "/sessions/cleanup"),
    ],
)
def test_a_query_token_is_no_identity_on_rest(policies, method, path):
    """?token= works for the WebSocket handshake only: on every REST endpoint it is
    401, so a token never has to ride in a URL that proxies and histories keep."""
    policy = policies["same-origin"]
    user = _user()
    sid = _new_session(policy, user)["id"]
    response = policy.client.request(
        method,
        path.format(sid=sid),
        params={"token": token(user)},
        headers={"origin": policy.home},
    )
    assert response.status_code == 401
    assert policy.client.get(f"/sessions/{sid}", headers=_bearer(user)).status_code == 200


def _forged(kind: str, user: str) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + 3600}
    if kind == "alg-none":
        return pyjwt.encode(claims, None, algorithm="none")
    if kind == "hs512-same-secret":
        with warnings.catch_warnings():  # PyJWT finds the key short for SHA-512
            warnings.simplefilter("ignore", pyjwt.warnings.InsecureKeyLengthWarning)
            return pyjwt.encode(claims, JWT_SECRET, algorithm="HS512")
    if kind == "truncated-signature":
        return token(user)[:-4]
    if kind == "other-secret":
        return token(user, secret="o" * 40)
    if kind == "garbage":
        return "not.a.jwt"
    changes: dict[str, dict[str, object]] = {
        "no-sub": {"sub": None},
        "non-string-sub": {"sub": 42},
        "empty-sub": {"sub": ""},
        "sub-of-257-characters": {"sub": "u" * 257},
        "not-yet-valid": {"nbf": now + 3600},
        "expired-an-hour-ago": {"exp": now - 3600},
    }
    claims.update(changes[kind])
    return pyjwt.encode({k: v for k, v in claims.items() if v is not None}, JWT_SECRET, "HS256")


FORGERIES = [
    "alg-none",
    "hs512-same-secret",
    "truncated-signature",
    "other-secret",
    "garbage",
    "no-sub",
    "non-string-sub",
    "empty-sub",
    "sub-of-257-characters",
    "not-yet-valid",
    "expired-an-hour-ago",
]


@pytest.mark.parametrize("carrier", ["bearer", "cookie", "socket-query"])
@pytest.mark.parametrize("forgery", FORGERIES)
async def test_forged_and_malformed_tokens_are_no_identity(policies, forgery, carrier):
    """A token that is unsigned, signed otherwise, cut short, without a usable subject,
    not yet valid or expired proves nobody, whether it comes as a bearer token, as the
    cookie (from the allowed origin) or in the socket's query string: 401, and the
    session it names is untouched."""
    policy = policies["same-origin"]
    user = _user()
    session = _new_session(policy, user)
    forged = _forged(forgery, user)
    if carrier == "socket-query":
        url = f"ws://127.0.0.1:{policy.port}{BASE}/sessions/{session['id']}/ws?token={forged}"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 401
    else:
        headers = {"origin": policy.home}
        if carrier == "bearer":
            headers["authorization"] = f"Bearer {forged}"
        else:
            headers["cookie"] = f"presence_token={forged}"
        for method, path in [
            ("GET", "/sessions"),
            ("POST", f"/sessions/{session['id']}/heartbeat"),
            ("DELETE", f"/sessions/{session['id']}"),
        ]:
            assert policy.client.request(method, path, headers=headers).status_code == 401
    after = policy.client.get(f"/sessions/{session['id']}", headers=_bearer(user)).json()
    assert after == session


@pytest.mark.parametrize("origin", ["other-site", "look-alike", "null"])
def test_reads_from_a_foreign_origin_get_no_cors_grant(policies, origin):
    """A foreign page may make the browser send a cookie-carried GET, but the answer
    grants that page no access to read it."""
    policy = policies["allow-list"]
    user = _user()
    headers, _ = _credentials("cookie", user)
    headers.update(policy.headers(origin))
    response = policy.client.get("/sessions", headers=headers)
    assert "access-control-allow-origin" not in response.headers
    granted = policy.client.get("/sessions", headers={**headers, "origin": policy.home})
    assert granted.headers["access-control-allow-origin"] == policy.home


def test_cors_preflight_grants_only_the_listed_origin(policies):
    """A preflight from the listed origin is answered with a grant; a look-alike's is not."""
    policy = policies["allow-list"]
    request = {"access-control-request-method": "POST"}
    good = policy.client.options("/sessions/cleanup", headers={**request, "origin": LISTED})
    assert good.status_code == 200
    assert good.headers["access-control-allow-origin"] == LISTED
    bad = policy.client.options(
        "/sessions/cleanup", headers={**request, "origin": LISTED + ".evil.com"}
    )
    assert "access-control-allow-origin" not in bad.headers


# -- Cross-site WebSocket hijacking ----------------------------------------------------


@pytest.mark.parametrize("auth", ["cookie", "query", "bearer", "none"])
@pytest.mark.parametrize("origin", ORIGINS)
async def test_socket_handshake_matrix_of_origin_and_credential(policy, origin, auth):
    """A handshake carried by the cookie needs an Origin the policy lets in (no Origin
    is refused: Sec-Fetch-Site counts for nothing here); one carried by a token needs
    either no Origin or an allowed one; without identity it is 401. Each refusal comes
    before the socket opens."""
    user = _user()
    sid = _new_session(policy, user)["id"]
    headers, params = _credentials(auth, user)
    if auth == "bearer":
        headers = {"authorization": headers["authorization"]}
    sent_origin = policy.origin(origin)
    if auth == "none":
        expected = 401
    elif sent_origin is None:
        expected = 403 if auth == "cookie" else 101
    else:
        expected = 101 if policy.allows_socket(origin) else 403
    url = f"ws://127.0.0.1:{policy.port}{BASE}/sessions/{sid}/ws"
    if params:
        url += f"?token={params['token']}"
    extra = dict(headers)
    if origin == "fetch-same-origin":
        extra["sec-fetch-site"] = "same-origin"
    if expected == 101:
        async with connect(
            url, origin=sent_origin, additional_headers=extra, ping_interval=None
        ) as websocket:
            message = json.loads(await asyncio.wait_for(websocket.recv(), 50 * UNIT))
            assert message["type"] == "snapshot"
    else:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, origin=sent_origin, additional_headers=extra):
                pass
        assert refused.value.response.status_code == expected
        assert json.loads(refused.value.response.body)["error"]["message"]


# -- Limits ----------------------------------------------------------------------------


@pytest.fixture
async def server():
    """An in-process server in JWT mode over the memory store."""
    async with serve(make_settings()) as running:
        yield running


@pytest.fixture
async def alice(server):
    async with httpx.AsyncClient(
        base_url=server.http + BASE, headers={"authorization": f"Bearer {token('alice')}"}
    ) as client:
        yield client


async def _session(client) -> str:
    response = await client.post("/sessions")
    assert response.status_code == 201
    return response.json()["id"]


BODY_ENDPOINTS = {
    "create": ("/sessions", b'{"data": null}', 201),
    "heartbeat": ("/sessions/{sid}/heartbeat", b'{"state": "away"}', 200),
    "cleanup": ("/sessions/cleanup", b'{"type": "inactive"}', 200),
}


@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
async def test_body_limit_is_exact_for_every_endpoint_with_a_body(
    server, alice, endpoint, streamed
):
    """A body of exactly the limit is read; one byte more is 413, whether its length is
    declared up front or it arrives in chunks without one."""
    limit = server.services.settings.max_body_bytes
    path, body, ok = BODY_ENDPOINTS[endpoint]
    path = path.format(sid=await _session(alice))

    def sized(size: int):
        padded = body + b" " * (size - len(body))
        if not streamed:
            return padded

        async def chunks():
            for start in range(0, len(padded), 4096):
                yield padded[start : start + 4096]

        return chunks()

    headers = {"content-type": "text/plain"}
    exact = await alice.post(path, content=sized(limit), headers=headers)
    assert exact.status_code == ok, exact.text
    over = await alice.post(path, content=sized(limit + 1), headers=headers)
    assert over.status_code == 413
    assert over.json()["error"]["code"] == "payload_too_large"


async def test_ids_per_cleanup_limit_is_exact(server, alice):
    """A cleanup may name exactly the limit's number of ids; one more is 422 and
    deletes nothing, not even the valid ones."""
    limit = server.services.settings.max_cleanup_ids
    kept = await _session(alice)
    over = [kept] + [new_session_id() for _ in range(limit)]
    response = await alice.post("/sessions/cleanup", json={"type": "specific", "session_ids": over})
    assert response.status_code == 422
    assert (await alice.get(f"/sessions/{kept}")).status_code == 200
    exact = over[:limit]
    response = await alice.post(
        "/sessions/cleanup", json={"type": "specific", "session_ids": exact}
    )
    assert response.json() == {"deleted": 1, "session_ids": [kept]}


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": NaN}',
        b'{"data": Infinity}',
        b'{"data": -Infinity}',
        b'{"data": 1e999}',
        b'{"data": "\\ud800"}',
        b'{"data": {"\\udfff": 1}}',
        b'{"data": ' + b"9" * 5000 + b"}",
        b"[" * 20_000 + b"]" * 20_000,
        b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
    ids=[
        "nan",
        "infinity",
        "-infinity",
        "overflowing-float",
        "lone-surrogate",
        "lone-surrogate-key",
        "5000-digit-integer",
        "nested-20000-deep",
        "data-nested-5000-deep",
    ],
)
@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
async def test_json_no_response_could_carry_is_400(server, alice, endpoint, body):
    """JSON that Python's parser takes but no response can encode (NaN, Infinity,
    unpaired surrogates), or that blows its limits (digits, nesting), is 400 and
    changes nothing, rather than a 500."""
    sid = await _session(alice)
    path = BODY_ENDPOINTS[endpoint][0].format(sid=sid)
    before = (await alice.get("/sessions")).json()
    response = await alice.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "malformed_json"
    assert (await alice.get("/sessions")).json() == before


async def test_405_names_every_method_of_the_path(server, alice):
    """A method a path does not have is 405 with an Allow header naming all it has,
    and GET on the cleanup endpoint is not mistaken for a session called "cleanup"."""
    sid = await _session(alice)
    for path, allowed in [
        ("/sessions", {"GET", "HEAD", "POST"}),
        (f"/sessions/{sid}", {"GET", "HEAD", "DELETE"}),
        ("/sessions/cleanup", {"POST"}),
        (f"/sessions/{sid}/heartbeat", {"POST"}),
    ]:
        for method in ("PUT", "PATCH", "OPTIONS", "GET", "DELETE"):
            if method in allowed:
                continue
            response = await alice.request(method, path)
            assert response.status_code == 405, (method, path)
            assert set(response.headers["allow"].split(", ")) == allowed
            assert response.json()["error"]["code"] == "method_not_allowed"
    assert (await alice.get(f"/sessions/{sid}")).status_code == 200


def _ws_url(server, sid: str, user: str = "alice") -> str:
    return f"{server.ws}{BASE}/sessions/{sid}/ws?token={token(user)}"


async def _recv(websocket) -> dict:
    return json.loads(await asyncio.wait_for(websocket.recv(), timeout=50 * UNIT))


async def _closed_code(websocket) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(websocket.recv(), timeout=50 * UNIT)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_message_of_exactly_the_limit_is_read_and_one_byte_more_closes_1009(server, alice):
    """A text message of exactly the limit is read (and answered, being no JSON); one
    byte more closes the socket with 1009, and so does a message whose fragments are
    each small but together too big."""
    limit = server.services.settings.ws_max_message_bytes
    sid = await _session(alice)
    async with connect(_ws_url(server, sid), ping_interval=None, max_size=None) as websocket:
        await _recv(websocket)
        await websocket.send("x" * limit)
        assert (await _recv(websocket))["code"] == "malformed_json"
        await websocket.send("x" * (limit + 1))
        assert await _closed_code(websocket) == status.WS_1009_MESSAGE_TOO_BIG
    async with connect(_ws_url(server, sid), ping_interval=None, max_size=None) as websocket:
        await _recv(websocket)
        await websocket.send(iter(["x" * 4096] * (limit // 4096 + 1)))
        assert await _closed_code(websocket) == status.WS_1009_MESSAGE_TOO_BIG


@pytest.mark.parametrize(
    "message",
    [
        json.dumps({"type": "visibility", "state": "visible"}),
        "{not json",
        b"\x00\x01binary",
    ],
    ids=["valid", "malformed", "binary"],
)
async def test_any_message_flood_is_closed_1008(server, alice, message):
    """Messages past the rate limit close the socket with 1008 after a rate_limited
    error, whether they are valid, malformed or binary: errors count too."""
    burst = server.services.settings.ws_message_burst
    sid = await _session(alice)
    received = []
    async with connect(_ws_url(server, sid), ping_interval=None) as websocket:
        await _recv(websocket)
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(burst * 3):
                await websocket.send(message)
            while True:
                received.append(await _recv(websocket))
    assert closed.value.rcvd.code == status.WS_1008_POLICY_VIOLATION
    assert {"type": "error", "code": "rate_limited", "message": "too many messages"} in received
    await asyncio.sleep(5 * UNIT)
    assert len(server.services.registry) == 0


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("[" * 60_000 + "]" * 4_000, "malformed_json"),
        ('{"type": "visibility", "state": []}', "bad_message"),
        ('{"type": "visibility", "state": {"a": 1}}', "bad_message"),
        ('{"type": "visibility", "state": "\\ud800"}', "bad_message"),
        ('{"type": ["visibility"]}', "unknown_type"),
        ('{"type": {"nested": [1, 2]}}', "unknown_type"),
        ('{"type": "visibility", "state": NaN}', "bad_message"),
    ],
    ids=[
        "nested-60000-deep",
        "list-state",
        "object-state",
        "surrogate-state",
        "list-type",
        "object-type",
        "nan-state",
    ],
)
async def test_messages_built_to_crash_the_handler_get_an_error(server, alice, message, code):
    """Messages aimed at the parser's corners (nesting too deep, unhashable values,
    unpaired surrogates) get an error message, and the socket carries on."""
    sid = await _session(alice)
    async with connect(_ws_url(server, sid), ping_interval=None) as websocket:
        await _recv(websocket)
        await websocket.send(message)
        error = await _recv(websocket)
        assert error["type"] == "error" and error["code"] == code
        await websocket.send(json.dumps({"type": "visibility", "state": "hidden"}))
        assert (await _recv(websocket))["session"]["state"] == "away"


# -- Malformed WebSocket frames, sent raw ------------------------------------------------


def _frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False, mask: bool = True
) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    masked = 0x80 if mask else 0
    length = len(payload)
    if length < 126:
        header = bytes([first, masked | length])
    elif length < 1 << 16:
        header = bytes([first, masked | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([first, masked | 127]) + length.to_bytes(8, "big")
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


TEXT, BINARY, CONT, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9
UVICORN_INVALID_UTF8 = "Invalid UTF-8 sequence received from client."


class RawSocket:
    """A WebSocket client that sends whatever bytes it is told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str):
        self.reader = reader
        self.writer = writer
        self.head = head

    @classmethod
    async def open(cls, server, sid: str, *extra: str) -> RawSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {BASE}/sessions/{sid}/ws?token={token('alice')} HTTP/1.1",
            f"Host: 127.0.0.1:{server.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *extra,
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 50 * UNIT)
        return cls(reader, writer, head.decode("latin-1"))

    async def close_code(self) -> int:
        """Reads frames until the server's close frame; returns its code."""
        async with asyncio.timeout(50 * UNIT):
            while True:
                first, second = await self.reader.readexactly(2)
                length = second & 0x7F
                if length == 126:
                    length = int.from_bytes(await self.reader.readexactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(await self.reader.readexactly(8), "big")
                payload = await self.reader.readexactly(length)
                if first & 0x0F == CLOSE:
                    return int.from_bytes(payload[:2], "big")

    def close(self) -> None:
        self.writer.close()


MALFORMED = {
    "invalid-utf8-text": ([_frame(TEXT, b'{"type": "\xff\xfe"}')], 1007),
    "invalid-utf8-across-fragments": (
        [_frame(TEXT, b"\xe2\x82", fin=False), _frame(CONT, b"\x28")],
        1007,
    ),
    "invalid-utf8-close-reason": ([_frame(CLOSE, b"\x03\xe8\xff")], 1007),
    "unmasked-client-frame": ([_frame(TEXT, b"{}", mask=False)], 1002),
    "rsv1-without-extension": ([_frame(TEXT, b"{}", rsv1=True)], 1002),
    "unknown-opcode": ([_frame(0x3, b"{}")], 1002),
    "continuation-without-start": ([_frame(CONT, b"{}")], 1002),
    "new-message-inside-fragmented-one": (
        [_frame(TEXT, b"{", fin=False), _frame(TEXT, b"}")],
        1002,
    ),
    "ping-over-125-bytes": ([_frame(PING, b"x" * 126)], 1002),
    "fragmented-ping": ([_frame(PING, b"x", fin=False)], 1002),
    "close-code-999": ([_frame(CLOSE, (999).to_bytes(2, "big"))], 1002),
    "close-with-one-byte": ([_frame(CLOSE, b"\x03")], 1002),
    "length-of-2-to-the-62": (
        [bytes([0x80 | TEXT, 0x80 | 127]) + (1 << 62).to_bytes(8, "big") + os.urandom(4)],
        1009,
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
async def test_malformed_frames_close_with_the_protocol_code(server, alice, caplog, case):
    """Each malformed frame closes the socket with its RFC 6455 code (1007 invalid
    UTF-8, 1002 protocol error, 1009 too big), without an error from the app; the
    session is then marked disconnected and a new socket opens fine."""
    frames, code = MALFORMED[case]
    sid = await _session(alice)
    raw = await RawSocket.open(server, sid)
    try:
        assert raw.head.startswith("HTTP/1.1 101")
        raw.writer.write(b"".join(frames))
        assert await raw.close_code() == code
    finally:
        raw.close()

    async def disconnected() -> bool:
        return (await alice.get(f"/sessions/{sid}")).json()["state"] == "disconnected"

    async with asyncio.timeout(50 * UNIT):
        while not await disconnected():  # noqa: ASYNC110 - polls the server
            await asyncio.sleep(UNIT / 2)
    async with connect(_ws_url(server, sid), ping_interval=None) as websocket:
        assert (await _recv(websocket))["type"] == "snapshot"
    # uvicorn itself logs invalid UTF-8 in a text message at ERROR, with a traceback,
    # before it closes 1007; nothing else may be logged as an error.
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.getMessage() != UVICORN_INVALID_UTF8
    ]
    assert errors == []


async def test_per_message_compression_is_refused_and_compressed_frames_too(server, alice):
    """Offered permessage-deflate, the server accepts the socket without it; a frame
    flagged compressed anyway is a protocol error (1002), never inflated."""
    sid = await _session(alice)
    raw = await RawSocket.open(
        server, sid, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
    )
    try:
        assert raw.head.startswith("HTTP/1.1 101")
        assert "sec-websocket-extensions" not in raw.head.lower()
        raw.writer.write(_frame(TEXT, b"\xf2\x4f\x2e\x51\x00\x00", rsv1=True))
        assert await raw.close_code() == 1002
    finally:
        raw.close()


# -- The absolute maximum lifetime -------------------------------------------------------

LIFETIME = 20 * UNIT


@pytest.fixture(params=["memory", "redis"])
async def mortal_server(request):
    """A server whose sessions live at most LIFETIME, however alive they are kept; the
    TTL and the refresher's interval are far longer, so neither can end them first."""
    changes = {"max_lifetime": LIFETIME, "session_ttl": 600.0, "heartbeat_interval": 30.0}
    if request.param == "redis":
        changes["redis_url"] = request.getfixturevalue("redis_url")
    async with serve(make_settings(**changes)) as running:
        yield running


def _moment(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_max_lifetime_is_not_extended_by_heartbeats_or_an_open_socket(mortal_server):
    """With heartbeats every few tenths of a second and a socket open, no answer puts
    expires_at past created_at + the lifetime; at the deadline the socket gets ended
    with reason expired and closes, and the session is gone for every operation."""
    server = mortal_server
    async with httpx.AsyncClient(
        base_url=server.http + BASE, headers={"authorization": f"Bearer {token('alice')}"}
    ) as alice:
        created = (await alice.post("/sessions")).json()
        sid = created["id"]
        deadline = _moment(created["created_at"]) + LIFETIME
        async with connect(_ws_url(server, sid), ping_interval=None) as websocket:
            assert (await _recv(websocket))["type"] == "snapshot"
            expiries = []
            while time.time() < deadline - 3 * UNIT:
                beat = await alice.post(f"/sessions/{sid}/heartbeat")
                assert beat.status_code == 200
                expiries.append(_moment(beat.json()["expires_at"]))
                await asyncio.sleep(2 * UNIT)
            ended = await _recv(websocket)
            closed_at = time.time()
            assert ended == {"type": "ended", "reason": "expired"}
            assert await _closed_code(websocket) == status.WS_1000_NORMAL_CLOSURE
        # expires_at is computed from a reading of the clock after Redis answered.
        assert len(expiries) >= 3 and max(expiries) <= deadline + UNIT
        assert deadline - UNIT <= closed_at <= deadline + 10 * UNIT
        print(f"socket ended {closed_at - deadline:+.3f}s from the deadline")
        assert (await alice.get(f"/sessions/{sid}")).status_code == 404
        assert (await alice.post(f"/sessions/{sid}/heartbeat")).status_code == 404
        assert (await alice.get("/sessions")).json() == {"sessions": []}
        with pytest.raises(InvalidStatus) as refused:
            async with connect(_ws_url(server, sid), ping_interval=None):
                pass
        assert refused.value.response.status_code == 404
