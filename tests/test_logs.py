"""No session id, token or cookie value ever appears in a log line.

Every endpoint and the socket are driven with real ids, tokens and cookies (accepted and
refused, through every error path), against a real server process logging at debug
level, and in-process with every logger captured at debug level; then the logs are
searched for each secret, and for any 8 characters of one in a row, since a truncated
secret leaks as surely as a whole one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from dataclasses import dataclass, field

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from presence.settings import Settings

from .utils import JWT_SECRET, UNIT, make_settings, serve, server_process, token

BASE = "/api/v1/chat"
WINDOW = 8
# The test's own clients log what they send and receive; they are not the server.
CLIENT_LOGGERS = ("httpx", "httpcore", "websockets.client")


@dataclass
class Secrets:
    """What must never be logged, collected while driving a server."""

    values: set[str] = field(default_factory=set)

    def add(self, *values: str) -> None:
        self.values.update(v for v in values if v)

    def leaks(self, log: str) -> list[str]:
        """The lines of ``log`` that show a secret whole or in part (any 8 characters
        of it in a row)."""
        windows = set()
        for secret in self.values:
            # A JWT's header segment is the same for every token; its payload and
            # signature are what identify and prove.
            part = secret.split(".", 1)[1] if secret.count(".") == 2 else secret
            windows.update(part[i : i + WINDOW] for i in range(len(part) - WINDOW + 1))
        return [line for line in log.splitlines() if any(w in line for w in windows)]


async def _drive(http: str, ws: str, *, dev_mode: bool) -> Secrets:
    """Calls every endpoint and opens sockets with real credentials and ids, including
    every refusal, and returns what must not be logged."""
    secrets = Secrets()
    origin = http
    forged = token("alice", secret="f" * 40)
    expired = token("alice", expires_in=-60)
    secrets.add(forged, expired)

    async with httpx.AsyncClient(base_url=http + BASE) as client:
        if dev_mode:
            # The server mints the identity: its cookie is the token from here on.
            minted = await client.post("/sessions", headers={"origin": origin})
            assert minted.status_code == 201
            user_token = minted.cookies["presence_token"]
            secrets.add(minted.json()["id"])
            client.cookies.clear()
        else:
            user_token = token("alice")
        secrets.add(user_token)
        bearer = {"authorization": f"Bearer {user_token}"}
        cookie_token = user_token
        cookie = {"cookie": f"presence_token={cookie_token}", "origin": origin}
        for headers in (bearer, cookie):
            created = await client.post("/sessions", json={"data": {"n": 1}}, headers=headers)
            assert created.status_code == 201, created.text
            sid = created.json()["id"]
            secrets.add(sid)
            for method, path, body in [
                ("GET", "/sessions", None),
                ("GET", f"/sessions/{sid}", None),
                ("POST", f"/sessions/{sid}/heartbeat", {"state": "away"}),
                ("POST", f"/sessions/{sid}/heartbeat", {"state": "asleep"}),
                ("POST", "/sessions/cleanup", {"type": "specific", "session_ids": [sid, "x"]}),
                ("POST", "/sessions/cleanup", {"type": "inactive"}),
                ("DELETE", f"/sessions/{sid}", None),
                ("GET", f"/sessions/{sid}", None),
                ("POST", f"/sessions/{sid}/heartbeat", None),
            ]:
                await client.request(method, path, json=body, headers=headers)
            await client.post(
                "/sessions/cleanup",
                content=b'{"type": "all", "pad": "' + b"x" * 70_000 + b'"}',
                headers={**headers, "content-type": "text/plain"},
            )
            await client.post("/sessions/cleanup", data={"type": "all"}, headers=headers)
            await client.post(
                "/sessions/cleanup",
                content=f'{{"type": "specific", "session_ids": ["{sid}"'.encode(),
                headers=headers,
            )
        # Refusals: a foreign origin with the cookie, forged, expired and misplaced tokens.
        await client.post(
            "/sessions/cleanup",
            json={"type": "all"},
            headers={**cookie, "origin": "https://app.example.com.evil.com"},
        )
        for bad in (forged, expired):
            await client.get("/sessions", headers={"authorization": f"Bearer {bad}"})
            await client.get("/sessions", headers={"cookie": f"presence_token={bad}"})
        await client.get(f"/sessions?token={user_token}")
        await client.get(f"/session/{sid}?token={user_token}")  # no such route
        await client.put(f"/sessions/{sid}", headers=bearer)  # 405

        # Sockets: by query token and by cookie, refused ones, and one ended by a delete.
        sid = (await client.post("/sessions", headers=bearer)).json()["id"]
        secrets.add(sid)
        url = f"{ws}{BASE}/sessions/{sid}/ws"
        async with connect(f"{url}?token={user_token}", ping_interval=None) as websocket:
            await websocket.recv()
            await websocket.send(json.dumps({"type": "visibility", "state": "hidden"}))
            await websocket.recv()
            await websocket.send(f'{{"type": "{sid}"}}')
            await websocket.recv()
        async with connect(
            url,
            additional_headers={"cookie": f"presence_token={cookie_token}"},
            origin=origin,
            ping_interval=None,
        ) as websocket:
            await websocket.recv()
            await client.delete(f"/sessions/{sid}", headers=cookie)
            await websocket.recv()  # ended
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(websocket.recv(), timeout=20 * UNIT)
        for refused_url, kwargs in [
            (f"{url}?token={user_token}", {}),  # the session is gone: 404
            (f"{url}?token={forged}", {}),
            (url, {"additional_headers": {"cookie": f"presence_token={cookie_token}"}}),
            (f"{url}?token={user_token}", {"origin": "https://evil.example"}),
        ]:
            with pytest.raises(InvalidStatus):
                async with connect(refused_url, ping_interval=None, **kwargs):
                    pass
        # A socket closed for sending too much.
        sid = (await client.post("/sessions", headers=bearer)).json()["id"]
        secrets.add(sid)
        async with connect(
            f"{ws}{BASE}/sessions/{sid}/ws?token={user_token}", ping_interval=None, max_size=None
        ) as websocket:
            await websocket.recv()
            await websocket.send(sid * 4000)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(websocket.recv(), timeout=20 * UNIT)

    async with httpx.AsyncClient(base_url=http) as client:
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert (await client.get(path)).status_code == 200
    return secrets


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["jwt", "dev"])
async def test_a_server_process_at_debug_level_logs_no_secret(redis_url, mode):
    """A real server process over Redis at LOG_LEVEL=debug, driven through every
    endpoint and the socket, writes no session id, token or cookie value to its log."""
    env = {"REDIS_URL": redis_url, "LOG_LEVEL": "debug", "HEARTBEAT_INTERVAL": "1"}
    if mode == "jwt":
        env["PRESENCE_JWT_SECRET"] = JWT_SECRET
    with server_process(env) as server:
        secrets = await _drive(server.http, server.ws, dev_mode=mode == "dev")
        await asyncio.sleep(15 * UNIT)  # a refresher tick and a ping or two
        assert server.process is not None
        server.process.send_signal(signal.SIGINT)  # the shutdown lines too
        server.process.wait(timeout=100 * UNIT)
        server.process = None
        log = server.log.read_text()
    assert " DEBUG " in log and "{session_id}" in log  # debug was on, requests were logged
    assert secrets.leaks(log) == []


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_in_process_records_at_debug_level_hold_no_secret(request, caplog, store):
    """Every record the server side emits in-process at DEBUG (uvicorn's, websockets',
    redis-py's, asyncio's and ours, messages and tracebacks alike) holds no session id,
    token or cookie value."""
    caplog.set_level(logging.DEBUG)
    changes = {}
    if store == "redis":
        changes["redis_url"] = request.getfixturevalue("redis_url")
    for settings, dev_mode in [
        (make_settings(**changes), False),
        (Settings(port=0, **changes), True),
    ]:
        async with serve(settings) as server:
            secrets = await _drive(server.http, server.ws, dev_mode=dev_mode)
        lines = [
            caplog.handler.format(record)
            for record in caplog.records
            if not record.name.startswith(CLIENT_LOGGERS)
        ]
        # Debug was on where it matters: websockets' frame and header lines were emitted.
        assert any(r.name == "uvicorn.error" and r.levelno == logging.DEBUG for r in caplog.records)
        assert any("{session_id}" in line for line in lines)
        assert secrets.leaks("\n".join(lines)) == []


async def test_the_access_log_steps_aside_while_it_is_off(caplog):
    """With presence.access off for INFO, a socket goes straight to the app, with no
    wrapper frame held for its life, and a request is measured but not logged; turned
    on later, it logs again."""
    from presence import metrics
    from presence.asgi.app import AccessLog

    calls = []

    async def inner(scope, receive, send):
        calls.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204})

    async def send(message):
        pass

    middleware = AccessLog(inner)
    scope = {"type": "http", "method": "GET", "path": "/healthz", "client": ("1.2.3.4", 1)}
    socket_scope = {**scope, "type": "websocket"}
    caplog.set_level(logging.WARNING, logger="presence.access")
    handed = middleware(socket_scope, None, send)
    assert handed.cr_code is inner.__code__  # The app's own coroutine, unwrapped.
    await handed
    measured = metrics.HTTP_REQUESTS.labels("GET", "(no route)", "204")
    before = _histogram_count(measured)
    await middleware(scope, None, send)
    assert _histogram_count(measured) == before + 1
    assert not [r for r in caplog.records if r.name == "presence.access"]
    caplog.set_level(logging.INFO, logger="presence.access")
    await middleware(scope, None, send)
    assert calls == ["websocket", "http", "http"]
    lines = [r.getMessage() for r in caplog.records if r.name == "presence.access"]
    assert lines == [lines[0]] and '"GET (no route)" 204 ' in lines[0]


def _histogram_count(child) -> float:
    return next(s.value for m in child.collect() for s in m.samples if s.name.endswith("_count"))


# -- Log forging ------------------------------------------------------------------------

# Text a request can carry that would forge a line or rewrite a terminal: CR, LF, ESC
# sequences, NUL, DEL, a C1 control, Unicode line separators and a bidi override.
FORGERIES = ["%0d", "%0a", "%0d%0a", "%1b[31m", "%1b]0;owned%07", "%00", "%7f", "%c2%85",
             "%e2%80%a8", "%e2%80%ae"]  # fmt: skip
_LINE_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


async def test_request_controlled_text_never_forges_a_log_line():
    """Paths full of CR, LF, terminal escapes and Unicode separators, sent to the static
    files, unknown paths, the API and the socket of a real server process at debug level,
    leave a log in which every line starts a record (or is an indented traceback line)
    and no control character but the line ends appears."""
    env = {"LOG_LEVEL": "debug", "PRESENCE_JWT_SECRET": JWT_SECRET}
    with server_process(env) as server:
        bearer = {"authorization": f"Bearer {token('alice')}"}
        async with httpx.AsyncClient(base_url=server.http, timeout=50 * UNIT) as client:
            for forgery in FORGERIES:
                text = f"x{forgery}2026-01-01%2000:00:00,000%20ERROR%20presence:%20forged"
                for path in (
                    f"/static/src/{text}",
                    f"/static/demo/{text}.js",
                    f"/{text}",
                    f"{BASE}/sessions/{text}",
                    f"{BASE}/sessions/{text}/heartbeat",
                    f"/healthz?{text}",
                ):
                    response = await client.get(path, headers=bearer)
                    assert response.status_code < 500
                with pytest.raises(InvalidStatus):
                    async with connect(f"{server.ws}/{text}/ws?token={token('alice')}"):
                        pass
                with pytest.raises(InvalidStatus):
                    async with connect(f"{server.ws}{BASE}/sessions/{text}/ws"):
                        pass
        assert server.process is not None
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=100 * UNIT)
        server.process = None
        raw = server.log.read_bytes()
    log = raw.decode()
    unsafe = [
        line
        for line in log.splitlines()
        if re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]", line)
    ]
    assert unsafe == []
    assert b"\r" not in raw
    stray = [
        line for line in log.splitlines() if not (_LINE_START.match(line) or line.startswith("  "))
    ]
    assert stray == []
    assert "forged" not in "".join(line for line in log.splitlines() if " ERROR " in line)
    assert "/static/src/{path}" in log  # the requests were logged, by template


def test_the_formatter_escapes_messages_and_indents_tracebacks():
    """A record whose message and exception carry line breaks and escapes is written as
    one line, with its traceback's lines indented and escaped."""
    from presence.logs import SafeFormatter

    formatter = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        raise ValueError("bad\npath\x1b[31m\r\nWARNING presence: forged")
    except ValueError:
        record = logging.LogRecord(
            "presence", logging.ERROR, __file__, 1, "got %s", ("a\r\nERROR x: y\u2028",), True
        )
        import sys

        record.exc_info = sys.exc_info()
    lines = formatter.format(record).splitlines()
    assert lines[0] == "ERROR presence: got a\\x0d\\x0aERROR x: y\\u2028"
    assert all(line.startswith("  ") for line in lines[1:])
    assert "\x1b" not in "".join(lines) and "\\x1b[31m" in lines[-2] + lines[-1]


# -- LOG_FORMAT=json ---------------------------------------------------------------------


@pytest.mark.slow
async def test_json_logs_are_one_object_a_line_with_the_request_fields(redis_url):
    """A real server process at LOG_FORMAT=json and LOG_LEVEL=debug, driven through
    every endpoint and the socket and sent request-controlled control characters, writes
    only lines that are each one JSON object with time, level, logger and message; the
    access lines carry method, route template, status and duration; no session id,
    token or cookie value is in any of it."""
    env = {
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "json",
        "PRESENCE_JWT_SECRET": JWT_SECRET,
    }
    with server_process(env) as server:
        secrets = await _drive(server.http, server.ws, dev_mode=False)
        async with httpx.AsyncClient(base_url=server.http) as client:
            for forgery in FORGERIES:
                await client.get(f"/x{forgery}%20ERROR%20presence:%20forged")
        assert server.process is not None
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=100 * UNIT)
        server.process = None
        raw = server.log.read_bytes()
    assert raw.isascii() and b"\r" not in raw
    entries = [json.loads(line) for line in raw.decode().splitlines()]
    assert all(isinstance(entry, dict) for entry in entries)
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    levels = {entry["level"] for entry in entries}
    assert "debug" in levels and "info" in levels
    heartbeat = [e for e in entries if e.get("route") == f"{BASE}/sessions/{{session_id}}"]
    assert heartbeat and all(
        e["logger"] == "presence.access"
        and e["method"] in {"GET", "DELETE", "POST", "PUT", "PATCH", "HEAD", "OPTIONS"}
        and isinstance(e["status"], int)
        and isinstance(e["duration_ms"], float)
        for e in heartbeat
    )
    assert any(e.get("route") == "(no route)" for e in entries)
    assert secrets.leaks(raw.decode()) == []
    assert not any("forged" in e["message"] and e["level"] == "error" for e in entries)


def test_the_json_formatter_writes_an_exception_and_escapes_everything():
    """An exception goes into "exception"; CR, LF, escapes and separators are JSON
    escapes; the line is ASCII."""
    import sys

    from presence.logs import JsonFormatter

    try:
        raise ValueError("bad\npath\x1b[31m")
    except ValueError:
        record = logging.LogRecord(
            "presence", logging.ERROR, __file__, 1, "got %s", ("a\r\nb\u2028",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line and line.isascii()
    entry = json.loads(line)
    assert entry["message"] == "got a\r\nb\u2028" and entry["level"] == "error"
    assert "ValueError: bad\npath\x1b[31m" in entry["exception"]


def test_a_bad_log_format_is_refused():
    """LOG_FORMAT other than plain or json stops start-up, naming the variable."""
    from presence.exceptions import ConfigError

    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "xml"})
    assert Settings.from_env({"LOG_FORMAT": "JSON"}).log_format == "json"


# -- Health: /readyz says what is wrong ---------------------------------------------------


async def _ready(base: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{base}/readyz")


@pytest.mark.parametrize("degraded_status", [200, 503])
async def test_readyz_says_since_when_redis_is_unreachable_and_the_journal(
    own_redis, degraded_status
):
    """Redis stopped: /readyz is degraded, says since when Redis is unreachable and how
    many writes the journal holds, with PRESENCE_READYZ_DEGRADED_STATUS's status; Redis
    back: ready, 200, and no problem once the journal is written back."""
    settings = make_settings(
        redis_url=own_redis.url, redis_timeout=UNIT, readyz_degraded_status=degraded_status
    )
    async with serve(settings) as running:
        base = running.http
        response = await _ready(base)
        assert response.status_code == 200 and "problem" not in response.json()
        headers = {"authorization": f"Bearer {token('ann')}"}
        async with httpx.AsyncClient(base_url=base + BASE, headers=headers) as client:
            sid = (await client.post("/sessions")).json()["id"]
            own_redis.kill()
            assert (await client.post(f"/sessions/{sid}/heartbeat")).status_code == 200
        response = await _ready(base)
        ready = response.json()
        assert response.status_code == degraded_status
        assert ready["status"] == "degraded" and ready["store"] == "memory"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ready["unreachable_since"])
        assert ready["problem"].startswith(f"Redis unreachable since {ready['unreachable_since']}")
        assert "journal of 1 write " in ready["problem"]
        own_redis.start()
        async with asyncio.timeout(100 * UNIT):
            while True:
                response = await _ready(base)
                if "problem" not in response.json():
                    break
                await asyncio.sleep(UNIT)
        assert response.status_code == 200 and response.json()["status"] == "ready"


@pytest.mark.parametrize("degraded_status", [200, 503])
async def test_readyz_says_redis_refused_the_password(own_redis, degraded_status):
    """Redis taking another password at run time: /readyz is degraded and its problem
    says Redis refused the password (never the password itself), with
    PRESENCE_READYZ_DEGRADED_STATUS's status."""
    import redis

    password = "the-password-of-this-test"
    with redis.Redis(port=own_redis.port) as admin:
        admin.config_set("requirepass", password)
    url = f"redis://:{password}@127.0.0.1:{own_redis.port}/0"
    settings = make_settings(redis_url=url, readyz_degraded_status=degraded_status)
    async with serve(settings) as running:
        assert (await _ready(running.http)).status_code == 200
        with redis.Redis(port=own_redis.port, password=password) as admin:
            admin.config_set("requirepass", "another-password-entirely")
            admin.client_kill_filter(_type="normal", skipme=True)
        headers = {"authorization": f"Bearer {token('ann')}"}
        async with httpx.AsyncClient(base_url=running.http + BASE, headers=headers) as client:
            assert (await client.post("/sessions")).status_code == 503
        response = await _ready(running.http)
        ready = response.json()
        assert response.status_code == degraded_status
        assert ready["status"] == "degraded"
        assert "Redis refused the user name or password in REDIS_URL" in ready["problem"]
        assert "another-password" not in response.text and password not in response.text
        with redis.Redis(port=own_redis.port, password="another-password-entirely") as admin:
            admin.config_set("requirepass", password)
        response = await _ready(running.http)
        assert response.status_code == 200 and "problem" not in response.json()


def test_a_readyz_status_other_than_200_or_503_is_refused():
    """PRESENCE_READYZ_DEGRADED_STATUS takes 200 or 503 only."""
    from presence.exceptions import ConfigError

    for raw in ("500", "ok", "204"):
        with pytest.raises(ConfigError, match="PRESENCE_READYZ_DEGRADED_STATUS"):
            Settings.from_env({"PRESENCE_READYZ_DEGRADED_STATUS": raw})
    assert (
        Settings.from_env({"PRESENCE_READYZ_DEGRADED_STATUS": "503"}).readyz_degraded_status == 503
    )
