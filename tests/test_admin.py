"""The admin page's edge and service: who may look, and what they see.

Real uvicorn servers on port 0 (and real ``presence serve`` processes on a real
redis-server for the view across processes), real HTTP and WebSocket clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from presence.admin import CREDENTIAL_TTL, LOGIN_BURST, AdminGate, AdminService, _Room
from presence.asgi.admin import COOKIE_NAME
from presence.exceptions import AdminDisabled, ConfigError, RateLimited, Unauthorized
from presence.settings import Settings

from .utils import JWT_SECRET, UNIT, make_settings, serve, server_process, token

ADMIN_TOKEN = "admin-token-for-the-tests-0123456789"
BEARER = {"authorization": f"Bearer {ADMIN_TOKEN}"}
ADMIN_WS = "/api/v1/admin/ws"
LOGIN = "/api/v1/admin/login"
WAIT = 100 * UNIT


async def _recv(websocket, within: float = WAIT) -> dict:
    return json.loads(await asyncio.wait_for(websocket.recv(), timeout=within))


async def _until(websocket, predicate, within: float = WAIT) -> dict:
    """The first message for which ``predicate`` holds, within ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            message = await _recv(websocket, within)
            if predicate(message):
                return message


@pytest.fixture
async def admin_server() -> AsyncIterator:
    async with serve(make_settings(admin_token=ADMIN_TOKEN)) as server:
        yield server


# -- the gate, without I/O --------------------------------------------------------------


def test_a_credential_is_signed_expires_and_dies_with_the_token():
    """A login's credential passes until its expiry, a changed byte or another admin
    token refuses it, and no credential passes without a token set."""
    now = [1_800_000_000.0]
    gate = AdminGate("a" * 20, clock=lambda: now[0])
    credential = gate.mint()
    assert gate.is_credential(credential)
    tampered = credential[:-1] + ("0" if credential[-1] != "0" else "1")
    assert not gate.is_credential(tampered)
    assert not gate.is_credential("v1.9999999999." + "0" * 64)
    assert not AdminGate("b" * 20, clock=lambda: now[0]).is_credential(credential)
    now[0] += CREDENTIAL_TTL + 1
    assert not gate.is_credential(credential)
    with pytest.raises(AdminDisabled):
        AdminGate(None).authorize(None, credential)


def test_every_login_attempt_counts_against_the_address():
    """After the burst of attempts, even the right token is refused for a while (a
    guesser gains nothing by guessing fast); another address is not held up."""
    gate = AdminGate("a" * 20)
    for _ in range(LOGIN_BURST):
        with pytest.raises(Unauthorized):
            gate.login("wrong", "10.0.0.1")
    with pytest.raises(RateLimited) as refused:
        gate.login("a" * 20, "10.0.0.1")
    assert refused.value.retry_after > 0
    assert gate.is_credential(gate.login("a" * 20, "10.0.0.2"))


def test_a_short_admin_token_is_a_config_error():
    """PRESENCE_ADMIN_TOKEN shorter than 16 characters stops start-up, naming it."""
    with pytest.raises(ConfigError, match="PRESENCE_ADMIN_TOKEN"):
        Settings.from_env({"PRESENCE_ADMIN_TOKEN": "short"})
    assert Settings.from_env({"PRESENCE_ADMIN_TOKEN": ADMIN_TOKEN}).admin_token == ADMIN_TOKEN
    assert ADMIN_TOKEN not in repr(Settings.from_env({"PRESENCE_ADMIN_TOKEN": ADMIN_TOKEN}))


# -- HTTP -------------------------------------------------------------------------------


async def test_the_feed_tells_only_what_changed_in_the_members_it_shows():
    """A diff tells each user as they are at its window's end, and the feed's members
    may come from a sync read inside that window: a leave of a member it never held is
    no member.left, a join of one it holds already no member.joined (a status change
    is still told)."""
    service = AdminService(
        Settings(),
        rooms=None,  # type: ignore[arg-type]  # (the feed's own bookkeeping only)
        registry=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        bus=None,  # type: ignore[arg-type]
        board=None,  # type: ignore[arg-type]
    )
    service._observed["lobby"] = _Room()

    def member(user: str, status: str = "online") -> dict[str, object]:
        return {"user": user, "status": status, "sessions": 1, "meta": None, "since": 1}

    def heard(**message: object) -> None:
        service._heard(json.dumps({"room": "lobby", **message}))

    heard(
        type="presence.sync",
        seq=1,
        count=3,
        members=[member("ada"), member("bob"), member("dee")],
    )
    heard(
        type="presence.diff",
        seq=2,
        count=3,
        joins=[member("ada"), member("bob", "away"), member("cy")],
        updates=[],
        leaves=[
            {"user": "zed", "reason": "node_down", "last_seen": 5},
            {"user": "dee", "reason": "closed", "last_seen": 5},
        ],
    )
    await asyncio.sleep(0)  # the broadcasts (to no client) run
    told = [(e["kind"], e["user"], e.get("status", e.get("reason"))) for e in service.events]
    assert told == [
        ("member.status", "bob", "away"),
        ("member.joined", "cy", None),
        ("member.left", "dee", "closed"),
    ]
    assert sorted(service._observed["lobby"].members) == ["ada", "bob", "cy"]


async def test_without_the_setting_the_admin_page_is_off():
    """With PRESENCE_ADMIN_TOKEN unset, /admin, the login and the socket are 404
    admin_disabled, saying which setting turns them on."""
    async with serve(make_settings()) as server:
        async with httpx.AsyncClient(base_url=server.http) as client:
            for response in (
                await client.get("/admin", headers=BEARER),
                await client.post(LOGIN, json={"token": ADMIN_TOKEN}),
            ):
                assert response.status_code == 404
                assert response.json()["error"]["code"] == "admin_disabled"
                assert "PRESENCE_ADMIN_TOKEN" in response.json()["error"]["message"]
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws + ADMIN_WS, additional_headers=BEARER):
                pass
        assert refused.value.response.status_code == 404


async def test_the_page_is_refused_without_the_token(admin_server):
    """Without a credential, with a wrong bearer, or with a user's own valid token or
    identity cookie, /admin is 401 and the sign-in form; with the token it is the page."""
    async with httpx.AsyncClient(base_url=admin_server.http) as client:
        user = token("alice")
        for headers, cookies in [
            ({}, {}),
            ({"authorization": "Bearer wrong-token-wrong-token"}, {}),
            ({"authorization": f"Bearer {user}"}, {}),
            ({}, {"presence_token": user}),
            ({}, {COOKIE_NAME: "v1.9999999999." + "0" * 64}),
        ]:
            client.cookies.clear()
            for name, value in cookies.items():
                client.cookies.set(name, value)
            response = await client.get("/admin", headers=headers)
            assert response.status_code == 401
            assert 'id="login-form"' in response.text
            assert 'id="rooms"' not in response.text
            assert response.headers["cache-control"] == "no-store"
        response = await client.get("/admin", headers=BEARER)
        assert response.status_code == 200
        assert 'id="rooms"' in response.text


async def test_login_sets_an_admin_cookie_of_its_own(admin_server):
    """The login answers 204 with ``presence_admin``: HttpOnly, SameSite=Strict, Path=/,
    a Max-Age, not Secure over plain http, never the token itself, never the users'
    identity cookie; it opens /admin and the socket, and logout clears it."""
    async with httpx.AsyncClient(base_url=admin_server.http) as client:
        response = await client.post(LOGIN, json={"token": ADMIN_TOKEN})
        assert response.status_code == 204
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}=v1.")
        flags = [part.strip() for part in cookie.split(";")]
        assert {"HttpOnly", "SameSite=Strict", "Path=/", f"Max-Age={CREDENTIAL_TTL}"} <= set(flags)
        assert "Secure" not in flags
        assert ADMIN_TOKEN not in cookie
        assert "presence_token" not in cookie
        credential = client.cookies[COOKIE_NAME]
        assert (await client.get("/admin")).status_code == 200
        async with connect(
            admin_server.ws + ADMIN_WS,
            additional_headers={"cookie": f"{COOKIE_NAME}={credential}"},
        ) as websocket:
            assert (await _recv(websocket))["type"] == "admin.snapshot"
        response = await client.post("/api/v1/admin/logout", headers={"origin": admin_server.http})
        assert response.status_code == 204
        assert "Max-Age=0" in response.headers["set-cookie"]
        assert (await client.get("/admin")).status_code == 401


async def test_the_cookie_is_secure_when_the_service_says_so():
    """With PRESENCE_COOKIE_SECURE (or over https), the admin cookie is Secure."""
    async with serve(make_settings(admin_token=ADMIN_TOKEN, cookie_secure=True)) as server:
        async with httpx.AsyncClient(base_url=server.http) as client:
            response = await client.post(LOGIN, json={"token": ADMIN_TOKEN})
            assert "Secure" in [p.strip() for p in response.headers["set-cookie"].split(";")]


async def test_failed_logins_are_rate_limited(admin_server):
    """After a burst of wrong tokens, the address gets 429 with Retry-After, and the
    right token is refused too until the wait is over."""
    async with httpx.AsyncClient(base_url=admin_server.http) as client:
        for _ in range(LOGIN_BURST):
            response = await client.post(LOGIN, json={"token": "not-the-admin-token"})
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
        response = await client.post(LOGIN, json={"token": ADMIN_TOKEN})
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "rate_limited"
        assert int(response.headers["retry-after"]) >= 1
        assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "malformed_json"),
        (b"[]", {"content-type": "application/json"}, 422, "invalid_body"),
        (
            json.dumps({"token": ADMIN_TOKEN, "user": "x"}).encode(),
            {"content-type": "application/json"},
            422,
            "invalid_body",
        ),
        (b'{"token": 12}', {"content-type": "application/json"}, 401, "unauthorized"),
        (b"token=x", {"content-type": "application/x-www-form-urlencoded"}, 415, None),
        (b'{"token": "' + b"x" * 70_000 + b'"}', {"content-type": "application/json"}, 413, None),
        (
            json.dumps({"token": ADMIN_TOKEN}).encode(),
            {"content-type": "application/json", "origin": "https://evil.example"},
            403,
            "forbidden",
        ),
    ],
    ids=["malformed", "not-object", "unknown-field", "not-string", "form", "too-big", "origin"],
)
async def test_bad_logins_are_refused_clearly(admin_server, body, headers, status, code):
    """A login that is not JSON, not an object, has unknown fields, a token that is not
    a string, a wrong media type, a body over the limit or a foreign Origin is refused
    with its status and a JSON error naming the problem, and sets no cookie."""
    async with httpx.AsyncClient(base_url=admin_server.http) as client:
        response = await client.post(LOGIN, content=body, headers=headers)
        assert response.status_code == status
        assert "set-cookie" not in response.headers
        error = response.json()["error"]
        assert error["message"]
        if code is not None:
            assert error["code"] == code


# -- the socket -------------------------------------------------------------------------


async def test_the_admin_socket_is_refused_without_the_token(admin_server):
    """The admin socket refuses a handshake without a credential, with a wrong bearer,
    with a user's valid token, and from a foreign origin (401, 401, 401, 403)."""
    for headers, status in [
        ({}, 401),
        ({"authorization": "Bearer not-the-admin-token"}, 401),
        ({"authorization": f"Bearer {token('alice')}"}, 401),
        ({**BEARER, "origin": "https://evil.example"}, 403),
    ]:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(admin_server.ws + ADMIN_WS, additional_headers=headers):
                pass
        assert refused.value.response.status_code == status
        assert json.loads(refused.value.response.body)["error"]["code"] in (
            "unauthorized",
            "forbidden",
        )


async def test_a_users_socket_cannot_send_admin_messages(admin_server):
    """An admin.* message on a user's own socket is refused in-band (forbidden), and
    the socket carries on."""
    user = token("alice")
    async with httpx.AsyncClient(
        base_url=admin_server.http, headers={"authorization": f"Bearer {user}"}
    ) as client:
        sid = (await client.post("/api/v1/chat/sessions", json={})).json()["id"]
    url = f"{admin_server.ws}/api/v1/chat/sessions/{sid}/ws?token={user}"
    async with connect(url) as websocket:
        assert (await _recv(websocket))["type"] == "snapshot"
        for kind in ("admin.refresh", "admin.replay"):
            await websocket.send(json.dumps({"type": kind, "id": "x"}))
            error = await _recv(websocket)
            assert error["type"] == "error"
            assert error["code"] == "forbidden"
        await websocket.send(json.dumps({"type": "visibility", "state": "hidden"}))
        assert (await _recv(websocket))["session"]["state"] == "away"


async def test_bad_admin_messages_are_refused_and_the_socket_stays(admin_server):
    """Malformed, non-object, unknown, over-long, binary and badly-fielded admin
    messages each get an in-band error naming the problem; a replay without webhooks
    says they are not configured; the socket stays open for a refresh."""
    async with connect(admin_server.ws + ADMIN_WS, additional_headers=BEARER) as websocket:
        assert (await _recv(websocket))["type"] == "admin.snapshot"
        cases = [
            ("{nope", "malformed_json"),
            ("[1]", "bad_message"),
            (json.dumps({"type": "presence.join", "room": "x"}), "unknown_type"),
            (json.dumps({"type": "admin.refresh", "extra": 1}), "bad_message"),
            (json.dumps({"type": "admin.replay"}), "bad_message"),
            (json.dumps({"type": "admin.replay", "id": 5}), "bad_message"),
            (json.dumps({"type": "admin.replay", "id": "x" * 201}), "bad_message"),
            (json.dumps({"type": "admin.refresh", "pad": "x" * 5000}), "payload_too_large"),
            (b"\x00binary", "bad_message"),
            (json.dumps({"type": "admin.replay", "id": "1-0"}), "webhooks_not_configured"),
        ]
        for text, code in cases:
            await websocket.send(text)
            error = await _until(websocket, lambda m: m["type"] == "error")
            assert error["code"] == code, (text[:40], error)
            assert error["message"]
        await websocket.send(json.dumps({"type": "admin.refresh"}))
        assert (await _until(websocket, lambda m: m["type"] == "admin.snapshot"))["rooms"] == []


async def test_an_admin_socket_that_floods_is_closed():
    """More admin messages than the socket's rate are refused (rate_limited) and the
    socket is closed with a policy violation."""
    settings = make_settings(admin_token=ADMIN_TOKEN, ws_messages_per_second=1.0)
    async with serve(settings.replace(ws_message_burst=3)) as server:
        async with connect(server.ws + ADMIN_WS, additional_headers=BEARER) as websocket:
            await _recv(websocket)
            for _ in range(10):
                with contextlib.suppress(ConnectionClosed):
                    await websocket.send(json.dumps({"type": "admin.refresh"}))
            codes = []
            with contextlib.suppress(ConnectionClosed):
                while True:
                    message = await _recv(websocket)
                    if message["type"] == "error":
                        codes.append(message["code"])
            assert "rate_limited" in codes
            assert websocket.close_code == 1008


# -- what an admin sees, across processes -----------------------------------------------


async def _user_in_room(server, user: str, room: str):
    """A session of ``user`` on ``server`` with its socket open, joined to ``room``."""
    bearer = token(user)
    async with httpx.AsyncClient(
        base_url=server.http, headers={"authorization": f"Bearer {bearer}"}
    ) as client:
        sid = (await client.post("/api/v1/chat/sessions", json={})).json()["id"]
    websocket = await connect(f"{server.ws}/api/v1/chat/sessions/{sid}/ws?token={bearer}")
    assert (await _recv(websocket))["type"] == "snapshot"
    meta = {"name": user.title(), "bio": "x" * 500}
    await websocket.send(json.dumps({"type": "presence.join", "room": room, "meta": meta}))
    await _until(websocket, lambda m: m["type"] == "presence.sync")
    return websocket


@pytest.mark.slow
async def test_an_admin_sees_every_process_and_rooms_change_live(redis_url):
    """Two real processes on one real Redis: the admin socket on the first lists both
    processes with their sockets and lease ages, the store ready, and this minute's
    sample summed over both; a user joining a room on the second shows in the room's
    members, and their socket closing shows them gone, with the reason, as an event."""
    env = {
        "REDIS_URL": redis_url,
        "PRESENCE_JWT_SECRET": JWT_SECRET,
        "PRESENCE_ADMIN_TOKEN": ADMIN_TOKEN,
        "PRESENCE_OFFLINE_GRACE": str(5 * UNIT),
        "PRESENCE_OPEN_ROOMS": "true",
        "LOG_LEVEL": "warning",
    }
    with server_process(env) as first, server_process(env) as second:
        ada = await _user_in_room(second, "ada", "general")
        bob = await _user_in_room(second, "bob", "general")
        async with connect(first.ws + ADMIN_WS, additional_headers=BEARER) as admin:
            # Both processes' snapshots, with two sockets on the second.
            def both(message):
                status = message.get("status") or {}
                procs = status.get("processes", [])
                # The series' last minute sums what each process has published in it:
                # just past a minute's turn, one process may not have yet.
                last = (status.get("series") or [{}])[-1]
                return (
                    len(procs) == 2
                    and sorted(p["sockets"] for p in procs) == [0, 2]
                    and (last.get("sockets"), last.get("users")) == (2, 2)
                )

            status = (await _until(admin, both))["status"]
            assert status["store"]["status"] == "ready"
            assert status["store"]["pending_writes"] == 0
            assert status["webhooks"]["health"]["configured"] is False
            for proc in status["processes"]:
                assert proc["lease_age"] is not None and 0 <= proc["lease_age"] < 5
            assert [p["self"] for p in status["processes"]].count(True) == 1
            assert status["series"][-1]["sockets"] == 2
            assert status["series"][-1]["users"] == 2

            def general_with(*users):
                def holds(message):
                    rooms = message.get("rooms") or (
                        [message] if message["type"] == "admin.room" else []
                    )
                    for room in rooms:
                        if room["room"] == "general":
                            return sorted(m["user"] for m in room["members"]) == sorted(users)
                    return False

                return holds

            await admin.send(json.dumps({"type": "admin.refresh"}))
            room = await _until(admin, general_with("ada", "bob"))
            assert room["type"] in ("admin.snapshot", "admin.room")
            (general,) = [r for r in room.get("rooms", [room]) if r["room"] == "general"]
            assert general["count"] == 2
            for member in general["members"]:
                # A meta is the client's (up to a KiB): an admin gets its name alone.
                assert set(member) == {"user", "status", "sessions", "since", "name"}
                assert member["name"] == member["user"].title()

            await bob.close()
            seen: list[dict] = []

            def gone(message):
                seen.append(message)
                return any(general_with("ada")(m) for m in seen) and any(
                    m["type"] == "admin.event" and m["event"]["kind"] == "member.left" for m in seen
                )

            await _until(admin, gone)
            (left,) = [m["event"] for m in seen if m["type"] == "admin.event"]
            assert left == {**left, "room": "general", "user": "bob", "reason": "closed"}
            carol = await _user_in_room(second, "carol", "general")
            joined = await _until(
                admin,
                lambda m: m["type"] == "admin.event" and m["event"]["kind"] == "member.joined",
            )
            assert joined["event"]["user"] == "carol"
            await carol.close()
        await ada.close()


@pytest.mark.slow
async def test_the_store_state_is_shown_through_an_outage(own_redis):
    """Redis stopped (SIGSTOP): the admin sees the store degraded, serving from memory
    with the journal's length, and this process alone; Redis back: ready, nothing
    pending, and the board's processes and series again."""
    settings = make_settings(redis_url=own_redis.url, admin_token=ADMIN_TOKEN)
    async with serve(settings) as server:
        user = {"authorization": f"Bearer {token('alice')}"}
        async with (
            httpx.AsyncClient(base_url=server.http, headers=user, timeout=WAIT) as client,
            connect(server.ws + ADMIN_WS, additional_headers=BEARER) as admin,
        ):
            first = await _recv(admin)
            assert first["status"]["store"] == {**first["status"]["store"], "status": "ready"}
            own_redis.pause()
            try:
                # Writes while Redis is away go to the journal.
                for _ in range(3):
                    response = await client.post("/api/v1/chat/sessions", json={})
                    assert response.status_code in (201, 503)

                def degraded(message):
                    store = (message.get("status") or {}).get("store", {})
                    return store.get("status") == "degraded" and store.get("pending_writes", 0) > 0

                status = (await _until(admin, degraded))["status"]
                assert status["store"]["store"] == "memory"
                assert [p["self"] for p in status["processes"]] == [True]
            finally:
                own_redis.resume()

            def ready(message):
                store = (message.get("status") or {}).get("store", {})
                return store.get("status") == "ready" and store.get("pending_writes") == 0

            status = (await _until(admin, ready))["status"]
            assert status["store"]["store"] == "redis"
            assert status["series"]


async def test_the_document_names_the_admin_api_while_it_is_on(admin_server):
    """With PRESENCE_ADMIN_TOKEN set, /openapi.json documents the login, the logout and
    the admin socket with their security, and still validates."""
    import schemathesis

    async with httpx.AsyncClient(base_url=admin_server.http) as client:
        served = (await client.get("/openapi.json")).json()
    schemathesis.openapi.from_dict(served).validate()
    routes = {"/api/v1/admin/login", "/api/v1/admin/logout", "/api/v1/admin/ws"}
    assert routes <= set(served["paths"])
    assert served["paths"]["/api/v1/admin/login"]["post"]["security"] == []
    assert {"adminToken", "adminCookie"} <= set(served["components"]["securitySchemes"])


@pytest.mark.slow
async def test_dead_letters_are_listed_and_replayed_over_the_admin_socket(redis_url):
    """With real Redis streams: a receiver that refuses past the retry hours leaves dead
    letters that admin.status lists (with the error, the receiver by host alone); an
    admin.replay of one delivers its event and answers admin.replayed; an unknown or
    malformed id is dead_letter_not_found."""
    from .test_webhooks import SECRET, receiving

    async with receiving() as receiver:
        receiver.status = 500
        settings = make_settings(
            redis_url=redis_url,
            admin_token=ADMIN_TOKEN,
            webhook_urls=(receiver.url,),
            webhook_secret=SECRET,
            webhook_retry=20 * UNIT,
        )
        async with serve(settings) as server:
            user = {"authorization": f"Bearer {token('carol')}"}
            async with httpx.AsyncClient(base_url=server.http, headers=user) as client:
                sid = (await client.post("/api/v1/chat/sessions", json={})).json()["id"]
                await client.delete(f"/api/v1/chat/sessions/{sid}")
            async with connect(server.ws + ADMIN_WS, additional_headers=BEARER) as admin:

                def dead(message):
                    webhooks = (message.get("status") or {}).get("webhooks", {})
                    return bool(webhooks.get("dead_letters"))

                status = (await _until(admin, dead, within=300 * UNIT))["status"]
                health = status["webhooks"]["health"]
                assert health["configured"] is True and health["durable"] is True
                (receiving_url,) = health["receivers"]
                assert "url" not in receiving_url
                assert "query-token" not in json.dumps(status)
                letter = status["webhooks"]["dead_letters"][0]
                assert letter["type"] == "session.ended"
                assert letter["error"] == "HTTP 500"
                assert letter["id"].startswith("0/")

                receiver.status = 200
                await admin.send(json.dumps({"type": "admin.replay", "id": letter["id"]}))
                answer = await _until(admin, lambda m: m["type"] in ("admin.replayed", "error"))
                assert answer == {"type": "admin.replayed", "id": letter["id"]}
                await receiver.wait_for(lambda: letter["event"] in receiver.events, WAIT)

                for wrong in (letter["id"], "0/1-1", "9/1-0", "nope"):
                    await admin.send(json.dumps({"type": "admin.replay", "id": wrong}))
                    error = await _until(admin, lambda m: m["type"] == "error")
                    assert error["code"] == "dead_letter_not_found", wrong
