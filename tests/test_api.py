"""The REST API through a real uvicorn server and a real HTTP client."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect

from presence.sessions import new_session_id

from .utils import UNIT, make_settings, serve, token

BASE = "/api/v1/chat"


@pytest.fixture(params=["memory", "redis"])
async def server(request):
    """A real server in JWT mode over the memory store or a real redis-server."""
    changes = {"inactive_threshold": 5 * UNIT, "heartbeat_interval": 2 * UNIT}
    if request.param == "redis":
        changes["redis_url"] = request.getfixturevalue("redis_url")
    async with serve(make_settings(**changes)) as running:
        yield running


@pytest.fixture
async def make_client(server):
    """Factory of clients authenticated as a given user (by bearer token)."""
    clients = []

    async def factory(user: str | None = "alice", **kwargs) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token(user)}"} if user else {}
        headers.update(kwargs.pop("headers", {}))
        client = httpx.AsyncClient(base_url=server.http + BASE, headers=headers, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


async def _create(client, **body) -> dict:
    response = await client.post("/sessions", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def _transport(client, sid: str) -> str:
    return (await client.get(f"/sessions/{sid}")).json()["transport"]


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    return error["message"]


async def test_create_returns_a_minted_session(make_client):
    """Create answers 201 with a server-minted 128-bit id and a Location."""
    client = await make_client()
    response = await client.post("/sessions", json={"data": {"room": "general"}})
    assert response.status_code == 201
    session = response.json()
    assert len(session["id"]) == 22
    assert response.headers["location"].endswith(f"/sessions/{session['id']}")
    assert session["data"] == {"room": "general"}
    assert session["state"] == "active" and session["transport"] == "none"
    for field in ("created_at", "last_seen", "expires_at"):
        assert session[field].endswith("Z")


async def test_create_without_body_and_ids_are_unique(make_client):
    """An empty body is fine and every session gets a different id."""
    client = await make_client()
    ids = {(await client.post("/sessions")).json()["id"] for _ in range(5)}
    assert len(ids) == 5


async def test_get_and_list_the_callers_sessions(make_client):
    """A user gets and lists their own sessions."""
    client = await make_client()
    a, b = await _create(client), await _create(client)
    got = await client.get(f"/sessions/{a['id']}")
    assert got.status_code == 200 and got.json()["id"] == a["id"]
    listed = (await client.get("/sessions")).json()["sessions"]
    assert {s["id"] for s in listed} == {a["id"], b["id"]}


async def test_heartbeat_extends_the_ttl(make_client):
    """A heartbeat answers the session with a later expires_at and transport http."""
    client = await make_client()
    session = await _create(client)
    response = await client.post(f"/sessions/{session['id']}/heartbeat")
    assert response.status_code == 200
    beat = response.json()
    assert beat["expires_at"] > session["expires_at"]
    assert beat["last_seen"] > session["last_seen"]
    assert beat["transport"] == "http" and beat["state"] == "active"
    away = await client.post(f"/sessions/{session['id']}/heartbeat", json={"state": "away"})
    assert away.json()["state"] == "away"


async def test_heartbeat_of_unknown_or_deleted_session_is_404(make_client):
    """Heartbeating an id the server does not hold answers 404 and creates nothing."""
    client = await make_client()
    _error(await client.post(f"/sessions/{new_session_id()}/heartbeat"), 404, "session_not_found")
    _error(await client.post("/sessions/not-an-id/heartbeat"), 404, "session_not_found")
    session = await _create(client)
    assert (await client.delete(f"/sessions/{session['id']}")).status_code == 204
    _error(await client.post(f"/sessions/{session['id']}/heartbeat"), 404, "session_not_found")
    assert (await client.get("/sessions")).json()["sessions"] == []


async def test_delete_answers_204_then_404(make_client):
    """Deleting a session answers 204, and deleting it again 404."""
    client = await make_client()
    session = await _create(client)
    response = await client.delete(f"/sessions/{session['id']}")
    assert response.status_code == 204 and response.content == b""
    _error(await client.delete(f"/sessions/{session['id']}"), 404, "session_not_found")
    _error(await client.get(f"/sessions/{session['id']}"), 404, "session_not_found")


async def test_cleanup_all(make_client):
    """Cleanup all deletes every session of the caller and says how many."""
    client = await make_client()
    ids = {(await _create(client))["id"] for _ in range(3)}
    response = await client.post("/sessions/cleanup", json={"type": "all"})
    assert response.status_code == 200
    assert response.json()["deleted"] == 3
    assert set(response.json()["session_ids"]) == ids
    assert (await client.get("/sessions")).json()["sessions"] == []


async def test_cleanup_inactive_keeps_the_current_session(make_client):
    """Inactive cleanup deletes stale sessions, so a refreshed page's session survives."""
    import asyncio

    client = await make_client()
    stale = await _create(client)
    await asyncio.sleep(8 * UNIT)
    current = await _create(client)
    response = await client.post("/sessions/cleanup", json={"type": "inactive"})
    assert response.json() == {"deleted": 1, "session_ids": [stale["id"]]}
    listed = (await client.get("/sessions")).json()["sessions"]
    assert [s["id"] for s in listed] == [current["id"]]


async def test_cleanup_specific(make_client):
    """Specific cleanup deletes the named ids the caller holds, ignoring the rest."""
    client = await make_client()
    a, b, c = [await _create(client) for _ in range(3)]
    response = await client.post(
        "/sessions/cleanup",
        json={"type": "specific", "session_ids": [a["id"], b["id"], new_session_id(), "junk"]},
    )
    assert response.json()["deleted"] == 2
    listed = (await client.get("/sessions")).json()["sessions"]
    assert [s["id"] for s in listed] == [c["id"]]


async def test_cleanup_accepts_a_text_plain_beacon(make_client):
    """The JSON body sent as text/plain (what sendBeacon sends) is accepted."""
    client = await make_client()
    await _create(client)
    response = await client.post(
        "/sessions/cleanup",
        content=json.dumps({"type": "all"}),
        headers={"content-type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 200 and response.json()["deleted"] == 1


@pytest.mark.parametrize(
    ("body", "status", "code", "names"),
    [
        (b"{not json", 400, "malformed_json", "JSON"),
        (b"[1, 2]", 422, "invalid_body", "object"),
        (b'{"type": "everything"}', 422, "invalid_body", "type"),
        (b"{}", 422, "invalid_body", "type"),
        (b'{"type": "specific"}', 422, "invalid_body", "session_ids"),
        (b'{"type": "specific", "session_ids": []}', 422, "invalid_body", "session_ids"),
        (b'{"type": "specific", "session_ids": "abc"}', 422, "invalid_body", "session_ids"),
        (b'{"type": "specific", "session_ids": [1]}', 422, "invalid_body", "session_ids"),
        (b'{"type": "all", "session_ids": ["x"]}', 422, "invalid_body", "session_ids"),
        (b'{"type": "all", "extra": 1}', 422, "invalid_body", "extra"),
        (b"\xff\xfe", 400, "malformed_json", "JSON"),
    ],
)
async def test_bad_cleanup_bodies_are_refused_with_a_named_problem(
    make_client, body, status, code, names
):
    """Each malformed cleanup body gets its status and a message naming the problem."""
    client = await make_client()
    session = await _create(client)
    response = await client.post(
        "/sessions/cleanup", content=body, headers={"content-type": "application/json"}
    )
    assert names.lower() in _error(response, status, code).lower()
    assert (await client.get(f"/sessions/{session['id']}")).status_code == 200


async def test_too_many_ids_is_refused(make_client, server):
    """More ids than the limit in one cleanup answers 422 and deletes nothing."""
    client = await make_client()
    session = await _create(client)
    limit = server.services.settings.max_cleanup_ids
    ids = [session["id"]] + [new_session_id() for _ in range(limit)]
    response = await client.post("/sessions/cleanup", json={"type": "specific", "session_ids": ids})
    assert "at most" in _error(response, 422, "invalid_body")
    assert (await client.get(f"/sessions/{session['id']}")).status_code == 200


async def test_oversized_body_is_413(make_client, server):
    """A body over the limit answers 413, whether declared or streamed."""
    client = await make_client()
    big = b'{"type": "all", "pad": "' + b"x" * server.services.settings.max_body_bytes + b'"}'
    _error(
        await client.post("/sessions/cleanup", content=big, headers={"content-type": "text/plain"}),
        413,
        "payload_too_large",
    )

    async def chunks():
        for _ in range(100):
            yield b"x" * 1024

    _error(
        await client.post(
            "/sessions/cleanup", content=chunks(), headers={"content-type": "text/plain"}
        ),
        413,
        "payload_too_large",
    )


async def test_oversized_data_is_422(make_client):
    """Session data over its size limit is refused with a message naming data."""
    client = await make_client()
    response = await client.post("/sessions", json={"data": "x" * 5000})
    assert "data" in _error(response, 422, "invalid_body")


async def test_unsupported_media_type_is_415(make_client):
    """A form-encoded body is refused with 415."""
    client = await make_client()
    response = await client.post("/sessions/cleanup", data={"type": "all"})
    _error(response, 415, "unsupported_media_type")


async def test_bad_heartbeat_state_is_422(make_client):
    """A heartbeat may set state active or away, nothing else."""
    client = await make_client()
    session = await _create(client)
    response = await client.post(
        f"/sessions/{session['id']}/heartbeat", json={"state": "disconnected"}
    )
    assert "state" in _error(response, 422, "invalid_body")


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_at_the_per_user_cap_a_closed_session_is_replaced_and_429_needs_all_open(
    request, store
):
    """At the per-user cap, create answers 429 with a clear message while a socket
    holds every session open; once one socket closes, create answers 201 and that
    session is gone (replaced), the others untouched."""
    changes: dict[str, object] = {"max_sessions_per_user": 3, "heartbeat_interval": 2 * UNIT}
    if store == "redis":
        changes["redis_url"] = request.getfixturevalue("redis_url")
    async with (
        serve(make_settings(**changes)) as server,
        httpx.AsyncClient(
            base_url=server.http + BASE, headers={"authorization": f"Bearer {token('alice')}"}
        ) as client,
    ):
        sids = [(await _create(client))["id"] for _ in range(3)]
        sockets = []
        for sid in sids:
            url = f"{server.ws}{BASE}/sessions/{sid}/ws?token={token('alice')}"
            sockets.append(await connect(url, ping_interval=None))
            await asyncio.wait_for(sockets[-1].recv(), timeout=30 * UNIT)  # the snapshot
        try:
            message = _error(await client.post("/sessions"), 429, "too_many_sessions")
            assert "3 sessions" in message
            await sockets[1].close()
            # The server marks the session disconnected once it sees the close.
            async with asyncio.timeout(30 * UNIT):
                while await _transport(client, sids[1]) != "none":  # noqa: ASYNC110
                    await asyncio.sleep(UNIT / 5)
            created = await _create(client)
            assert (await client.get(f"/sessions/{sids[1]}")).status_code == 404
            listed = {s["id"] for s in (await client.get("/sessions")).json()["sessions"]}
            assert listed == {sids[0], sids[2], created["id"]}
        finally:
            for websocket in sockets:
                await websocket.close()


async def test_two_users_cannot_touch_each_others_sessions(make_client):
    """Mallory can neither read, heartbeat, delete, list nor clean up Alice's session,
    and "not yours" looks exactly like "does not exist"."""
    alice = await make_client("alice")
    mallory = await make_client("mallory")
    session = await _create(alice)
    sid = session["id"]
    missing = new_session_id()
    for method, path in [
        ("GET", f"/sessions/{sid}"),
        ("POST", f"/sessions/{sid}/heartbeat"),
        ("DELETE", f"/sessions/{sid}"),
    ]:
        theirs = await mallory.request(method, path)
        nobodys = await mallory.request(method, path.replace(sid, missing))
        assert theirs.status_code == nobodys.status_code == 404
        assert theirs.json() == nobodys.json()
    assert (await mallory.get("/sessions")).json() == {"sessions": []}
    for body in ({"type": "all"}, {"type": "specific", "session_ids": [sid]}):
        assert (await mallory.post("/sessions/cleanup", json=body)).json()["deleted"] == 0
    after = await alice.get(f"/sessions/{sid}")
    assert after.status_code == 200 and after.json()["last_seen"] == session["last_seen"]


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
@pytest.mark.parametrize("credential", ["none", "garbage", "wrong-key", "expired"])
async def test_requests_without_valid_identity_are_401(make_client, method, path, credential):
    """Every endpoint answers 401 to a missing, forged or expired token."""
    owner = await make_client()
    sid = (await _create(owner))["id"]
    headers = {
        "none": {},
        "garbage": {"authorization": "Bearer not.a.jwt"},
        "wrong-key": {"authorization": f"Bearer {token('alice', secret='x' * 40)}"},
        "expired": {"authorization": f"Bearer {token('alice', expires_in=-60)}"},
    }[credential]
    client = await make_client(None, headers=headers)
    response = await client.request(method, path.format(sid=sid), json={"type": "all"})
    _error(response, 401, "unauthorized")
    assert (await owner.get(f"/sessions/{sid}")).status_code == 200


async def test_health_and_readiness(server):
    """/healthz says the process is up; /readyz names the store serving."""
    async with httpx.AsyncClient(base_url=server.http) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = (await client.get("/readyz")).json()
        assert ready["status"] == "ready"
        assert ready["store"] in ("memory", "redis")


async def test_unknown_routes_answer_json_errors(server):
    """A 404 or 405 from routing has the same JSON error shape."""
    async with httpx.AsyncClient(base_url=server.http) as client:
        _error(await client.get("/nope"), 404, "not_found")
        _error(await client.put(BASE + "/sessions"), 405, "method_not_allowed")


def _iso_by_datetime(timestamp: float) -> str:
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_times_are_formatted_exactly_as_datetime_formats_them():
    """The wire form of a time is byte for byte datetime's isoformat to the millisecond
    (rounded to the microsecond half to even, then truncated), with Z: at the
    boundaries where rounding carries into the next millisecond, second, day or year,
    and for random times."""
    import math
    import random

    from presence.sessions import _iso

    cases = [
        0.0,
        -0.0,
        0.0005,
        0.0009995,
        0.9995,
        0.9999994,
        0.9999995,
        0.9999996,
        1_700_000_000.9995,
        1_700_000_000.9999995,
        1_700_000_000.99999949,
        951_868_799.9999996,  # into 2000-02-29
        1_704_067_199.9999996,  # into a new year
        253_402_300_798.5,
        1,
        1_800_000_000,
    ]
    rng = random.Random(1)
    for _ in range(20_000):
        base = rng.randrange(0, 4_000_000_000) + rng.randrange(0, 2_000_000) / 2_000_000
        cases.append(base)
        cases.append(math.nextafter(base, math.inf))
        cases.append(math.nextafter(base, -math.inf))
        cases.append(rng.uniform(0, 253_402_300_000))
    for timestamp in cases:
        assert _iso(timestamp) == _iso_by_datetime(timestamp), repr(timestamp)
    for beyond in (-1.5, -1e-9, 253_402_300_799.5, math.nan, math.inf, 1e20):
        try:
            expected: object = _iso_by_datetime(beyond)
        except (ValueError, OverflowError) as exc:
            expected = type(exc)
        try:
            got: object = _iso(beyond)
        except (ValueError, OverflowError) as exc:
            got = type(exc)
        assert got == expected, repr(beyond)


def _parse_in_full(body: bytes) -> object:
    """How bodies were parsed before the quick path: parse, then encode to refuse what
    no response could carry."""
    value = json.loads(body)
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    return value


def _outcome(parse, body: bytes) -> tuple[str, object]:
    try:
        return "ok", parse(body)
    except (ValueError, RecursionError) as exc:
        return type(exc).__name__, str(exc)


_NESTED_AT_THE_QUICK_LIMIT = b'{"data": ' + b"[" * 63 + b"]" * 63 + b"}"


@pytest.mark.parametrize(
    "body",
    [
        b'{"state": "away"}',
        b'{"data": {"n": 1.5, "m": [1e308, -2.5e-300, 0.1]}}',
        b'{"data": 1e309}',
        b'{"data": -1e309}',
        b'{"data": 1' + b"0" * 400 + b".0}",
        b'{"data": NaN}',
        b'{"data": [Infinity]}',
        b'{"data": -Infinity}',
        b'{"data": "NaN Infinity"}',
        b'{"data": "\\ud800"}',
        b'{"data": "\\ud83d\\ude00"}',
        b'{"data": "\\u00e9\\n"}',
        b'{"\\udfff": 1}',
        '{"data": "caf\u00e9"}'.encode(),
        b'{"data": "\xed\xa0\x80"}',  # a surrogate as raw UTF-8 bytes
        b'{"data": "\xff"}',
        '{"data": "\\ud800"}'.encode("utf-16-le"),
        '{"data": "ok"}'.encode("utf-16-be"),
        '{"data": "ok"}'.encode("utf-32"),
        b"\xef\xbb\xbf{}",
        b'{"a": 1} x',
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b"\x00\x00\x00{",
        b'{"data": ' + b"9" * 5000 + b"}",
        _NESTED_AT_THE_QUICK_LIMIT,
        b'{"data": ' + b"[" * 64 + b"]" * 64 + b"}",
        b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"[" * 20_000 + b"]" * 20_000,
    ],
)
def test_the_quick_parse_refuses_and_accepts_what_the_full_check_does(body):
    """parse_json() takes its quick path for most bodies, and still ends exactly as
    the full parse-and-encode check does: the same value, or the same error and
    message, for NaN, overflowing numbers, surrogates escaped or raw, UTF-16 and -32
    bodies, BOMs, deep nesting and malformed JSON."""
    from presence.asgi.rest import parse_json

    assert _outcome(parse_json, body) == _outcome(_parse_in_full, body)


def test_a_plain_heartbeat_body_takes_the_quick_path(monkeypatch):
    """A body without escapes, non-ASCII bytes or deep nesting is not encoded again."""
    from presence.asgi import rest as api

    def no_encode(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(api.json, "dumps", no_encode)
    assert api.parse_json(b'{"state": "away", "data": {"n": [1, 2.5]}}') == {
        "state": "away",
        "data": {"n": [1, 2.5]},
    }
    assert api.parse_json(_NESTED_AT_THE_QUICK_LIMIT)["data"]
