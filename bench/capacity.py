"""Capacity: as many sessions as the machine holds, over several server processes, kept
alive by the refresher alone for minutes with a short TTL.

The server processes are separate ``presence serve`` processes on their own ports (as
behind a load balancer), all pinned to the server CPU; the clients are split between
them and between load processes (each may open at most ``ulimit -n`` files). Sessions
are created in chunks just before their sockets open, because their TTL is short.

During the hold it samples, every ``sample_every`` seconds: open sockets on both sides,
the session keys in Redis, and Redis's ``expired_keys`` counter. A spurious expiry is a
session key that Redis expired, or that is missing at the end, while its socket was
open; a drop is a socket that closed or got an ``ended`` message.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from presence import keys

from . import _clients, _procs, _redis, _servers
from .idle import _cpu_rate


@dataclass(frozen=True)
class Sizes:
    sessions: int = 40_000
    processes: int = 3
    loaders: int = 4
    ttl: float = 60.0
    hold: float = 300.0
    sample_every: float = 10.0
    chunk: int = 5_000
    in_flight: int = 64
    # A refused handshake is tried again a second later, up to this many times.
    retries: int = 3
    per_user: int = 5


FULL = Sizes()
QUICK = Sizes(sessions=60, processes=2, loaders=2, ttl=3.0, hold=4.0, sample_every=1.0, chunk=30)


def run(sizes: Sizes = FULL) -> dict[str, Any]:
    with _redis.RedisServer("capacity") as redis_server:
        config = _servers.ServerConfig(redis_url=redis_server.url, ttl_seconds=sizes.ttl)
        # uvicorn's default ping interval (30 s) would outlive a TTL this short; the
        # refresher ticks at TTL/3 whatever it is, and pings follow the service default
        # unless that is longer than the TTL allows.
        config.heartbeat_interval = min(30.0, sizes.ttl / 2)
        config.ping_timeout = min(20.0, sizes.ttl / 3)
        servers = [_servers.Server("service", config) for _ in range(sizes.processes)]
        try:
            for server in servers:
                server.start()
            with _clients.loaders(sizes.loaders, "capacity") as loads:
                result = _hold(sizes, redis_server, servers, loads)
        finally:
            for server in servers:
                server.kill()
    return {"sizes": asdict(sizes), **result}


def _hold(
    sizes: Sizes,
    redis_server: _redis.RedisServer,
    servers: list[_servers.Server],
    loads: list[_clients.Loader],
) -> dict[str, Any]:
    client = redis_server.client()
    owners = _clients.users_for(sizes.sessions, sizes.per_user, "c")
    all_clients: list[_clients.Client] = []
    # Which clients each load process holds, in the order it opened them.
    held: list[list[_clients.Client]] = [[] for _ in loads]
    ramp_started = time.monotonic()
    failures: dict[str, int] = {}
    for start in range(0, sizes.sessions, sizes.chunk):
        chunk = _clients.create_sessions(
            redis_server.url, owners[start : start + sizes.chunk], ttl=sizes.ttl
        )
        all_clients += chunk
        tokens = _clients.tokens_for(chunk)
        # Spread over servers and load processes round-robin.
        for index, load in enumerate(loads):
            mine = chunk[index :: len(loads)]
            held[index] += mine
            specs = [
                c.spec(servers[(start + index + j * len(loads)) % len(servers)].port, tokens)
                for j, c in enumerate(mine)
            ]
            load.send(
                {
                    "cmd": "open",
                    "clients": specs,
                    "addresses": _clients.ADDRESSES.take(len(specs)),
                    "concurrency": max(1, sizes.in_flight // len(loads)),
                    "retries": sizes.retries,
                }
            )
        for load in loads:
            reply = load.receive()
            for kind, count in reply["failed"].items():
                failures[kind] = failures.get(kind, 0) + count
        _procs.log(f"capacity: {start + len(chunk)} sessions opened")
    ramp_seconds = time.monotonic() - ramp_started
    expired_before = int(client.info("stats")["expired_keys"])
    samples = []
    hold_started = time.monotonic()
    while True:
        elapsed = time.monotonic() - hold_started
        statuses = [load.request({"cmd": "status"}) for load in loads]
        sockets = [server.get("/readyz")[1]["sockets"] for server in servers]
        samples.append(
            {
                "t": elapsed,
                "client_open": sum(s["open"] for s in statuses),
                "server_sockets": sum(sockets),
                "redis_keys": _keys(client),
                "expired_keys": int(client.info("stats")["expired_keys"]) - expired_before,
                "drops": sum(sum(s["closes"].values()) for s in statuses),
                "ended": sum(sum(s["ended"].values()) for s in statuses),
            }
        )
        if elapsed >= sizes.hold:
            break
        time.sleep(max(0.0, min(sizes.sample_every, sizes.hold - elapsed)))
    last = samples[-1]
    # Every session whose socket is open must still have its key, each checked by name.
    connected: list[_clients.Client] = []
    for load, clients in zip(loads, held, strict=True):
        flags = load.request({"cmd": "open_map"})["map"]
        connected += [c for c, flag in zip(clients, flags, strict=True) if flag == "1"]
    # A user's first session lives in the user's lone slot (its value starts with the
    # session id), any other in a key of its own: see presence/keys.py.
    pipe = client.pipeline(transaction=False)
    for c in connected:
        pipe.exists(keys.session_key("presence", c.user, c.session_id))
        pipe.get(keys.lone_key("presence", c.user))
    found = pipe.execute()
    missing = sum(
        1
        for c, own, lone in zip(connected, found[::2], found[1::2], strict=True)
        if not own and not (lone or "").startswith(f"{c.session_id}|")
    )
    never_connected = len(all_clients) - len(connected)
    breaker: dict[str, int] = {}
    for server in servers:
        for cause, count in server.breaker_causes().items():
            breaker[cause] = breaker.get(cause, 0) + count
    rss = [server.rss_kib() for server in servers]
    cpu = [_cpu_rate(server, 2.0) for server in servers]
    statuses = [load.request({"cmd": "status"}) for load in loads]
    memory = client.info("memory")
    return {
        "requested": sizes.sessions,
        "connected": min(s["client_open"] for s in samples),
        # One key per session, and an index per user with more than one.
        "expected_keys": len(all_clients) + sum(1 for n in Counter(owners).values() if n > 1),
        "ramp_seconds": ramp_seconds,
        "ramp_failures": failures,
        "samples": samples,
        # Keys Redis expired during the hold belong to open sockets unless some sessions
        # never got theirs (their keys expire by design); then only the name check counts.
        "spurious_expiries": missing + (last["expired_keys"] if never_connected == 0 else 0),
        "missing_at_end": missing,
        "never_connected": never_connected,
        "expired_keys_during_hold": last["expired_keys"],
        "drops": last["drops"] + last["ended"],
        "breaker_causes": breaker,
        "close_codes": {k: v for s in statuses for k, v in s["closes"].items()},
        "server_rss_mib": [r / 1024 for r in rss],
        "server_cpu_per_s": cpu,
        "load_rss_mib": [_procs.rss_kib(load.pid) / 1024 for load in loads],
        "redis_used_mib": int(memory["used_memory"]) / 1024 / 1024,
        "held_seconds": samples[-1]["t"],
    }


def _keys(client: Any) -> int:
    keyspace = client.info("keyspace").get("db0", {})
    return int(keyspace.get("keys", 0))
