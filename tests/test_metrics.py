"""GET /metrics against real servers, parsed with prometheus_client's own parser: every
family there, each moving when its event happens, workers added up, the token, and no
label that names a user, a session or a room."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from presence import metrics
from presence.exceptions import ConfigError
from presence.settings import Settings

from .utils import UNIT, RedisServer, make_settings, serve, server_process, token

BASE = "/api/v1/chat"

#: Every family /metrics exposes, by the name its samples start with.
FAMILIES = {
    "presence_sockets": "gauge",
    "presence_sessions": "gauge",
    "presence_users": "gauge",
    "presence_rooms": "gauge",
    "presence_room_members": "gauge",
    "presence_diffs": "counter",
    "presence_diff_messages": "counter",
    "presence_member_leaves": "counter",
    "presence_store_retries": "counter",
    "presence_http_request_duration_seconds": "histogram",
    "presence_websocket_closes": "counter",
    "presence_redis_call_duration_seconds": "histogram",
    "presence_redis_breaker_open": "gauge",
    "presence_redis_breaker_trips": "counter",
    "presence_journal_writes": "gauge",
    "presence_refresher_tick_duration_seconds": "histogram",
    "presence_webhook_deliveries": "counter",
    "presence_webhook_failures": "counter",
    "presence_webhook_retries": "counter",
    "presence_webhook_dead_letters": "counter",
    "presence_webhook_lag_seconds": "histogram",
    "presence_event_loop_lag_seconds": "histogram",
}

#: The values each label may take (None: any route template the app has).
LABELS: dict[str, set[str] | None] = {
    "transport": {"websocket", "http"},
    "state": {"active", "away"},
    "status": None,  # a user's status, or an HTTP status
    "reason": {"left", "closed", "timeout", "ended", "expired", "node_down"},
    "method": {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"},
    "route": None,
    "code": {str(code) for code in range(1000, 1016)} | {"other", "none"},
    "le": None,
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """The families (name → type) and samples ((name, labels) → value) of a scrape."""
    families: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def scrape(base: str, **headers: str) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{base}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)[1]


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 100 * UNIT) -> None:
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110 - polls the server; no event to await
            await asyncio.sleep(UNIT)


async def recv_type(websocket: ClientConnection, kind: str) -> dict:
    async with asyncio.timeout(50 * UNIT):
        while True:
            message = json.loads(await websocket.recv())
            if message["type"] == kind:
                return message


@pytest.fixture
async def server(redis_url: str) -> AsyncIterator:
    """A server on the test Redis: open rooms, a short refresh and grace."""
    settings = make_settings(
        redis_url=redis_url,
        heartbeat_interval=5 * UNIT,
        session_ttl=600 * UNIT,
        inactive_threshold=600 * UNIT,
        offline_grace=2 * UNIT,
        open_rooms=True,
    )
    async with serve(settings) as running:
        yield running


async def new_session(base: str, user: str) -> str:
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {token(user)}"}) as client:
        response = await client.post(f"{base}{BASE}/sessions")
    assert response.status_code == 201
    return str(response.json()["id"])


@contextlib.asynccontextmanager
async def socket(ws_base: str, user: str, session_id: str) -> AsyncIterator[ClientConnection]:
    url = f"{ws_base}{BASE}/sessions/{session_id}/ws?token={token(user)}"
    async with connect(url, compression=None) as websocket:
        await recv_type(websocket, "snapshot")
        yield websocket


# -- every family ---------------------------------------------------------------------


async def test_every_family_is_exposed_with_its_type(server):
    """A scrape parses as the Prometheus text format and holds every family, typed."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.http}/metrics")
    families, _ = parse(response.text)
    for name, kind in FAMILIES.items():
        assert families.get(name) == kind, name


async def test_each_family_moves_when_its_event_happens(server):
    """Requests, sockets, sessions, users, rooms, members, diffs and their fan-out,
    leaves by reason, closes by code, Redis calls, refresher ticks and the loop's lag
    each move when what they count happens."""
    base, ws = server.http, server.ws
    before = await scrape(base)
    ann = await new_session(base, "ann")
    bob = await new_session(base, "bob")
    after = await scrape(base)
    created = {"method": "POST", "route": f"{BASE}/sessions", "status": "201"}
    count = "presence_http_request_duration_seconds_count"
    assert value(after, count, **created) - value(before, count, **created) == 2
    redis_calls = "presence_redis_call_duration_seconds_count"
    assert value(after, redis_calls) > value(before, redis_calls)

    async with socket(ws, "bob", bob) as watcher:
        await watcher.send(json.dumps({"type": "presence.watch", "room": "lobby"}))
        await recv_type(watcher, "presence.sync")
        async with socket(ws, "ann", ann) as member:
            now = await scrape(base)
            assert value(now, "presence_sockets") == 2
            assert value(now, "presence_sessions", transport="websocket", state="active") == 2
            assert value(now, "presence_users", status="online") == 2
            diffs, fanned = (
                value(now, "presence_diffs_total"),
                value(now, "presence_diff_messages_total"),
            )
            await member.send(json.dumps({"type": "presence.join", "room": "lobby"}))
            await recv_type(watcher, "presence.diff")
            now = await scrape(base)
            assert value(now, "presence_diffs_total") > diffs
            assert value(now, "presence_diff_messages_total") > fanned

            async def counted() -> bool:
                # The rooms index is written just after the diff is published.
                now = await scrape(base)
                rooms, members = "presence_rooms", "presence_room_members"
                return value(now, rooms) == 1 and value(now, members) == 1

            await until(counted)

            await member.send(json.dumps({"type": "visibility", "state": "hidden"}))

            async def away() -> bool:
                now = await scrape(base)
                return (
                    value(now, "presence_sessions", transport="websocket", state="away") == 1
                    and value(now, "presence_users", status="away") == 1
                )

            await until(away)
            ticks = "presence_refresher_tick_duration_seconds_count"
            lag = "presence_event_loop_lag_seconds_count"
            ticked, lagged = value(now, ticks), value(now, lag)

            async def refreshed() -> bool:
                now = await scrape(base)
                return value(now, ticks) > ticked and value(now, lag) > lagged

            await until(refreshed)
            before = await scrape(base)
        # ann's socket closed by the client (1000): after the grace, ann leaves "closed".
        diff = await recv_type(watcher, "presence.diff")
        while not diff["leaves"]:  # the update to away came first
            diff = await recv_type(watcher, "presence.diff")
        assert [leave["reason"] for leave in diff["leaves"]] == ["closed"]
        after = await scrape(base)
    closes = "presence_websocket_closes_total"
    assert value(after, closes, code="1000") - value(before, closes, code="1000") == 1
    leaves = "presence_member_leaves_total"
    assert value(after, leaves, reason="closed") - value(before, leaves, reason="closed") == 1
    assert value(after, "presence_sockets") == 1

    async def emptied() -> bool:
        return value(await scrape(base), "presence_rooms") == 0

    await until(emptied)


async def test_an_outage_moves_the_breaker_and_the_journal(own_redis: RedisServer):
    """Redis stopped: the breaker opens (a trip, the state 1), a heartbeat meanwhile is
    journalled; Redis back: the breaker closes and the journal empties."""
    settings = make_settings(redis_url=own_redis.url, redis_timeout=UNIT)
    async with serve(settings) as running:
        base = running.http
        session = await new_session(base, "ann")
        before = await scrape(base)
        assert value(before, "presence_redis_breaker_open") == 0
        own_redis.kill()
        headers = {"authorization": f"Bearer {token('ann')}"}
        async with httpx.AsyncClient(headers=headers) as client:
            response = await client.post(f"{base}{BASE}/sessions/{session}/heartbeat")
        assert response.status_code == 200
        during = await scrape(base)
        assert value(during, "presence_redis_breaker_open") == 1
        trips = "presence_redis_breaker_trips_total"
        assert value(during, trips) - value(before, trips) == 1
        assert value(during, "presence_journal_writes") >= 1
        own_redis.start()

        async def closed() -> bool:
            now = await scrape(base)
            return (
                value(now, "presence_redis_breaker_open") == 0
                and value(now, "presence_journal_writes") == 0
            )

        await until(closed)


# -- workers --------------------------------------------------------------------------


@pytest.mark.slow
async def test_two_workers_metrics_are_added_up(redis_url: str, tmp_path: Path):
    """Under `presence serve --workers 2`, any worker's scrape counts every worker's
    requests and sockets: each scrape says the same whichever worker answers it."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"stale")  # a previous launch's: wiped
    env = {
        "REDIS_URL": redis_url,
        "PRESENCE_OPEN_ROOMS": "true",
        "PRESENCE_JWT_SECRET": "test-secret-that-is-long-enough-for-hs256",
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    with server_process(env, "--workers", "2") as process:
        base = process.http

        async def both_up() -> bool:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{base}/healthz")
            return response.status_code == 200 and len(_pids(folder)) >= 2

        await until(both_up, 300 * UNIT)
        before = await scrape(base)
        healthz = {"route": "/healthz", "status": "200"}
        count = "presence_http_request_duration_seconds_count"
        for _ in range(40):
            # A connection each, so that the kernel hands them to either worker.
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{base}/healthz")).status_code == 200
        sessions = [await new_session(base, f"user{i}") for i in range(6)]
        async with contextlib.AsyncExitStack() as stack:
            for i, sid in enumerate(sessions):
                await stack.enter_async_context(socket(process.ws, f"user{i}", sid))

            async def all_counted() -> bool:
                now = await scrape(base)
                return value(now, "presence_sockets") == 6

            await until(all_counted)
            for _ in range(6):  # scrapes answered by either worker agree
                now = await scrape(base)
                assert value(now, count, **healthz) - value(before, count, **healthz) == 40
                assert value(now, "presence_sockets") == 6
        counted = {pid for kind, pid in _files(folder) if kind == "histogram"}
        assert len(counted) == 2, "both workers answered requests"


def _files(folder: Path) -> list[tuple[str, str]]:
    found = []
    for path in folder.glob("*.db"):
        match = re.fullmatch(r"(\w+?)_(?:\w+_)?(\d+)\.db", path.name)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def _pids(folder: Path) -> set[str]:
    return {pid for _, pid in _files(folder) if pid != "1"}


# -- the token ------------------------------------------------------------------------

METRICS_TOKEN = "a-metrics-token-of-some-length"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        f"Bearer{METRICS_TOKEN}",
        "Bearer wrong-token-of-the-same-len",
        f"Basic {METRICS_TOKEN}",
        f"Bearer {METRICS_TOKEN}x",
        f"Bearer {METRICS_TOKEN[:-1]}",
        "Bearer " + "x" * 8000,
        f"Bearer {METRICS_TOKEN}".encode() + b"\xe9",
    ],
)
async def test_a_metrics_token_refuses_every_other_authorization(authorization):
    """With PRESENCE_METRICS_TOKEN set, /metrics answers 401 with a JSON error for a
    missing, wrong, malformed or oversized bearer, and tells nothing of the metrics."""
    async with serve(make_settings(metrics_token=METRICS_TOKEN)) as running:
        headers = {} if authorization is None else {"authorization": authorization}
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{running.http}/metrics", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert "presence_" not in response.text


async def test_the_metrics_token_lets_its_bearer_in():
    """The right bearer (any case of the scheme) gets the metrics."""
    async with serve(make_settings(metrics_token=METRICS_TOKEN)) as running:
        for scheme in ("Bearer", "bearer"):
            samples = await scrape(running.http, authorization=f"{scheme} {METRICS_TOKEN}")
            assert value(samples, "presence_sockets") == 0


def test_a_short_metrics_token_is_refused():
    """A token shorter than 16 characters stops start-up, naming the variable."""
    with pytest.raises(ConfigError, match="PRESENCE_METRICS_TOKEN"):
        Settings.from_env({"PRESENCE_METRICS_TOKEN": "short"})


def test_the_token_is_compared_whole():
    """authorized() takes only the exact token after a bearer scheme."""
    assert metrics.authorized(None, None)
    assert not metrics.authorized(METRICS_TOKEN, None)
    assert metrics.authorized(METRICS_TOKEN, f"Bearer {METRICS_TOKEN}")
    assert not metrics.authorized(METRICS_TOKEN, f"Bearer {METRICS_TOKEN} {METRICS_TOKEN}")
    assert not metrics.authorized(METRICS_TOKEN, METRICS_TOKEN)


# -- cardinality ----------------------------------------------------------------------


async def test_no_label_names_a_user_a_session_or_a_room(server):
    """After traffic with distinctive users, rooms, sessions, unknown paths, odd methods
    and an application's close code, no label value carries any of them, and every
    label takes its values from a closed set."""
    base, ws = server.http, server.ws
    marker = secrets.token_hex(6)
    user, room = f"user-{marker}", f"room-{marker}"
    session = await new_session(base, user)
    async with socket(ws, user, session) as websocket:
        await websocket.send(json.dumps({"type": "presence.join", "room": room}))
        await recv_type(websocket, "presence.sync")
        async with httpx.AsyncClient() as client:
            await client.get(f"{base}/no/such/{marker}?token={marker}")
            await client.request("PROPFIND", f"{base}/healthz")
            await client.get(f"{base}/static/src/{marker}.js")
            await client.get(f"{base}{BASE}/sessions/{marker}")
        await websocket.close(code=4321)

    async def closed() -> bool:
        now = await scrape(base)
        return value(now, "presence_websocket_closes_total", code="other") >= 1

    await until(closed)
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{base}/metrics")).text
    for needle in (marker, session, user, room):
        assert needle not in text
    _, samples = parse(text)
    routes = set()
    for name, labels in samples:
        if not name.startswith("presence_"):
            continue  # the library's own (process, gc, platform)
        for label, label_value in labels:
            allowed = LABELS[label]
            assert allowed is None or label_value in allowed, (label, label_value)
            if label == "route":
                routes.add(label_value)
    assert "(no route)" in routes and "/static/src/{path}" in routes
    assert all(route.startswith(("/", "(")) for route in routes)
    assert value(samples, "presence_http_request_duration_seconds_count", method="other") >= 1


def test_the_families_are_documented_in_the_readme():
    """The README's Operating section lists every family."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Operating") :]
    for name in FAMILIES:
        assert f"`{name}" in section, name


def test_workers_get_a_metrics_folder_of_their_launch_when_none_is_given(monkeypatch):
    """`presence serve --workers 2` without PROMETHEUS_MULTIPROC_DIR makes a folder for
    the launch, names it to the workers in the environment, and removes it at exit; one
    worker needs none."""
    from presence.cli import _metrics_folder

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with _metrics_folder(Settings(), 1):
        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    with _metrics_folder(Settings(), 2):
        folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        assert folder.is_dir()
    assert not folder.exists()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


async def test_the_webhook_families_move_with_deliveries_failures_retries_and_dead_letters(
    redis_url: str,
):
    """A receiver failing, then answering: failures and retries move, then deliveries and
    the lag; a URL failing past the retry hours moves the dead letters."""
    from .test_webhooks import _client, _settings, receiving

    families = (
        "presence_webhook_deliveries_total",
        "presence_webhook_failures_total",
        "presence_webhook_retries_total",
        "presence_webhook_dead_letters_total",
        "presence_webhook_lag_seconds_count",
    )
    async with receiving() as receiver:
        receiver.status = 503
        async with serve(_settings(receiver.url, redis_url, webhook_retry=600 * UNIT)) as server:
            base = server.http
            before = {name: value(await scrape(base), name) for name in families}
            async with _client(server, "dora") as dora:
                sid = (await dora.post("/sessions")).json()["id"]
                await dora.delete(f"/sessions/{sid}")  # a session.ended event

            async def moved(*names: str) -> bool:
                now = await scrape(base)
                return all(value(now, name) > before[name] for name in names)

            await until(lambda: moved(families[1], families[2]))
            receiver.status = 200
            await until(lambda: moved(families[0], families[4]))
            await receiver.wait_for(lambda: receiver.of_type("session.ended"), 100 * UNIT)
            assert value(await scrape(base), families[3]) == before[families[3]]
        receiver.status = 500
        async with serve(_settings(receiver.url, redis_url, webhook_retry=UNIT)) as server:
            base = server.http
            dead = value(await scrape(base), families[3])
            async with _client(server, "eve") as eve:
                sid = (await eve.post("/sessions")).json()["id"]
                await eve.delete(f"/sessions/{sid}")

            async def buried() -> bool:
                return value(await scrape(base), families[3]) > dead

            await until(buried, 300 * UNIT)


async def test_the_loop_lag_is_sampled_each_tick_and_the_held_tabs_less_often():
    """The sampler times the loop every ``interval`` and walks the tabs held here (the
    gauges; a scrape samples them too) only every ``gauges_interval``: at 15,000 idle
    sockets a walk a second was a tenth of the process's CPU."""

    class Holder:
        sockets = 0
        walks = 0

        def held_tabs(self) -> list[object]:
            self.walks += 1
            return []

        def store_state(self) -> tuple[bool, int]:
            return False, 0

        async def room_counts(self) -> list[tuple[str, int]]:
            return []

    def lag_count() -> float:
        return next(
            s.value
            for s in metrics.EVENT_LOOP_LAG.collect()[0].samples
            if s.name.endswith("_count")
        )

    holder = Holder()
    before = lag_count()
    sampler = metrics.Sampler(holder, None, interval=UNIT / 10, gauges_interval=UNIT)
    async with sampler.running():
        while lag_count() - before < 40:  # noqa: ASYNC110 - a count, not an event
            await asyncio.sleep(UNIT / 10)
    ticks = lag_count() - before
    assert 1 <= holder.walks <= ticks / 4, (holder.walks, ticks)
