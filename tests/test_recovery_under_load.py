"""Recovery from a Redis stall under real load: ``wrk`` heartbeats at full speed from 32
connections against a ``presence serve`` child process while its Redis is stopped for
3 s (SIGSTOP) and resumed.

The process must leave degraded mode within seconds of Redis coming back while the load
goes on (the journal that the load refills is replayed with the breaker closed), answer
200 for sessions that another process made, and leave in Redis every heartbeat it
acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench._wrk import heartbeat_script

from .test_faults import _ms, _redis_state
from .utils import JWT_SECRET, UNIT, RedisServer, server_process, token

pytestmark = [pytest.mark.redis, pytest.mark.slow]

BASE = "/api/v1/chat"
TTL_HOURS = 1.0
USERS = [f"load{n}" for n in range(40)]
PER_USER = 5  # 200 sessions
CONNECTIONS = 32
WARM_UP = 20 * UNIT
STALL = 30 * UNIT
# Redis is probed twice a second; the replay of 200 heartbeats takes a few round trips.
# Before the batched write-back and the early close of the breaker, a process under this
# load stayed degraded until the load stopped.
RECOVERED_WITHIN = 50 * UNIT
HANG = 30 * UNIT


@contextlib.contextmanager
def _wrk(script: Path, port: int, seconds: int) -> Iterator[subprocess.Popen[str]]:
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk is not installed (.ci/run and scripts/bench install it)")
    command = [wrk, "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s"]
    process = subprocess.Popen(
        [*command, "-s", str(script), f"http://127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


async def _poll(fetch, accept, seconds: float):
    """Calls ``fetch`` every unit until ``accept`` takes its result; returns it."""
    async with asyncio.timeout(seconds):
        while not accept(result := await fetch()):  # noqa: ASYNC110 - another process's state
            await asyncio.sleep(UNIT)
    return result


async def _readyz(client: httpx.AsyncClient) -> dict:
    return (await client.get("/readyz")).json()


async def _create(client: httpx.AsyncClient, user: str) -> str:
    response = await client.post(
        f"{BASE}/sessions", headers={"authorization": f"Bearer {token(user)}"}, json={}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _statuses(client: httpx.AsyncClient, sessions: list[tuple[str, str]]) -> list[int]:
    responses = await asyncio.gather(
        *(
            client.get(f"{BASE}/sessions/{sid}", headers={"authorization": f"Bearer {token(user)}"})
            for sid, user in sessions
        )
    )
    return [r.status_code for r in responses]


async def test_a_process_under_load_leaves_degraded_mode_soon_after_redis_returns(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """With heartbeats at full speed on 200 sessions, a process whose Redis stalled for
    3 s is ready again within a few seconds of Redis resuming while the load goes on,
    answers 200 (not 503) for sessions another process made, and afterwards Redis holds
    every heartbeat it acknowledged, with a full TTL from it."""
    env = {
        "REDIS_URL": own_redis.url,
        "PRESENCE_JWT_SECRET": JWT_SECRET,
        "SESSION_TTL_HOURS": str(TTL_HOURS),
        "LOG_LEVEL": "warning",
    }
    seconds = math.ceil(WARM_UP + STALL + RECOVERED_WITHIN + 30 * UNIT)
    with server_process(env) as loaded, server_process(env) as other:
        async with (
            httpx.AsyncClient(base_url=loaded.http, timeout=HANG) as client,
            httpx.AsyncClient(base_url=other.http, timeout=HANG) as elsewhere,
        ):
            sessions = [
                (await _create(client, user), user) for user in USERS for _ in range(PER_USER)
            ]
            # Made through the other process, so the loaded one never saw them: users with
            # no writes in its journal, and users whose sessions are under load.
            theirs = [(await _create(elsewhere, f"other{n}"), f"other{n}") for n in range(10)]
            theirs += [(await _create(elsewhere, user), user) for user in USERS[:10]]
            script = heartbeat_script(
                tmp_path / "heartbeat.lua",
                ((f"{BASE}/sessions/{sid}/heartbeat", token(user)) for sid, user in sessions),
                writer="tests/test_recovery_under_load.py",
                track_seen=True,
            )
            with _wrk(script, loaded.port, seconds) as wrk:
                await asyncio.sleep(WARM_UP)
                own_redis.pause()
                try:
                    await asyncio.sleep(STALL)
                    assert (await _readyz(client))["status"] == "degraded"
                    assert set(await _statuses(client, theirs)) == {503}
                finally:
                    own_redis.resume()
                resumed = time.monotonic()
                status = await _poll(
                    lambda: _readyz(client), lambda s: s["status"] == "ready", RECOVERED_WITHIN
                )
                ready_after = time.monotonic() - resumed
                assert wrk.poll() is None, "the load ended before the process was ready"
                answers = await _poll(
                    lambda: _statuses(client, theirs), lambda a: set(a) == {200}, RECOVERED_WITHIN
                )
                served_after = time.monotonic() - resumed
                assert wrk.poll() is None, "the load ended before the sessions were served"
                out, err = wrk.communicate(timeout=seconds + HANG)
            assert wrk.returncode == 0, err
            await _poll(lambda: _readyz(client), lambda s: s["pending_writes"] == 0, HANG)
    print(
        f"\nready {ready_after:.2f} s after SIGCONT (readyz then: {status}); "
        f"other process's sessions 200 after {served_after:.2f} s (last answers {answers})"
    )
    statuses = {
        int(code): int(count)
        for code, count in (
            line.split()[1:] for line in out.splitlines() if line.startswith("status")
        )
    }
    acknowledged = {
        sid: _ms(at)
        for sid, at in (line.split()[1:] for line in out.splitlines() if line.startswith("seen "))
    }
    print(f"wrk statuses: {statuses}")
    assert 404 not in statuses, "a session under load was lost"
    assert set(acknowledged) == {sid for sid, _ in sessions}
    state = await _redis_state(own_redis.url, USERS + [f"other{n}" for n in range(10)])
    held = {sid: entry for user_sessions in state.values() for sid, entry in user_sessions.items()}
    assert set(held) == {sid for sid, _ in sessions + theirs}
    for sid, last_seen in acknowledged.items():
        assert held[sid]["seen"] >= last_seen, "an acknowledged heartbeat is missing in Redis"
        assert held[sid]["expires"] >= last_seen + TTL_HOURS * 3600 * 1000 - 1000
