"""Reconnect storm: restart the server under connected clients that follow the browser
client's own reconnect schedule, and time how long until every one is back.

Each round (service, then floor: A B A B ...) opens ``clients`` sockets in ``browser``
mode (see :mod:`bench._load`: an immediate REST heartbeat on loss, then a new socket after
full-jitter backoff, 0.5 s base, 30 s cap), waits until they have been up longer than
the client's ``stableMs``, then sends the server SIGTERM, waits for it to exit (uvicorn
closes every socket with 1012 and the service marks each session disconnected) and
starts it again on the same port, as a deploy would. Time zero is the SIGTERM.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from . import _clients, _procs, _redis, _servers, _stats

# web/src/chatSessionManager.js: DEFAULT_BACKOFF and DEFAULT_HEARTBEAT_INTERVAL_MS.
JS_BACKOFF = {"base": 0.5, "cap": 30.0, "stable": 10.0}
JS_HEARTBEAT_INTERVAL = 30.0


# Each variant: the server kind and environment on top of the benchmark's own.
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "service": ("service", {}),
    "floor": ("floor", {}),
}


@dataclass(frozen=True)
class Sizes:
    clients: int = 10_000
    rounds: int = 3
    variants: tuple[str, ...] = tuple(VARIANTS)
    in_flight: int = 64
    up_before_restart: float = 11.0
    give_up_after: float = 60.0
    per_user: int = 5


FULL = Sizes()
QUICK = Sizes(
    clients=30, rounds=1, variants=("service", "floor"), up_before_restart=0.5, give_up_after=30.0
)


def run(sizes: Sizes = FULL) -> dict[str, Any]:
    rounds = []
    for number in range(sizes.rounds):
        for variant in sizes.variants:
            _procs.log(f"storm: round {number + 1}/{sizes.rounds}, {variant}")
            rounds.append({"round": number, "kind": variant, **_round(variant, sizes)})
    return {
        "sizes": asdict(sizes),
        "rounds": rounds,
        "summary": _summarize(rounds, sizes.variants),
    }


def _round(variant: str, sizes: Sizes) -> dict[str, Any]:
    kind, env = VARIANTS[variant]
    with _redis.RedisServer("storm") as redis_server:
        config = _servers.ServerConfig(
            redis_url=redis_server.url if kind == "service" else None,
            ttl_seconds=3600.0,
            extra_env=env,
        )
        owners = _clients.users_for(sizes.clients, sizes.per_user, "r")
        if kind == "service":
            clients = _clients.create_sessions(redis_server.url, owners, ttl=config.ttl_seconds)
        else:
            clients = [_clients.Client(user, f"{i:022d}") for i, user in enumerate(owners)]
        server = _servers.Server(kind, config)
        try:
            server.start()
            with _clients.Loader(f"storm-{kind}") as loader:
                tokens = _clients.tokens_for(clients)
                opened = loader.request(
                    {
                        "cmd": "open",
                        "clients": [c.spec(server.port, tokens) for c in clients],
                        "addresses": _clients.ADDRESSES.take(3 * sizes.clients),
                        "concurrency": sizes.in_flight,
                        "mode": "browser",
                        "backoff": JS_BACKOFF,
                        "heartbeat_interval": JS_HEARTBEAT_INTERVAL,
                        "timeout": 30.0,
                    }
                )
                time.sleep(sizes.up_before_restart)
                before = loader.request({"cmd": "status"})
                loader.request({"cmd": "mark"})
                tcp_before = _procs.tcp_counters()
                load_cpu_before = _procs.cpu_seconds(loader.pid)
                started = time.monotonic()
                shutdown_seconds = server.stop()
                server.start()
                down_seconds = time.monotonic() - started
                cpu_at_start = server.cpu_seconds()
                report = loader.request({"cmd": "storm"})
                while not report["all_back"] and time.monotonic() - started < sizes.give_up_after:
                    time.sleep(0.25)
                    report = loader.request({"cmd": "storm"})
                recovery_cpu = server.cpu_seconds() - cpu_at_start
                # The load client shares one CPU: when it is busy all the time, the
                # recovery is as fast as it can measure, not as fast as the server.
                load_busy = (_procs.cpu_seconds(loader.pid) - load_cpu_before) / (
                    time.monotonic() - started
                )
                tcp = {k: v - tcp_before.get(k, 0) for k, v in _procs.tcp_counters().items()}
            breaker = server.breaker_causes()
        finally:
            server.kill()
    errors_5xx = sum(
        count
        for failure, count in report["failures"].items()
        if failure.startswith(("http_5", "heartbeat_http_5"))
    )
    _procs.log(
        f"storm {variant}: all back={report['all_back']} in {report['back_s']['max']:.1f} s, "
        f"down {down_seconds:.1f} s, peak {max(report['connects_per_s'], default=0)}/s, "
        f"5xx={errors_5xx}, failures={report['failures']}, tcp={tcp}, breaker={breaker}"
    )
    return {
        "connected_before": before["open"],
        "initial_failures": opened["failed"],
        "shutdown_seconds": shutdown_seconds,
        "down_seconds": down_seconds,
        "all_back": report["all_back"],
        "lost": report["lost"],
        "back": report["back"],
        "back_p50_s": report["back_s"]["p50"],
        "all_back_s": report["back_s"]["max"] if report["all_back"] else None,
        "peak_connects_per_s": max(report["connects_per_s"], default=0),
        "connects_per_s": report["connects_per_s"],
        "errors_5xx": errors_5xx,
        "failures": report["failures"],
        "heartbeats": report["heartbeats"],
        "close_codes": report["closes"],
        "tcp": tcp,
        "load_cpu_busy": load_busy,
        "breaker_trips": sum(breaker.values()),
        "breaker_causes": breaker,
        "recovery_cpu_ms_per_reconnect": (
            recovery_cpu / report["back"] * 1000 if report["back"] else None
        ),
    }


def _summarize(rounds: list[dict[str, Any]], variants: tuple[str, ...]) -> dict[str, Any]:
    kinds = variants

    def of(kind: str, key: str) -> list[Any]:
        return [r[key] for r in rounds if r["kind"] == kind]

    return {
        "all_back_s": {
            k: _stats.summary(x if x is not None else float("inf") for x in of(k, "all_back_s"))
            for k in kinds
        },
        "back_p50_s": {k: _stats.summary(of(k, "back_p50_s")) for k in kinds},
        "down_s": {k: _stats.summary(of(k, "down_seconds")) for k in kinds},
        "peak_connects_per_s": {k: _stats.summary(of(k, "peak_connects_per_s")) for k in kinds},
        "errors_5xx": {k: sum(of(k, "errors_5xx")) for k in kinds},
        "all_back_every_round": {k: all(of(k, "all_back")) for k in kinds},
        "recovery_cpu_ms_per_reconnect": {
            k: _stats.summary(x for x in of(k, "recovery_cpu_ms_per_reconnect") if x is not None)
            for k in kinds
        },
        "connected_before": {k: of(k, "connected_before") for k in kinds},
        "handshake_404": {
            k: sum(r["failures"].get("http_404", 0) for r in rounds if r["kind"] == k)
            for k in kinds
        },
        "listen_overflows": {
            k: _stats.summary(r["tcp"].get("ListenOverflows", 0) for r in rounds if r["kind"] == k)
            for k in kinds
        },
        "breaker_trips": {k: sum(of(k, "breaker_trips")) for k in kinds},
        "load_cpu_busy": {
            k: _stats.summary(
                r["load_cpu_busy"] for r in rounds if r["kind"] == k and "load_cpu_busy" in r
            )
            for k in kinds
        },
    }
