"""Idle sessions: what a connected, silent browser tab costs the server.

Each round starts the server (service, then floor: A B A B ...) pinned to its CPU, opens
sockets in steps up to each N in ``sizes.steps`` and, at each plateau, reads

- RSS (VmRSS) after the step, for the per-session slope across N;
- server CPU time over a steady window in which uvicorn pings every socket every
  ``ping_interval`` seconds and the refresher ticks as often, for CPU per session-second;
- the client-side time from TCP connect to the first message (the service's snapshot,
  the floor's stand-in) for the handshakes of the step, its rate, and the server CPU
  each handshake took;
- Redis's slowlog (round trips) and ``INFO commandstats`` (commands run, Lua included)
  over the window, per refresher tick.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from . import _clients, _procs, _redis, _servers, _stats


@dataclass(frozen=True)
class Sizes:
    # 1k, 5k and 10k are where issue 13 compares CPU with the stock floor; 15k is where
    # it bounds the stall.
    steps: tuple[int, ...] = (1_000, 5_000, 10_000, 15_000)
    rounds: int = 3
    ping_interval: float = 5.0
    window: float = 15.0
    trip_window: float = 10.0
    settle: float = 3.0
    in_flight: int = 64
    # A refused handshake is tried again (a second later) up to this many times, so a
    # step reaches its N; the refusals are reported.
    retries: int = 3
    per_user: int = 5
    # The servers measured, one after another in each round (see _servers.SERVER_KINDS): the
    # service and its floor on our protocol, and both on uvicorn's stock one
    # (PRESENCE_WS_PROTOCOL=websockets-sansio), so that the price of each is on record.
    kinds: tuple[str, ...] = ("service", "stock", "floor", "stock-floor")
    # Then, at the top N, this many sockets are dropped at once and reconnect straight
    # away (``in_flight`` handshakes at a time) while the stall probe runs: issue 13
    # bounds the stall during such a storm too.
    storm: int = 10_000


FULL = Sizes()
QUICK = Sizes(
    steps=(10, 20, 40),
    rounds=1,
    ping_interval=0.5,
    window=1.2,
    trip_window=1.2,
    settle=0.3,
    storm=20,
)


def run(sizes: Sizes = FULL) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for number in range(sizes.rounds):
        for kind in sizes.kinds:
            _procs.log(f"idle: round {number + 1}/{sizes.rounds}, {kind}")
            started = time.monotonic()
            measured = _round(kind, sizes)
            rounds.append(
                {"round": number, "kind": kind, "quiet": _procs.quiet_since(started), **measured}
            )
    return {"sizes": asdict(sizes), "rounds": rounds, "summary": _summarize(rounds, sizes)}


def _round(kind: str, sizes: Sizes) -> dict[str, Any]:
    top = max(sizes.steps)
    warmup = 10
    with _redis.RedisServer("idle") as redis_server:
        config = _servers.ServerConfig(
            redis_url=redis_server.url if _servers.is_service(kind) else None,
            ttl_seconds=3600.0,
            heartbeat_interval=sizes.ping_interval,
        )
        owners = _clients.users_for(top + warmup, sizes.per_user)
        if _servers.is_service(kind):
            clients = _clients.create_sessions(redis_server.url, owners, ttl=config.ttl_seconds)
        else:
            # The floor checks nothing; the ids only have to look like the service's.
            clients = [_clients.Client(user, f"{i:022d}") for i, user in enumerate(owners)]
        with _servers.Server(kind, config) as server, _clients.Loader(f"idle-{kind}") as loader:
            tokens = _clients.tokens_for(clients)
            specs = [client.spec(server.port, tokens) for client in clients]
            addresses = _clients.ADDRESSES.take(top + warmup)
            # A few sockets first, so that what is imported or cached on first use is
            # in the baseline and not in the slope.
            loader.request({"cmd": "open", "clients": specs[:warmup], "addresses": addresses})
            time.sleep(sizes.settle)
            baseline_rss = server.rss_kib()
            baseline_cpu_rate = _cpu_rate(server, sizes.window / 2)
            opened = warmup
            previous_rate = baseline_cpu_rate
            plateaus = []
            for step in sizes.steps:
                cpu_before = server.cpu_seconds()
                ramp = loader.request(
                    {
                        "cmd": "open",
                        "clients": specs[opened : step + warmup],
                        "addresses": addresses,
                        "concurrency": sizes.in_flight,
                        "retries": sizes.retries,
                    }
                )
                ramp_cpu = server.cpu_seconds() - cpu_before
                handshakes = ramp["opened"]
                # What the server spent on the handshakes themselves, not on pinging the
                # sockets already open while they ran.
                handshake_cpu = max(0.0, ramp_cpu - previous_rate * ramp["elapsed"])
                opened = step + warmup
                time.sleep(sizes.settle)
                rss_after_step = server.rss_kib()
                # Two windows: commandstats (work done, time inside Redis), then the
                # slowlog (round trips), which slows the scripts it logs.
                client = redis_server.client()
                stats = _redis.CommandStats(client)
                trips = _redis.RoundTrips(client)
                cpu_before, cpu_started = server.cpu_seconds(), time.monotonic()
                stats.start()
                with _servers.StallProbe(server) as probe:
                    time.sleep(sizes.window)
                executed = stats.stop()
                trips.start()
                time.sleep(sizes.trip_window)
                round_trips = trips.stop()
                cpu_rate = (server.cpu_seconds() - cpu_before) / (time.monotonic() - cpu_started)
                previous_rate = cpu_rate
                status = loader.request({"cmd": "status"})
                sockets = (
                    server.get("/readyz")[1].get("sockets") if _servers.is_service(kind) else None
                )
                ticks = round_trips.get("evalsha REFRESH", 0)
                # redis-py PINGs a connection idle for 30 s (its health check): that
                # follows the clock, not the ticks, and is counted apart.
                health_checks = round_trips.get("ping", 0)
                # The node lease's calls follow the clock too (once a second each).
                lease = sum(round_trips.get(name, 0) for name in _redis.LEASE_TRIPS)
                # In the steady state the refresher's REFRESH is the only script run.
                evalsha = executed.get("evalsha", {"calls": 0, "usec": 0})
                plateaus.append(
                    {
                        "n": step,
                        "open_clients": status["open"] - warmup,
                        "server_sockets": None if sockets is None else sockets - warmup,
                        "failures": status["failures"],
                        "closes": status["closes"],
                        "rss_kib": rss_after_step,
                        "rss_end_kib": server.rss_kib(),
                        "cpu_per_s": cpu_rate,
                        "handshakes": handshakes,
                        "handshake_failed": ramp["failed"],
                        "handshake_rate": ramp["rate"],
                        "handshake_ms": ramp["handshake_ms"],
                        "handshake_cpu_ms": handshake_cpu / handshakes * 1000
                        if handshakes
                        else None,
                        "loop_stall": probe.summary(),
                        "refresher_ticks": ticks,
                        "round_trips": round_trips,
                        "round_trips_per_tick": (
                            (sum(round_trips.values()) - health_checks - lease) / ticks
                            if ticks
                            else None
                        ),
                        "lease_round_trips_per_s": lease / sizes.trip_window,
                        "round_trips_per_tick_with_pings": (
                            sum(round_trips.values()) / ticks if ticks else None
                        ),
                        "redis_commands_per_tick": (
                            sum(c["calls"] for c in executed.values()) / evalsha["calls"]
                            if evalsha["calls"]
                            else None
                        ),
                        "refresh_redis_us": (
                            evalsha["usec"] / evalsha["calls"] if evalsha["calls"] else None
                        ),
                        "executed": executed,
                    }
                )
                _procs.log(
                    f"idle {kind} n={step}: rss={rss_after_step} KiB "
                    f"cpu={cpu_rate * 1000:.1f} ms/s rate={ramp['rate']:.0f}/s "
                    f"open={status['open'] - warmup} failed={ramp['failed']}"
                )
            # The reconnect storm at the top N.
            with _servers.StallProbe(server) as probe:
                stormed = loader.request(
                    {
                        "cmd": "reconnect",
                        "count": min(sizes.storm, top),
                        "addresses": addresses,
                        "concurrency": sizes.in_flight,
                        "retries": sizes.retries,
                    }
                )
                time.sleep(sizes.settle)
            status = loader.request({"cmd": "status"})
            storm = {
                "count": min(sizes.storm, top),
                "reopened": stormed["opened"],
                "failed": stormed["failed"],
                "elapsed_s": stormed["elapsed"],
                "rate": stormed["rate"],
                "open_after": status["open"] - warmup,
                "loop_stall": probe.summary(),
            }
            _procs.log(
                f"idle {kind} storm of {storm['count']}: back {stormed['opened']} in "
                f"{stormed['elapsed']:.1f} s, stall max {storm['loop_stall']['max_ms']:.0f} ms"
            )
            breaker = server.breaker_causes()
            gc_pauses = server.gc_pauses_ms()
        # The fit is over the sockets actually open, should some have been refused.
        ns = [p["open_clients"] for p in plateaus]
        return {
            "breaker_causes": breaker,
            "gc_pauses_ms": gc_pauses,
            "storm": storm,
            "baseline_rss_kib": baseline_rss,
            "baseline_cpu_per_s": baseline_cpu_rate,
            "plateaus": plateaus,
            "rss_kib_per_session": _stats.slope(ns, [p["rss_kib"] for p in plateaus]),
            "cpu_us_per_session_s": _stats.slope(ns, [p["cpu_per_s"] * 1e6 for p in plateaus]),
            "cpu_us_per_session_s_at_top": plateaus[-1]["cpu_per_s"] * 1e6 / max(1, ns[-1]),
        }


def _cpu_rate(server: _servers.Server, window: float) -> float:
    before = server.cpu_seconds()
    started = time.monotonic()
    time.sleep(window)
    return (server.cpu_seconds() - before) / (time.monotonic() - started)


def _summarize(rounds: list[dict[str, Any]], sizes: Sizes) -> dict[str, Any]:
    kinds = [k for k in sizes.kinds if any(r["kind"] == k for r in rounds)]

    def of(kind: str, key: str) -> list[float]:
        return [r[key] for r in rounds if r["kind"] == kind]

    def plateau(kind: str, key: str, index: int = -1) -> list[Any]:
        return [r["plateaus"][index][key] for r in rounds if r["kind"] == kind]

    def storm_stall(key: str) -> dict[str, dict[str, float]]:
        # The reconnect storm's /healthz waits, by kind, over the rounds that ran one.
        return {
            k: _stats.summary(
                r["storm"]["loop_stall"][key] for r in rounds if r["kind"] == k and "storm" in r
            )
            for k in kinds
        }

    def ratios(kind: str, floor: str, key: str) -> dict[str, float]:
        # Within each round: the kind and its floor were measured back to back.
        return _stats.summary(s / f for s, f in zip(of(kind, key), of(floor, key), strict=True))

    def ratios_at(kind: str, floor: str, index: int) -> dict[str, float]:
        # The whole CPU rate at one N (fixed costs included), within each round.
        ours, theirs = plateau(kind, "cpu_per_s", index), plateau(floor, "cpu_per_s", index)
        return _stats.summary(s / f for s, f in zip(ours, theirs, strict=True) if f)

    # Every measured kind against each floor measured: its own (same protocol), and ours.
    floors = [k for k in kinds if not _servers.is_service(k)]
    ratio_table = {
        kind: {
            floor: {
                "rss": ratios(kind, floor, "rss_kib_per_session"),
                "cpu": ratios(kind, floor, "cpu_us_per_session_s"),
                "cpu_by_n": {str(n): ratios_at(kind, floor, i) for i, n in enumerate(sizes.steps)},
            }
            for floor in floors
            if floor != kind
        }
        for kind in kinds
    }
    per_tick = [
        p["round_trips_per_tick"]
        for r in rounds
        if r["kind"] == "service"
        for p in r["plateaus"]
        if p["round_trips_per_tick"] is not None
    ]
    nan = _stats.summary([])
    result: dict[str, Any] = {
        "kinds": kinds,
        "ratios": ratio_table,
        "rss_kib_per_session": {k: _stats.summary(of(k, "rss_kib_per_session")) for k in kinds},
        "rss_ratio": ratio_table.get("service", {}).get("floor", {}).get("rss", nan),
        "cpu_us_per_session_s": {k: _stats.summary(of(k, "cpu_us_per_session_s")) for k in kinds},
        "cpu_ratio": ratio_table.get("service", {}).get("floor", {}).get("cpu", nan),
        "cpu_us_per_session_s_at_top": {
            k: _stats.summary(of(k, "cpu_us_per_session_s_at_top")) for k in kinds
        },
        "cpu_us_per_session_s_by_n": {
            k: {
                str(n): _stats.summary(
                    r["plateaus"][i]["cpu_per_s"] * 1e6 / max(1, r["plateaus"][i]["open_clients"])
                    for r in rounds
                    if r["kind"] == k
                )
                for i, n in enumerate(sizes.steps)
            }
            for k in kinds
        },
        "handshake_p99_ms": {
            k: _stats.summary(x["p99"] for x in plateau(k, "handshake_ms")) for k in kinds
        },
        "handshake_cpu_ms": {
            k: _stats.summary(x for x in plateau(k, "handshake_cpu_ms") if x is not None)
            for k in kinds
        },
        "round_trips_per_tick": _stats.summary(per_tick),
        "loop_stall_p99_ms": {
            k: _stats.summary(
                r["plateaus"][-1]["loop_stall"]["p99_ms"] for r in rounds if r["kind"] == k
            )
            for k in kinds
        },
        "storm_stall_max_ms": storm_stall("max_ms"),
        "storm_stall_p99_ms": storm_stall("p99_ms"),
        "storm_all_back": all(
            r["storm"]["open_after"] == r["plateaus"][-1]["n"] for r in rounds if "storm" in r
        ),
        "round_trips_per_tick_max": max(per_tick, default=float("nan")),
        "redis_commands_per_tick_by_n": {
            str(n): _stats.summary(
                r["plateaus"][i]["redis_commands_per_tick"]
                for r in rounds
                if r["kind"] == "service" and r["plateaus"][i]["redis_commands_per_tick"]
            )
            for i, n in enumerate(sizes.steps)
        },
        "refresh_redis_ms_by_n": {
            str(n): _stats.summary(
                r["plateaus"][i]["refresh_redis_us"] / 1000
                for r in rounds
                if r["kind"] == "service" and r["plateaus"][i]["refresh_redis_us"]
            )
            for i, n in enumerate(sizes.steps)
        },
        # Also "handshake_rate" and "loop_stall_max_ms" (the last step's).
        **_stats.plateaus_summary(
            rounds,
            kinds,
            lambda p: p["open_clients"] == p["n"] and p["server_sockets"] in (None, p["n"]),
        ),
    }
    return result
