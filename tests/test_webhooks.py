"""Webhooks: every event type reaches a real HTTP receiver, signed, once per id; a
receiver down for a while gets everything once back; a ``presence serve`` SIGKILLed
mid-delivery has what it held delivered by another; a receiver that never answers
cannot grow the server's memory; the README's verification code refuses bad
signatures and old timestamps; bad settings stop start-up; the secret never reaches
a log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from websockets.asyncio.client import connect

from presence import keys
from presence.exceptions import ConfigError
from presence.settings import Settings
from presence.webhooks import BATCH, EVENT_TYPES, MAX_BACKOFF, backoff, sign, where

from .utils import (
    REPO,
    UNIT,
    RedisServer,
    ServerProcess,
    make_settings,
    serve,
    server_process,
    token,
)

BASE = "/api/v1/chat"
SECRET = "webhook-secret-0123456789"
GRACE = 3 * UNIT
# A bound on one request to a loaded server.
HANG = 100 * UNIT


def _readme_code(language: str) -> str:
    """The README's verification code in ``language`` (its Webhooks section)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Webhooks") :]
    match = re.search(rf"```{language}\n(.*?def verify.*?|.*?function verify.*?)```", section, re.S)
    assert match, f"no {language} verification code in the README"
    return match.group(1)


def _readme_verify():
    namespace: dict = {}
    exec(compile(_readme_code("python"), "README.md", "exec"), namespace)  # noqa: S102
    return namespace["verify"]


VERIFY = _readme_verify()


class Receiver:
    """A real HTTP receiver (uvicorn on port 0) that checks every POST's signature with
    the README's code and keeps the events by id.

    ``status`` is what it answers; ``hold`` (an unset event) makes it read the body and
    then wait for the event before answering.
    """

    def __init__(self) -> None:
        self.events: dict[str, dict] = {}
        self.deliveries: Counter[str] = Counter()
        self.posts = 0
        self.largest = 0
        self.times: list[float] = []
        self.refused = 0
        self.status = 200
        self.hold: asyncio.Event | None = None
        self.held: list[dict] = []
        self.arrived = asyncio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks?token=query-token-not-for-logs"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        signature = headers.get(b"presence-signature", b"").decode()
        self.posts += 1
        self.times.append(time.monotonic())
        if not VERIFY(SECRET, signature, body):
            self.refused += 1
            await self._answer(send, 400)
            return
        events = json.loads(body)["events"]
        assert 1 <= len(events) <= BATCH
        self.largest = max(self.largest, len(events))
        if self.hold is not None and not self.hold.is_set():
            self.held += events
            self.arrived.set()
            await self.hold.wait()
            return  # the sender is long gone
        if self.status != 200:
            await self._answer(send, self.status)
            return
        for event in events:
            self.deliveries[event["id"]] += 1
            self.events[event["id"]] = event
        self.arrived.set()
        await self._answer(send, 200)

    async def _answer(self, send, status: int) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events.values() if e["type"] == kind]

    async def wait_for(self, predicate, seconds: float) -> None:
        async with asyncio.timeout(seconds):
            while not predicate():
                self.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(UNIT):
                        await self.arrived.wait()


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    config = uvicorn.Config(receiver, host="127.0.0.1", port=0, lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    receiver.port = sock.getsockname()[1]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn has no event for it
        await asyncio.sleep(UNIT / 10)
    try:
        yield receiver
    finally:
        if receiver.hold is not None:
            receiver.hold.set()
        server.should_exit = True
        await asyncio.wait_for(task, timeout=100 * UNIT)
        sock.close()


@contextlib.asynccontextmanager
async def silent() -> AsyncIterator[str]:
    """A receiver that accepts connections, reads, and never answers."""
    connections: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/never"
    finally:
        for writer in connections:
            writer.close()  # their readers see the end, and their handlers return
        await asyncio.sleep(UNIT)
        server.close()


def _settings(url: str, redis_url: str | None, **changes):
    return make_settings(
        redis_url=redis_url,
        webhook_urls=(url,),
        webhook_secret=SECRET,
        offline_grace=GRACE,
        diff_window=0.02,
        open_rooms=True,
        **changes,
    )


def _client(server, user: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.http + BASE, headers={"authorization": f"Bearer {token(user)}"}
    )


def _by_scope(events: list[dict]) -> dict[str, list[dict]]:
    scopes: dict[str, list[dict]] = {}
    for event in events:
        scope = "r:" + event["room"] if "room" in event else "u:" + event["user"]
        scopes.setdefault(scope, []).append(event)
    return scopes


# -- what arrives ---------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_url(request) -> str | None:
    if request.param == "memory":
        return None
    if request.param == "cluster":
        return request.getfixturevalue("redis_cluster_url")
    return request.getfixturevalue("redis_url")


async def test_every_event_type_arrives_signed_once_per_id(store_url):
    """A user who comes into a room over REST and whose session is deleted makes every
    event type, each delivered signed, once per id, in seq order per user and room."""
    async with receiving() as receiver, serve(_settings(receiver.url, store_url)) as server:
        async with _client(server, "alice") as alice:
            sid = (await alice.post("/sessions")).json()["id"]
            joined = await alice.post(f"/sessions/{sid}/rooms/general", json={"meta": {"a": [1]}})
            assert joined.status_code == 200
            await receiver.wait_for(lambda: receiver.of_type("member.joined"), 100 * UNIT)
            assert (await alice.delete(f"/sessions/{sid}")).status_code == 204
            await receiver.wait_for(
                lambda: {e["type"] for e in receiver.events.values()} == set(EVENT_TYPES),
                100 * UNIT,
            )
            await asyncio.sleep(5 * UNIT)  # anything told twice would be here by now
    events = list(receiver.events.values())
    assert receiver.refused == 0
    assert Counter(e["type"] for e in events) == Counter(EVENT_TYPES), events
    assert set(receiver.deliveries.values()) == {1}
    by_type = {e["type"]: e for e in events}
    assert by_type["user.online"]["status"] == "online"
    assert by_type["member.joined"]["meta"] == {"a": [1]}
    assert by_type["member.joined"]["sessions"] == 1
    assert by_type["member.left"]["reason"] == "ended"
    assert by_type["user.offline"]["reason"] == "ended"
    assert by_type["session.ended"] == {**by_type["session.ended"], "session_id": sid}
    assert by_type["session.ended"]["reason"] == "deleted"
    assert by_type["room.vacated"]["count"] == 0
    for event in events:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["created_at"])
    for scope, told in _by_scope(events).items():
        seqs = [e["seq"] for e in sorted(told, key=lambda e: e["created_at"])]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), scope


async def test_a_reconnect_inside_the_grace_tells_nothing(store_url):
    """A socket closed and opened again inside the grace, again and again (a refresh,
    a blip), sends no user.offline and no member.left: the user is online once."""
    async with receiving() as receiver, serve(_settings(receiver.url, store_url)) as server:
        async with _client(server, "bob") as bob:
            sid = (await bob.post("/sessions")).json()["id"]
        url = f"{server.ws}{BASE}/sessions/{sid}/ws?token={token('bob')}"
        for _ in range(4):
            async with connect(url) as websocket:
                await websocket.recv()  # the snapshot
                await websocket.send(json.dumps({"type": "presence.join", "room": "lobby"}))
                await asyncio.sleep(GRACE / 4)
        async with connect(url) as websocket:
            await websocket.recv()
            await websocket.send(json.dumps({"type": "presence.join", "room": "lobby"}))
            await asyncio.sleep(3 * GRACE)
            types = Counter(e["type"] for e in receiver.events.values())
            assert types == {"user.online": 1, "room.occupied": 1, "member.joined": 1}
        # Gone for good: told once, after the grace.
        await receiver.wait_for(lambda: receiver.of_type("user.offline"), 100 * UNIT)
        await asyncio.sleep(5 * UNIT)
    types = Counter(e["type"] for e in receiver.events.values())
    assert types == {
        "user.online": 1,
        "room.occupied": 1,
        "member.joined": 1,
        "member.left": 1,
        "room.vacated": 1,
        "user.offline": 1,
    }
    assert receiver.of_type("member.left")[0]["reason"] == "closed"


@pytest.mark.redis
async def test_a_receiver_down_for_a_while_gets_everything_once_back(redis_url):
    """While the receiver answers 503 the events wait; once it answers again, every
    one arrives (the retries back off, the first within about a second), a hundred a
    POST at most."""
    async with receiving() as receiver, serve(_settings(receiver.url, redis_url)) as server:
        receiver.status = 503
        users = [f"u{i}" for i in range(60)]
        for user in users:
            async with _client(server, user) as client:
                sid = (await client.post("/sessions")).json()["id"]
                await client.post(f"/sessions/{sid}/rooms/r-{user}")
        await receiver.wait_for(lambda: receiver.posts >= 3, 100 * UNIT)
        assert receiver.events == {}
        [state] = await server.services.webhooks.state()
        assert state["where"] == f"http://127.0.0.1:{receiver.port}"
        assert state["waiting"] >= 120 and state["failures"] >= 3 and state["delivered"] == 0
        assert state["last_error"] == "HTTP 503"
        receiver.status = 200
        await receiver.wait_for(lambda: len(receiver.of_type("member.joined")) == 60, 200 * UNIT)
        await receiver.wait_for(lambda: len(receiver.of_type("user.online")) == 60, 50 * UNIT)
        # Acknowledged (and deleted) once the receiver has answered.
        async with asyncio.timeout(50 * UNIT):
            while (await server.services.webhooks.state())[0]["waiting"]:  # noqa: ASYNC110
                await asyncio.sleep(UNIT)
        [state] = await server.services.webhooks.state()
        assert state["delivered"] >= 180 and state["lag"] > 0
    assert {e["user"] for e in receiver.of_type("user.online")} == set(users)
    assert len(receiver.of_type("room.occupied")) == 60
    assert receiver.largest == BATCH
    with redis.Redis.from_url(redis_url) as client:
        assert client.xlen(keys.webhook_stream("presence", receiver.url)) == 0


@pytest.mark.redis
async def test_events_waiting_in_redis_survive_its_restart_each_delivered_once(make_redis):
    """Events wait in Redis while the receiver is down; Redis is SIGKILLed and comes
    back (its append-only file kept them) and the delivery picks up again; once the
    receiver answers, each arrives once, and nothing else is told (no one left)."""
    server_redis = make_redis(appendonly=True)
    async with receiving() as receiver:
        receiver.status = 503
        settings = _settings(receiver.url, server_redis.url)
        async with serve(settings) as server:
            for user in ("g1", "g2", "g3"):
                async with _client(server, user) as client:
                    sid = (await client.post("/sessions")).json()["id"]
                    assert (await client.post(f"/sessions/{sid}/rooms/hall")).status_code == 200
            await receiver.wait_for(lambda: receiver.posts >= 1, 100 * UNIT)
            server_redis.kill()
            await asyncio.sleep(20 * UNIT)
            server_redis.start()
            await asyncio.sleep(30 * UNIT)
            receiver.status = 200
            await receiver.wait_for(lambda: len(receiver.of_type("member.joined")) == 3, 300 * UNIT)
            await asyncio.sleep(10 * UNIT)
    types = Counter(e["type"] for e in receiver.events.values())
    assert types == {"user.online": 3, "member.joined": 3, "room.occupied": 1}
    assert set(receiver.deliveries.values()) == {1}


@pytest.mark.redis
@pytest.mark.slow
async def test_a_departure_while_redis_is_away_is_told_once_it_is_back(make_redis):
    """While Redis is away presence is the process's own and tells nothing; a user who
    left meanwhile is told gone (node_down) once Redis is back, once."""
    server_redis = make_redis(appendonly=True)
    async with receiving() as receiver:
        async with serve(_settings(receiver.url, server_redis.url)) as server:
            async with _client(server, "hal") as hal:
                sid = (await hal.post("/sessions")).json()["id"]
                url = f"{server.ws}{BASE}/sessions/{sid}/ws?token={token('hal')}"
                async with connect(url) as websocket:
                    await websocket.recv()
                    await websocket.send(json.dumps({"type": "presence.join", "room": "den"}))
                    await receiver.wait_for(lambda: receiver.of_type("member.joined"), 100 * UNIT)
                    server_redis.kill()
                    async with asyncio.timeout(200 * UNIT):
                        while (await hal.get(server.http + "/readyz")).json()[
                            "status"
                        ] != "degraded":
                            await hal.get(f"/sessions/{sid}")
                            await asyncio.sleep(UNIT)
                await asyncio.sleep(3 * GRACE)  # gone, in this process's memory alone
                assert not receiver.of_type("user.offline")
                server_redis.start()
                await receiver.wait_for(lambda: receiver.of_type("user.offline"), 300 * UNIT)
                await asyncio.sleep(10 * UNIT)
    types = Counter(e["type"] for e in receiver.events.values())
    assert types == {
        "user.online": 1,
        "room.occupied": 1,
        "member.joined": 1,
        "member.left": 1,
        "room.vacated": 1,
        "user.offline": 1,
    }
    assert receiver.of_type("user.offline")[0]["reason"] == "node_down"


@pytest.mark.redis
async def test_on_a_cluster_an_outbox_left_behind_is_swept_and_delivered(redis_cluster_url):
    """On a cluster, events a script added to a user's outbox that nobody moved on (the
    process died first) are found by the sweep and delivered; the outbox is deleted."""
    async with receiving() as receiver:
        async with serve(_settings(receiver.url, redis_cluster_url)):
            outbox = keys.user_outbox("presence", "zed")
            event = {
                "id": "ev_left_behind",
                "type": "user.online",
                "created_at": 1,
                "seq": 1,
                "user": "zed",
                "status": "online",
            }
            client = redis.RedisCluster.from_url(redis_cluster_url.replace("+cluster", ""))
            try:
                client.xadd(outbox, {"e": json.dumps(event)})
                bound = 2 * keys.WEBHOOK_SWEEP_INTERVAL + 100 * UNIT
                await receiver.wait_for(lambda: "ev_left_behind" in receiver.events, bound)
                async with asyncio.timeout(50 * UNIT):
                    while client.exists(outbox):  # noqa: ASYNC110 - polls Redis
                        await asyncio.sleep(UNIT)
            finally:
                client.close()
    assert receiver.events["ev_left_behind"]["created_at"] == "1970-01-01T00:00:00.001Z"


@pytest.mark.redis
async def test_a_stream_deleted_under_the_delivery_is_made_again(redis_url):
    """A FLUSHALL takes the stream and its group: the delivery makes them again and
    delivers what comes after."""
    async with receiving() as receiver, serve(_settings(receiver.url, redis_url)) as server:
        async with _client(server, "kim") as kim:
            sid = (await kim.post("/sessions")).json()["id"]
            await kim.post(f"/sessions/{sid}/rooms/one")
            await receiver.wait_for(lambda: receiver.of_type("member.joined"), 100 * UNIT)
            with redis.Redis.from_url(redis_url) as client:
                client.flushall()
            await asyncio.sleep(20 * UNIT)
            sid = (await kim.post("/sessions")).json()["id"]
            await kim.delete(f"/sessions/{sid}")
            await receiver.wait_for(lambda: receiver.of_type("session.ended"), 200 * UNIT)


@pytest.mark.redis
async def test_a_receivers_endless_response_body_is_never_read(redis_url):
    """A receiver that answers 200 and then streams a body without end: the events are
    taken on the status alone, and the connection is closed rather than read."""
    written = 0
    closed = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        try:
            while written < 1 << 30:
                writer.write(chunk)
                await writer.drain()
                written += 65536
        except ConnectionError:
            pass
        finally:
            closed.set()
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/endless"
    try:
        async with serve(_settings(url, redis_url)) as running, _client(running, "lee") as lee:
            await lee.post("/sessions")
            sid = (await lee.post("/sessions")).json()["id"]
            await lee.delete(f"/sessions/{sid}")
            await asyncio.wait_for(closed.wait(), 100 * UNIT)
            async with asyncio.timeout(50 * UNIT):
                while (await running.services.webhooks.state())[0]["waiting"]:  # noqa: ASYNC110
                    await asyncio.sleep(UNIT)
            assert (await running.services.webhooks.state())[0]["delivered"] == 1
    finally:
        server.close()
    assert written < 64 << 20  # closed long before a gigabyte


@pytest.mark.redis
async def test_each_url_gets_every_event(redis_url):
    """Two URLs: each has its own stream, and each gets every event, with the same ids."""
    async with receiving() as one, receiving() as other:
        settings = _settings(one.url, redis_url).replace(webhook_urls=(one.url, other.url))
        async with serve(settings) as server, _client(server, "ivy") as ivy:
            sid = (await ivy.post("/sessions")).json()["id"]
            await ivy.post(f"/sessions/{sid}/rooms/twin")
            for receiver in (one, other):
                await receiver.wait_for(lambda r=receiver: len(r.events) == 3, 100 * UNIT)
    assert one.events.keys() == other.events.keys()
    assert one.events == other.events


async def test_the_first_retry_comes_within_about_a_second(store_url):
    """A POST that fails is tried again within a second (full jitter: anywhere in it)."""
    async with receiving() as receiver, serve(_settings(receiver.url, store_url)) as server:
        receiver.status = 500
        async with _client(server, "max") as user:
            await user.post("/sessions")
            sid = (await user.post("/sessions")).json()["id"]
            await user.delete(f"/sessions/{sid}")
        await receiver.wait_for(lambda: receiver.posts >= 1, 100 * UNIT)
        receiver.status = 200
        await receiver.wait_for(lambda: receiver.events, 100 * UNIT)
    assert receiver.times[1] - receiver.times[0] <= 1.0 + 5 * UNIT


def test_backoff_is_full_jitter_capped_and_the_first_retry_within_a_second():
    """The wait before retry n is uniform up to min(cap, 2^(n-1) s)."""
    assert backoff(1, rng=lambda: 1.0) == 1.0
    assert backoff(3, rng=lambda: 1.0) == 4.0
    assert backoff(100, rng=lambda: 1.0) == MAX_BACKOFF
    assert backoff(5, rng=lambda: 0.0) == 0.0
    assert all(0 <= backoff(1) <= 1 for _ in range(100))


# -- dead letters ---------------------------------------------------------------------


async def test_events_past_the_retry_hours_are_dead_letters_and_replay_sends_them(store_url):
    """A URL that fails past the retry hours has its events moved to the dead letters,
    listed with the last error; replaying them delivers them."""
    async with receiving() as receiver:
        receiver.status = 500
        settings = _settings(receiver.url, store_url, webhook_retry=20 * UNIT)
        async with serve(settings) as server:
            webhooks = server.services.webhooks
            async with _client(server, "carol") as carol:
                sid = (await carol.post("/sessions")).json()["id"]
                await carol.delete(f"/sessions/{sid}")
            async with asyncio.timeout(300 * UNIT):
                # Polls the store: there is no event to await.
                while not (dead := await webhooks.dead_letters(receiver.url)):  # noqa: ASYNC110
                    await asyncio.sleep(UNIT)
            assert dead[0].event["type"] == "session.ended"
            assert dead[0].error == "HTTP 500"
            assert dead[0].attempts >= 2
            assert receiver.events == {}
            receiver.status = 200
            assert await webhooks.replay(receiver.url, [dead[0].id]) == 1
            await receiver.wait_for(lambda: receiver.of_type("session.ended"), 100 * UNIT)
            assert receiver.of_type("session.ended")[0]["session_id"] == sid
            assert receiver.of_type("session.ended")[0]["id"] == dead[0].event["id"]
            assert dead[0].id not in [d.id for d in await webhooks.dead_letters(receiver.url)]
            with pytest.raises(KeyError, match="not a webhook URL"):
                await webhooks.replay("https://elsewhere.example/")
            with pytest.raises(KeyError, match="not a webhook URL"):
                await webhooks.dead_letters("https://elsewhere.example/")


# -- processes ------------------------------------------------------------------------


def _env(redis_url: str, url: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "PRESENCE_JWT_SECRET": "test-secret-that-is-long-enough-for-hs256",
        "PRESENCE_WEBHOOK_URL": url,
        "PRESENCE_WEBHOOK_SECRET": SECRET,
        "PRESENCE_OFFLINE_GRACE": str(GRACE),
        "PRESENCE_OPEN_ROOMS": "true",
        "LOG_LEVEL": "info",
        **extra,
    }


@pytest.mark.redis
@pytest.mark.slow
async def test_a_process_killed_mid_delivery_has_its_events_delivered_by_another(redis_url):
    """The process holding a batch (its POST in flight) is SIGKILLed; another process
    claims what it held once it has been idle long enough, and delivers it."""
    async with receiving() as receiver:
        receiver.hold = asyncio.Event()
        env = _env(redis_url, receiver.url)
        with server_process(env) as first:
            async with httpx.AsyncClient(
                base_url=first.http + BASE, headers={"authorization": f"Bearer {token('dan')}"}
            ) as dan:
                sid = (await dan.post("/sessions")).json()["id"]
                await dan.post(f"/sessions/{sid}/rooms/kitchen")
            # Its first batch is in flight (held), the rest wait behind it.
            await receiver.wait_for(lambda: receiver.held, 100 * UNIT)
            await asyncio.sleep(5 * UNIT)
            held = {e["id"] for e in receiver.held}
            first.kill()
        receiver.hold.set()  # from now on the receiver answers
        with server_process(env):
            # The claim waits for the batch to be idle WEBHOOK_CLAIM_IDLE seconds.
            bound = keys.WEBHOOK_CLAIM_IDLE + 300 * UNIT
            await receiver.wait_for(lambda: held <= receiver.events.keys(), bound)
            # The dead process's tabs are reaped too: dan leaves with node_down.
            await receiver.wait_for(lambda: receiver.of_type("user.offline"), 200 * UNIT)
    assert "user.online" in {e["type"] for e in receiver.events.values() if e["id"] in held}
    assert {"member.joined", "room.occupied"} <= {e["type"] for e in receiver.events.values()}
    assert receiver.of_type("user.offline")[0]["reason"] == "node_down"
    assert set(receiver.deliveries.values()) == {1}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.redis
@pytest.mark.slow
async def test_a_receiver_that_never_answers_cannot_grow_the_servers_memory(redis_url):
    """With a receiver that never answers, events pile up in Redis, not in the server:
    one batch in flight, and its RSS stays flat while thousands of events wait."""
    async with silent() as url:
        with server_process(_env(redis_url, url)) as server:

            async def burst(round_: int) -> None:
                async with httpx.AsyncClient(base_url=server.http + BASE, timeout=HANG) as client:

                    async def one(i: int) -> None:
                        user = f"r{round_}-{i}"
                        headers = {"authorization": f"Bearer {token(user)}"}
                        created = await client.post("/sessions", headers=headers)
                        if created.status_code != 201:
                            return  # a loaded machine's 503: the test is about memory
                        sid = created.json()["id"]
                        await client.post(f"/sessions/{sid}/rooms/big", headers=headers)

                    for start in range(0, 500, 50):
                        await asyncio.gather(*(one(i) for i in range(start, start + 50)))

            assert server.process is not None
            pid = server.process.pid
            await burst(0)  # warm up: the code paths, the pools, the allocator
            stream = keys.webhook_stream("presence", url)
            with redis.Redis.from_url(redis_url, decode_responses=True) as client:
                before = _rss_kib(pid)
                for round_ in (1, 2, 3):
                    await burst(round_)
                waiting = client.xlen(stream)
                pending = client.xpending(stream, keys.WEBHOOK_GROUP)["pending"]
                after = _rss_kib(pid)
    # 2000 users: each one user.online and one member.joined, plus room.occupied once
    # (less what a loaded machine refused of those requests).
    assert waiting >= 3 * 1000
    assert pending <= BATCH
    print(f"RSS {before} KiB -> {after} KiB with {waiting} events waiting, {pending} pending")
    assert after - before < 8 * 1024, (before, after, waiting)


# -- an ACL -----------------------------------------------------------------------------

ACL_PASSWORD = "acl-password-for-webhooks"


def _readme_acl() -> list[str]:
    """The ACL the README gives: Deployment's, and the Webhooks section's commands."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"ACL SETUSER presence on >PASSWORD (.*?)\n```", readme, re.S)
    assert block
    hooks = re.search(r"An ACL user \(see Deployment\) needs these too:\s*`([^`]*)`", readme)
    assert hooks
    return block.group(1).split() + hooks.group(1).split()


@contextlib.contextmanager
def _acl_redis(*rules: str):
    server = RedisServer()
    server.start()
    try:
        with redis.Redis(host="127.0.0.1", port=server.port) as admin:
            admin.execute_command(
                "ACL", "SETUSER", "presence", "reset", "on", f">{ACL_PASSWORD}", *rules
            )
        yield f"redis://presence:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@pytest.mark.redis
async def test_the_acl_the_readme_gives_is_enough_for_webhooks(redis_server):
    """With just the README's ACL, the server starts and delivers events."""
    with _acl_redis(*_readme_acl()) as url:
        async with receiving() as receiver:
            with server_process(_env(url, receiver.url)) as server:
                async with httpx.AsyncClient(
                    base_url=server.http + BASE,
                    headers={"authorization": f"Bearer {token('fay')}"},
                ) as fay:
                    sid = (await fay.post("/sessions")).json()["id"]
                    assert (await fay.post(f"/sessions/{sid}/rooms/acl")).status_code == 200
                    assert (await fay.delete(f"/sessions/{sid}")).status_code == 204
                await receiver.wait_for(
                    lambda: {e["type"] for e in receiver.events.values()} == set(EVENT_TYPES),
                    200 * UNIT,
                )


@pytest.mark.redis
def test_an_acl_without_the_stream_commands_stops_start_up(redis_server):
    """Without XADD, ``presence serve`` with webhooks stops naming REDIS_URL."""
    rules = [r for r in _readme_acl() if r != "+xadd"]
    with _acl_redis(*rules) as url:
        process = ServerProcess(_env(url, "http://127.0.0.1:9/hooks"))
        try:
            with pytest.raises(RuntimeError) as failed:
                process.start()
        finally:
            process.stop()
    log = str(failed.value)
    assert "Traceback" not in log, log
    assert ACL_PASSWORD not in log and SECRET not in log
    [line] = [line for line in log.splitlines() if "REDIS_URL" in line]
    assert "webhooks need the stream commands" in line


# -- signatures -----------------------------------------------------------------------


def test_the_readme_verification_refuses_bad_signatures_and_old_timestamps():
    """The README's Python code accepts a fresh, right signature and refuses a wrong
    secret, a changed body, an old or future timestamp, and malformed headers."""
    body = b'{"events":[]}'
    now = int(time.time())
    assert VERIFY(SECRET, sign(SECRET, body, now), body)
    assert not VERIFY("another-secret-000000", sign(SECRET, body, now), body)
    assert not VERIFY(SECRET, sign(SECRET, body, now), body + b" ")
    assert not VERIFY(SECRET, sign(SECRET, body, now - 301), body)
    assert not VERIFY(SECRET, sign(SECRET, body, now + 301), body)
    malformed = ("", "t=,v1=", "v1=abc", f"t={now}", "garbage", f"t=x{now},v1=00", "t=²,v1=0")
    malformed += (f"t={now},v1=é", f"t=é,v1={sign(SECRET, body, now)[-64:]}")
    for header in malformed:
        assert not VERIFY(SECRET, header, body)


def test_the_readme_javascript_verification_agrees(tmp_path):
    """The README's JavaScript code, run by node, accepts what the Python code accepts
    and refuses a wrong signature and an old timestamp."""
    node = subprocess.run(["node", "--version"], capture_output=True, check=False)
    if node.returncode != 0:
        pytest.skip("node is not installed")
    (tmp_path / "verify.mjs").write_text(_readme_code("js"))
    body = '{"events":[{"id":"ev_1"}]}'
    now = int(time.time())
    good = sign(SECRET, body.encode(), now)
    cases = {
        "good": [good, True],
        "wrong": [sign("another-secret-000000", body.encode(), now), False],
        "old": [sign(SECRET, body.encode(), now - 600), False],
        "malformed": ["t=1", False],
        "not ascii": [f"t={now},v1=é", False],
        "empty": ["", False],
    }
    script = (
        "import { verify } from './verify.mjs';\n"
        f"const cases = {json.dumps(cases)};\n"
        f"const body = {json.dumps(body)};\n"
        "for (const [name, [header, want]] of Object.entries(cases)) {\n"
        f"  if (verify({json.dumps(SECRET)}, header, body) !== want) {{ "
        "console.log('wrong: ' + name); process.exit(1); }\n"
        "}\nconsole.log('ok');\n"
    )
    (tmp_path / "check.mjs").write_text(script)
    result = subprocess.run(
        ["node", "check.mjs"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ok", result.stdout + result.stderr


# -- abuse ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named", "says"),
    [
        ({"PRESENCE_WEBHOOK_URL": "ftp://example.com/x"}, "PRESENCE_WEBHOOK_URL", "http"),
        ({"PRESENCE_WEBHOOK_URL": "example.com/hooks"}, "PRESENCE_WEBHOOK_URL", "http"),
        ({"PRESENCE_WEBHOOK_URL": "https:///nohost"}, "PRESENCE_WEBHOOK_URL", "host"),
        ({"PRESENCE_WEBHOOK_URL": "https://u:p@example.com/"}, "PRESENCE_WEBHOOK_URL", "cred"),
        ({"PRESENCE_WEBHOOK_URL": "https://example.com:99999/"}, "PRESENCE_WEBHOOK_URL", "port"),
        ({"PRESENCE_WEBHOOK_URL": "https://a.example,https://a.example"}, "", "twice"),
        ({"PRESENCE_WEBHOOK_URL": "https://a.example/" + "x" * 3000}, "", "at most 2048"),
        ({"PRESENCE_WEBHOOK_URL": ",".join(f"https://h{i}.example" for i in range(11))}, "", "10"),
        ({"PRESENCE_WEBHOOK_URL": "https://example.com/"}, "PRESENCE_WEBHOOK_SECRET", "set"),
        (
            {"PRESENCE_WEBHOOK_URL": "https://example.com/", "PRESENCE_WEBHOOK_SECRET": "short"},
            "PRESENCE_WEBHOOK_SECRET",
            "16",
        ),
        ({"PRESENCE_WEBHOOK_RETRY_HOURS": "0"}, "PRESENCE_WEBHOOK_RETRY_HOURS", "greater"),
        ({"PRESENCE_WEBHOOK_RETRY_HOURS": "soon"}, "PRESENCE_WEBHOOK_RETRY_HOURS", "number"),
    ],
)
def test_bad_webhook_settings_are_refused_naming_the_variable(env, named, says):
    """Each bad value is a ConfigError naming its variable and saying what is wrong."""
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert raised.value.variable == (named or "PRESENCE_WEBHOOK_URL")
    assert says.lower() in str(raised.value).lower()


def test_good_webhook_settings_are_read():
    """URLs (comma-separated, spaces around), the secret and the retry hours."""
    settings = Settings.from_env(
        {
            "PRESENCE_WEBHOOK_URL": " https://a.example/h , http://b.example:8080/x?k=1 ",
            "PRESENCE_WEBHOOK_SECRET": SECRET,
            "PRESENCE_WEBHOOK_RETRY_HOURS": "0.5",
        }
    )
    assert settings.webhook_urls == ("https://a.example/h", "http://b.example:8080/x?k=1")
    assert settings.webhook_retry == 1800.0
    assert SECRET not in repr(settings)
    assert where("https://a.example:8443/h?token=t") == "https://a.example:8443"


def test_a_bad_webhook_url_stops_presence_serve_with_a_clear_error(tmp_path):
    """``presence serve`` with a bad URL exits at once, naming the variable."""
    result = subprocess.run(
        ["presence", "serve"],
        env={
            "PATH": str(REPO / ".venv" / "bin") + ":/usr/bin:/bin",
            "PRESENCE_WEBHOOK_URL": "gopher://example.com/",
            "PRESENCE_WEBHOOK_SECRET": SECRET,
        },
        capture_output=True,
        text=True,
        timeout=300 * UNIT,
        check=False,
    )
    assert result.returncode != 0
    assert "PRESENCE_WEBHOOK_URL" in result.stderr
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.redis
async def test_the_secret_and_the_urls_path_never_reach_a_log(redis_url):
    """At debug level, with a failing receiver (so failures are logged), neither the
    secret nor the URL's path and query appear in the server's log."""
    async with receiving() as receiver:
        receiver.status = 503
        with server_process(_env(redis_url, receiver.url, LOG_LEVEL="debug")) as server:
            async with httpx.AsyncClient(
                base_url=server.http + BASE, headers={"authorization": f"Bearer {token('eve')}"}
            ) as eve:
                sid = (await eve.post("/sessions")).json()["id"]
                await eve.post(f"/sessions/{sid}/rooms/x")
            await receiver.wait_for(lambda: receiver.posts >= 2, 100 * UNIT)
            log = server.log.read_text()
    assert "webhook" in log  # the failure is logged ...
    assert f"127.0.0.1:{receiver.port}" in log
    assert SECRET not in log  # ... without the secret
    assert "query-token-not-for-logs" not in log and "/hooks" not in log


async def test_the_start_up_line_says_memory_webhooks_are_not_durable(caplog):
    """Without Redis, the start-up log says webhooks are not durable."""
    async with receiving() as receiver:
        with caplog.at_level("INFO", logger="presence"):
            async with serve(_settings(receiver.url, None)):
                pass
    assert any("not durable" in r.getMessage() for r in caplog.records)
    assert all(SECRET not in r.getMessage() for r in caplog.records)
