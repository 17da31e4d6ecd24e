"""A Redis that answers but refuses the service is a configuration error, not an outage.

At start-up (a real ``presence serve`` child process), a password Redis refuses, an ACL
without a command, key pattern or channel the service needs, and TLS that cannot work
(a certificate not trusted or for another host, TLS against a plaintext port or
plaintext against a TLS port) stop the process with one line naming ``REDIS_URL`` and
the cause. At run time (a real server in this process), a password changed or an ACL
revoked is answered 503 ``store_misconfigured``, logged once in a while, and said by
``/readyz``; nothing is served from memory as if Redis were away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from websockets.asyncio.client import connect

from presence.exceptions import ConfigError
from presence.stores import FallbackStore, MemoryStore, RedisStore

from .utils import (
    JWT_SECRET,
    UNIT,
    RedisServer,
    ServerProcess,
    free_port,
    make_settings,
    redis_binary,
    serve,
    server_process,
    token,
)

pytestmark = pytest.mark.redis

BASE = "/api/v1/chat"
HANG = 30 * UNIT
PASSWORD = "s3cret-password"
# Everything the service needs of an ACL user: its commands, the key prefix, the channel.
NEEDED = [
    "~presence:*",
    "&presence:*",
    *(
        f"+{command}"
        for command in (
            "ping evalsha script|load subscribe publish time get set del exists pexpire "
            "pttl zadd zrem zcard zscore zrange zrevrange zrangebyscore zremrangebyscore "
            "hset hget hgetall hexists hlen hincrby hdel persist incr sadd sscan hmget hkeys"
        ).split()
    ),
]


@pytest.fixture
def make_server(request) -> Iterator[Callable[..., RedisServer]]:
    """A factory of started redis-servers with extra arguments, each of one test alone."""
    if redis_binary() is None:
        request.getfixturevalue("own_redis")  # skips (or fails under CI) with the reason
    started: list[RedisServer] = []

    def factory(*args: str) -> RedisServer:
        server = RedisServer()
        server.extra_args = list(args)
        started.append(server)
        server.start()
        return server

    yield factory
    for server in started:
        server.stop()


def _admin(server: RedisServer, password: str | None = None) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=password)


def _require_password(server: RedisServer, password: str) -> None:
    # Set once started: RedisServer knows a started server by a PING that needs none.
    with _admin(server) as admin:
        admin.config_set("requirepass", password)


def _acl_user(server: RedisServer, *rules: str) -> str:
    """Makes the ACL user ``presence`` with ``rules`` and returns its URL."""
    with _admin(server) as admin:
        admin.execute_command("ACL", "SETUSER", "presence", "reset", "on", f">{PASSWORD}", *rules)
    return f"redis://presence:{PASSWORD}@127.0.0.1:{server.port}/0"


def _env(url: str) -> dict[str, str]:
    return {"REDIS_URL": url, "PRESENCE_JWT_SECRET": JWT_SECRET, "LOG_LEVEL": "info"}


def _start_up_fails(url: str, *, also: str) -> str:
    """Starts ``presence serve`` on ``url`` and returns the line naming REDIS_URL, having
    checked that the process exits non-zero, with that one line, no traceback, no
    password, and the words ``also``."""
    process = ServerProcess(_env(url))
    try:
        with pytest.raises(RuntimeError) as failed:
            process.start()
    finally:
        process.stop()
    log = str(failed.value)
    assert process.process is None or process.process.returncode != 0
    assert "Traceback" not in log, log
    assert PASSWORD not in log
    lines = [line for line in log.splitlines() if "REDIS_URL" in line]
    assert len(lines) == 1, log
    assert "configuration error" in lines[0] and also in lines[0], lines[0]
    return lines[0]


# --- At start-up: the password ---------------------------------------------------------


@pytest.mark.parametrize(
    ("userinfo", "cause"),
    [
        ("", "requires a password and REDIS_URL gives none"),
        (":wrong-one@", "refused the user name or password"),
        ("nobody:wrong-one@", "refused the user name or password"),
    ],
    ids=["none-given", "wrong", "unknown-user"],
)
def test_a_password_redis_refuses_stops_start_up_naming_redis_url(make_server, userinfo, cause):
    """A password missing or wrong, or a user Redis does not know, stops `presence
    serve` with one line naming REDIS_URL and the cause, where it used to serve from
    memory for good with /readyz saying only "degraded"."""
    server = make_server()
    _require_password(server, "a-different-password")
    line = _start_up_fails(f"redis://{userinfo}127.0.0.1:{server.port}/0", also=cause)
    assert f"127.0.0.1:{server.port}" in line


# --- At start-up: the ACL --------------------------------------------------------------


@pytest.mark.parametrize(
    ("without", "named"),
    [
        ("-zadd", "ZADD"),
        ("-pexpire", "PEXPIRE"),
        ("-publish", "PUBLISH"),
        ("-subscribe", "subscribe"),
        ("-evalsha", "evalsha"),
        ("-script|load", "script|load"),
        ("-ping", "ping"),
        ("-hgetall", "HGETALL"),
        ("-sadd", "SADD"),
        ("resetchannels", "PUBLISH"),
        ("resetkeys", "keys"),
    ],
)
def test_an_acl_without_something_the_service_needs_stops_start_up(make_server, without, named):
    """An ACL user lacking a command the scripts run, EVALSHA, SCRIPT LOAD, SUBSCRIBE,
    PING, the key prefix or the channel stops `presence serve` naming REDIS_URL and
    what is missing, before a request meets it half-way through a script."""
    server = make_server()
    url = _acl_user(server, *NEEDED, without)
    line = _start_up_fails(url, also="ACL")
    assert named.lower() in line.lower(), line


async def test_an_acl_with_just_what_the_service_needs_starts_and_serves(make_server):
    """The permissions listed in NEEDED (and in the README) are enough: the server
    starts, is ready, and serves every operation (the self-check leaves no key
    behind)."""
    server = make_server()
    url = _acl_user(server, *NEEDED)
    with server_process(_env(url)) as process:
        async with httpx.AsyncClient(base_url=process.http, timeout=HANG) as client:
            assert (await client.get("/readyz")).json()["status"] == "ready"
            auth = {"authorization": f"Bearer {token('alice')}"}
            for _ in range(2):  # the lone slot, then a key of its own and the index
                created = await client.post(f"{BASE}/sessions", headers=auth)
                assert created.status_code == 201, created.text
            sid = created.json()["id"]
            for method, path, body in [
                ("POST", f"/sessions/{sid}/heartbeat", {"state": "away"}),
                ("GET", "/sessions", None),
                ("GET", f"/sessions/{sid}", None),
                ("POST", "/sessions/cleanup", {"type": "inactive"}),
                ("DELETE", f"/sessions/{sid}", None),
                ("POST", "/sessions/cleanup", {"type": "all"}),
            ]:
                response = await client.request(method, BASE + path, json=body, headers=auth)
                assert response.status_code < 300, (method, path, response.text)
    with _admin(server) as admin:
        assert not [key for key in admin.keys("*") if b"selfcheck" in key]


# --- At start-up: TLS ------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    """A self-signed certificate for localhost (and its key beside it)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=300 * UNIT,
    )  # fmt: skip
    return folder / "cert.pem"


@pytest.fixture
def make_tls_server(make_server, certificate) -> Callable[..., tuple[RedisServer, int]]:
    """A factory of redis-servers with a plaintext port and a TLS port (its port is
    returned beside the server), asking for client certificates or not."""
    binary = redis_binary()
    assert binary is not None
    probe = subprocess.run(
        [binary, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=100 * UNIT,
        check=False,
    )
    if "Bad directive" in probe.stdout + probe.stderr:
        pytest.skip("this redis-server is built without TLS")

    def factory(*, client_certificates: bool = False) -> tuple[RedisServer, int]:
        tls_port = free_port()
        server = make_server(
            "--tls-port", str(tls_port), "--tls-cert-file", str(certificate),
            "--tls-key-file", str(certificate.with_name("key.pem")),
            "--tls-ca-cert-file", str(certificate),
            "--tls-auth-clients", "yes" if client_certificates else "no",
        )  # fmt: skip
        return server, tls_port

    return factory


@pytest.fixture
def tls_server(make_tls_server) -> tuple[RedisServer, int]:
    """A redis-server with a plaintext port and a TLS port (no client certificates)."""
    return make_tls_server()


def test_a_tls_certificate_that_is_not_trusted_stops_start_up(tls_server):
    """rediss:// to a server whose certificate no trusted CA signed stops start-up
    naming the certificate."""
    _, tls_port = tls_server
    _start_up_fails(f"rediss://localhost:{tls_port}/0", also="certificate is not trusted")


def test_a_tls_certificate_for_another_host_stops_start_up(tls_server, certificate):
    """rediss:// to an address the certificate is not for (127.0.0.1, not localhost)
    stops start-up naming the mismatch."""
    _, tls_port = tls_server
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certificate}"
    _start_up_fails(url, also="not valid for the host")


def test_tls_against_a_plaintext_port_stops_start_up(tls_server, certificate):
    """rediss:// to a plaintext port (the TLS handshake is never answered, which looks
    like Redis away) is recognised and named."""
    server, _ = tls_server
    url = f"rediss://localhost:{server.port}/0?ssl_ca_certs={certificate}"
    _start_up_fails(url, also="speaks plaintext")


def test_plaintext_against_a_tls_port_stops_start_up(tls_server):
    """redis:// to a TLS port (reset, which looks like Redis away) is recognised and
    named."""
    _, tls_port = tls_server
    _start_up_fails(f"redis://localhost:{tls_port}/0", also="speaks TLS")


def test_a_tls_server_asking_for_a_client_certificate_stops_start_up_without_one(
    make_tls_server, certificate
):
    """A TLS port that asks for a client certificate stops start-up naming it when
    REDIS_URL gives none, and is recognised as TLS by a plaintext client too."""
    _, tls_port = make_tls_server(client_certificates=True)
    url = f"rediss://localhost:{tls_port}/0?ssl_ca_certs={certificate}"
    _start_up_fails(url, also="client certificate")
    _start_up_fails(f"redis://localhost:{tls_port}/0", also="speaks TLS")


@pytest.mark.parametrize("client_certificates", [False, True], ids=["server-only", "mutual"])
async def test_tls_with_the_ca_named_starts_and_is_ready(
    make_tls_server, certificate, client_certificates
):
    """rediss:// with the CA named in ssl_ca_certs (and a client certificate, to a
    server that asks for one) is accepted end to end."""
    _, tls_port = make_tls_server(client_certificates=client_certificates)
    url = f"rediss://localhost:{tls_port}/0?ssl_ca_certs={certificate}"
    if client_certificates:
        key = certificate.with_name("key.pem")
        url += f"&ssl_certfile={certificate}&ssl_keyfile={key}"
    with server_process(_env(url)) as process:
        async with httpx.AsyncClient(base_url=process.http, timeout=HANG) as client:
            ready = (await client.get("/readyz")).json()
            assert ready["status"] == "ready" and ready["store"] == "redis"


async def test_a_redis_that_does_not_answer_at_start_up_is_still_an_outage():
    """Nothing listening at REDIS_URL is an outage as before, not a configuration
    error: the server starts, serves from memory and says so."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with server_process(_env(url)) as process:
        async with httpx.AsyncClient(base_url=process.http, timeout=HANG) as client:
            ready = (await client.get("/readyz")).json()
            assert ready["status"] == "degraded" and ready["store"] == "memory"
            assert "error" not in ready


# --- At run time ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _served(url: str) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    settings = make_settings(redis_url=url, heartbeat_interval=2 * UNIT)
    async with (
        serve(settings) as server,
        httpx.AsyncClient(
            base_url=server.http,
            headers={"authorization": f"Bearer {token('alice')}"},
            timeout=HANG,
        ) as client,
    ):
        yield server, client


def _misconfigured(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "store_misconfigured" and error["message"]
    assert response.headers["retry-after"]


def _refusals(caplog) -> int:
    return sum("Redis refuses this service" in r.getMessage() for r in caplog.records)


async def test_a_password_changed_at_run_time_is_503_and_no_outage(make_server, caplog):
    """Redis taking a new password (and dropping the connections made with the old
    one) is answered 503 store_misconfigured, not served from memory; the cause is
    logged at ERROR once, not once a request, and /readyz says it in words; once the
    password is put back, all is well again."""
    caplog.set_level(logging.ERROR, logger="presence.store")
    server = make_server()
    _require_password(server, PASSWORD)
    async with _served(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0") as (running, client):
        sid = (await client.post(f"{BASE}/sessions")).json()["id"]
        with _admin(server, PASSWORD) as admin:
            admin.config_set("requirepass", "a-new-password")
            admin.client_kill_filter(_type="normal", skipme=True)
            for _ in range(5):
                _misconfigured(await client.get(f"{BASE}/sessions/{sid}"))
            _misconfigured(await client.post(f"{BASE}/sessions"))
            store = running.services.store
            assert isinstance(store, FallbackStore) and not store.degraded
            ready = (await client.get("/readyz")).json()
            assert ready["status"] == "degraded" and "password" in ready["error"]
            assert _refusals(caplog) == 1
            assert PASSWORD not in caplog.text
            admin.config_set("requirepass", PASSWORD)
        assert (await client.get("/readyz")).json()["status"] == "ready"
        assert (await client.get(f"{BASE}/sessions/{sid}")).status_code == 200


async def test_an_acl_revoked_at_run_time_is_503_and_readyz_says_so(make_server):
    """An ACL that loses EVALSHA at run time is answered 503 store_misconfigured (the
    breaker stays closed) and /readyz names the ACL until it is given back."""
    server = make_server()
    url = _acl_user(server, *NEEDED)
    async with _served(url) as (running, client):
        sid = (await client.post(f"{BASE}/sessions")).json()["id"]
        with _admin(server) as admin:
            admin.execute_command("ACL", "SETUSER", "presence", "-evalsha")
            _misconfigured(await client.post(f"{BASE}/sessions/{sid}/heartbeat"))
            _misconfigured(await client.delete(f"{BASE}/sessions/{sid}"))
            assert not running.services.store.degraded
            ready = (await client.get("/readyz")).json()
            assert ready["status"] == "degraded" and "ACL" in ready["error"]
            admin.execute_command("ACL", "SETUSER", "presence", "+evalsha")
        assert (await client.get("/readyz")).json()["status"] == "ready"
        assert (await client.post(f"{BASE}/sessions/{sid}/heartbeat")).status_code == 200


async def test_a_delete_that_redis_cannot_announce_still_deletes_and_answers_204(make_server):
    """With PUBLISH refused on the channel (an ACL changed at run time), DELETE deletes
    and answers 204, where it answered 500 after deleting; the session's socket is
    closed by the refresher's next tick instead, as the session is gone."""
    server = make_server()
    url = _acl_user(server, *NEEDED)
    async with _served(url) as (running, client):
        sid = (await client.post(f"{BASE}/sessions")).json()["id"]
        socket_url = f"{running.ws}{BASE}/sessions/{sid}/ws?token={token('alice')}"
        async with connect(socket_url, ping_interval=None) as websocket:
            await asyncio.wait_for(websocket.recv(), HANG)  # the snapshot
            with _admin(server) as admin:
                admin.execute_command("ACL", "SETUSER", "presence", "-publish")
                deleted = await client.delete(f"{BASE}/sessions/{sid}")
                assert deleted.status_code == 204, deleted.text
                # The session's keys are gone (presence's, the socket's tab and the
                # process's lease, remain until the socket closes).
                sessions_keys = [
                    key
                    for key in admin.keys("presence:*")
                    if not key.endswith(b":tabs")
                    and b":{~leases}:" not in key
                    and b":proc:" not in key
                ]
                assert sessions_keys == []
            ended = await asyncio.wait_for(websocket.recv(), HANG)
            assert '"ended"' in ended


async def test_the_store_refuses_to_open_on_a_refusing_redis_and_closes_what_it_opened(
    make_server,
):
    """FallbackStore.open raises ConfigError naming REDIS_URL on a password Redis
    refuses, and leaves no task or connection behind."""
    server = make_server()
    _require_password(server, PASSWORD)
    url = f"redis://:wrong@127.0.0.1:{server.port}/0"
    memory = MemoryStore(ttl=60.0)
    store = FallbackStore(RedisStore(url, ttl=60.0), memory)
    with pytest.raises(ConfigError) as error:
        await store.open()
    assert error.value.variable == "REDIS_URL"
    assert memory._sweeper is None
    assert store.primary._client is None
