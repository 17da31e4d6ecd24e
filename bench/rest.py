"""REST heartbeat: ``wrk`` POSTing heartbeats at a fixed number of connections.

The service answers each with a Lua TOUCH on a real redis-server; the floor is a bare
Starlette JSON endpoint on the same uvicorn options that reads the body and answers an
object of the same shape. Both servers run side by side (only the one under load does
work) and runs alternate: A B A B ... after one warm-up run of each. Requests cycle over
``sessions`` sessions of ``sessions / per_user`` users, each with its own bearer token.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import _clients, _procs, _redis, _servers, _stats
from ._wrk import heartbeat_script


@dataclass(frozen=True)
class Sizes:
    connections: int = 64
    duration: float = 10.0
    warmup: float = 3.0
    # Five, not three: on this shared host a round of either variant now and then runs
    # at half speed (seen 2 of 6 in one run, service and floor alike), and the median of
    # three then rests on one good round.
    rounds: int = 5
    sessions: int = 1_000
    per_user: int = 5


#: The servers measured, side by side.
KINDS = ("service", "floor")

FULL = Sizes()
QUICK = Sizes(connections=4, duration=1.0, warmup=0.5, rounds=1, sessions=20)


def run(sizes: Sizes = FULL) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (scripts/bench installs it)")
    with _redis.RedisServer("rest") as redis_server:
        config = _servers.ServerConfig(redis_url=redis_server.url, ttl_seconds=3600.0)
        clients = _clients.create_sessions(
            redis_server.url, _clients.users_for(sizes.sessions, sizes.per_user, "w"), ttl=3600.0
        )
        tokens = _clients.tokens_for(clients)
        script = _script(clients, tokens)
        servers = {kind: _servers.Server(kind, config) for kind in KINDS}
        rounds = []
        try:
            for server in servers.values():
                server.start()
            for server in servers.values():
                _wrk(wrk, server.port, script, sizes.connections, sizes.warmup)
            for number in range(sizes.rounds):
                for kind, server in servers.items():
                    cpu_before = server.cpu_seconds()
                    result = _wrk(wrk, server.port, script, sizes.connections, sizes.duration)
                    result["server_cpu_s"] = server.cpu_seconds() - cpu_before
                    rounds.append({"round": number, "kind": kind, **result})
                    _procs.log(
                        f"rest {kind}: {result['requests_per_s']:.0f} req/s "
                        f"p99={result['p99_ms']:.1f} ms statuses={result['statuses']}"
                    )
        finally:
            for server in servers.values():
                server.kill()
    return {"sizes": asdict(sizes), "rounds": rounds, "summary": _summarize(rounds)}


def _script(clients: list[_clients.Client], tokens: dict[str, str]) -> Path:
    """The wrk script heartbeating each client's session round-robin."""
    return heartbeat_script(
        _procs.WORK / "tmp" / "heartbeat.lua",
        ((f"/api/v1/chat/sessions/{c.session_id}/heartbeat", tokens[c.user]) for c in clients),
        writer="bench/rest.py: one heartbeat per session, round-robin",
    )


def _wrk(wrk: str, port: int, script: Path, connections: int, duration: float) -> dict[str, Any]:
    cmd = _procs.pinned(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "--timeout",
            "5s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        _procs.LOAD_CPU,
    )
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {**_parse(out), "wall_s": time.monotonic() - started}


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _parse(out: str) -> dict[str, Any]:
    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"wrk printed no {label} latency:\n{out}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:\s+(.*)$", out, re.MULTILINE)
    statuses = {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^status (\d+) (\d+)$", out, re.M)
    }
    if rate is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {
        "requests_per_s": float(rate.group(1)),
        "requests": int(total.group(1)),
        "p50_ms": latency("50%"),
        "p90_ms": latency("90%"),
        "p99_ms": latency("99%"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
        "statuses": statuses,
    }


def _summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def of(kind: str, key: str) -> list[Any]:
        return [r[key] for r in rounds if r["kind"] == kind]

    pairs = list(zip(of("service", "requests_per_s"), of("floor", "requests_per_s"), strict=True))
    return {
        "requests_per_s": {k: _stats.summary(of(k, "requests_per_s")) for k in KINDS},
        "throughput_ratio": _stats.summary(s / f for s, f in pairs),
        "p99_ms": {k: _stats.summary(of(k, "p99_ms")) for k in KINDS},
        "p50_ms": {k: _stats.summary(of(k, "p50_ms")) for k in KINDS},
        "cpu_ms_per_request": {
            k: _stats.summary(
                r["server_cpu_s"] * 1000 / r["requests"] for r in rounds if r["kind"] == k
            )
            for k in KINDS
        },
        "non_2xx": {k: sum(of(k, "non_2xx")) for k in KINDS},
    }
