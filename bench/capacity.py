"""Capacity with the service's defaults and presence on: as many sessions as the machine
holds, over several server processes and one Redis, each session's socket joined to
one of the rooms and watching it, held for minutes.

Nothing of the service's timing is changed: the session TTL (24 h), the ping interval
(30 s) and timeout, and so the refresher's tick (every 30 s), are its defaults. The
server processes are separate ``presence serve`` processes on their own ports (as
behind a load balancer), on ``server_cpus``; the sockets are spread over them
round-robin, and over load processes (:mod:`bench._fanout_load`, each may open at most
``ulimit -n`` files) bound to fresh loopback source addresses.

It goes in three steps, with Redis's ``used_memory`` read before the first and after
each, so that a session's bytes, a socket's (its tab) and a member's are each a
difference: every session is created (through the service's own store), every socket
opened, then every socket sends ``presence.join`` for its room and ``presence.watch``
of the same room, each accepted when its sync comes (one refused for a passing reason,
``store_unavailable`` say, is counted and sent again after a full-jitter delay, as the
JS client does, up to ``join_retries`` times). Session ``i`` belongs to user
``i // per_user`` and the user to room ``user % rooms``: with one session a user, a
room's members are its sockets.

During the hold it samples, every ``sample_every`` seconds: open sockets on both sides,
the keys in Redis, Redis's ``expired_keys`` counter, and what the sockets were told
(leaves by reason, ``ended``, errors). Redis's keyspace notifications name every key
that expires during the hold. A **spurious expiry** is a key that must live while its
socket is open (the session's key or its user's lone slot, the user's tabs, the room's
members and users) that expired during the hold, or a session key or a member missing
at the end while its socket is open (each checked by name); the room's bookkeeping
(versions and tombstones, a TTL of two minutes by design) may expire. A **drop** is a
socket that closed, an ``ended`` message, or a user whose socket is open told as
leaving its room.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from presence import keys
from presence.settings import Settings

from . import _clients, _procs, _redis, _servers
from .fanout import FanoutLoader

PREFIX = "presence"


@dataclass(frozen=True)
class Sizes:
    sessions: int = 100_000
    rooms: int = 1_000
    processes: int = 6
    loaders: int = 6
    hold: float = 600.0
    sample_every: float = 10.0
    chunk: int = 10_000
    in_flight: int = 64
    per_user: int = 1
    # A join or watch refused for a passing reason is sent again, up to this many times.
    join_retries: int = 5
    # The servers' CPUs (taskset -c); the load processes and redis-server are on the
    # load CPU. See bench/README.md for why the servers may use both.
    server_cpus: str = "0,1"


FULL = Sizes()
QUICK = Sizes(sessions=60, rooms=3, processes=2, loaders=2, hold=4.0, sample_every=1.0, chunk=30)


def _readyz(servers: list[_servers.Server]) -> tuple[list[int | None], list[float]]:
    """Each server's open sockets by its /readyz (None if it did not answer within the
    client's timeout), and how long each took to answer."""
    sockets: list[int | None] = []
    waits: list[float] = []
    for server in servers:
        started = time.monotonic()
        try:
            sockets.append(server.get("/readyz")[1]["sockets"])
        except (OSError, http.client.HTTPException):
            sockets.append(None)
        waits.append(time.monotonic() - started)
    return sockets, waits


def run(sizes: Sizes = FULL) -> dict[str, Any]:
    with _redis.RedisServer("capacity") as redis_server:
        # The service's own defaults: TTL, ping interval and timeout not passed. Rooms
        # open to any token (the tokens carry no rooms claim), as in the other presence
        # benchmarks.
        config = _servers.ServerConfig(
            redis_url=redis_server.url,
            service_defaults=True,
            extra_env={"PRESENCE_OPEN_ROOMS": "true"},
        )
        servers = [
            _servers.Server("service", config, cpu=sizes.server_cpus)
            for _ in range(sizes.processes)
        ]
        loads = []
        try:
            for server in servers:
                server.start()
            loads = [FanoutLoader(f"capacity{i}") for i in range(sizes.loaders)]
            result = _hold(sizes, redis_server, servers, loads)
        finally:
            for load in loads:
                load.close()
            for server in servers:
                server.kill()
    return {"sizes": asdict(sizes), **result}


def _room_of(user: str, sizes: Sizes) -> str:
    return f"cap.{int(user[1:]) % sizes.rooms}"


def _used(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def _hold(
    sizes: Sizes,
    redis_server: _redis.RedisServer,
    servers: list[_servers.Server],
    loads: list[FanoutLoader],
) -> dict[str, Any]:
    client = redis_server.client()
    ttl = Settings().session_ttl
    owners = _clients.users_for(sizes.sessions, sizes.per_user, "c")
    memory = {"before": _used(client)}
    ramp_cpu = [server.cpu_seconds() for server in servers]
    ramp_started = time.monotonic()

    # 1. Every session.
    all_clients: list[_clients.Client] = []
    for start in range(0, sizes.sessions, sizes.chunk):
        all_clients += _clients.create_sessions(
            redis_server.url, owners[start : start + sizes.chunk], ttl=ttl
        )
    created_s = time.monotonic() - ramp_started
    memory["sessions"] = _used(client)
    _procs.log(f"capacity: {len(all_clients)} sessions created in {created_s:.0f} s")

    # 2. Every socket, spread over servers and load processes round-robin.
    rss_before = [server.rss_kib() for server in servers]
    held: list[list[_clients.Client]] = [[] for _ in loads]
    failures: Counter[str] = Counter()
    for start in range(0, len(all_clients), sizes.chunk):
        chunk = all_clients[start : start + sizes.chunk]
        tokens = _clients.tokens_for(chunk)
        for index, load in enumerate(loads):
            mine = chunk[index :: len(loads)]
            held[index] += mine
            specs = [
                {
                    **c.spec(servers[(start + index + j * len(loads)) % len(servers)].port, tokens),
                    "user": c.user,
                    "room": _room_of(c.user, sizes),
                }
                for j, c in enumerate(mine)
            ]
            load.send(
                {
                    "cmd": "open",
                    "role": "room",
                    "clients": specs,
                    "addresses": _clients.ADDRESSES.take(len(specs)),
                    "concurrency": max(1, sizes.in_flight // len(loads)),
                }
            )
        for load in loads:
            reply = load.receive()
            failures.update(reply["failed"])
        _procs.log(f"capacity: {start + len(chunk)} sockets opened")
    opened_s = time.monotonic() - ramp_started - created_s
    memory["sockets"] = _used(client)

    # 3. Every socket joins its room and watches it.
    joins_started = time.monotonic()
    for load in loads:
        load.send(
            {
                "cmd": "join_watch",
                "concurrency": max(1, sizes.in_flight // len(loads)),
                "retries": sizes.join_retries,
            }
        )
    accepted: Counter[str] = Counter()
    join_other: Counter[str] = Counter()
    join_failures: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    for load in loads:
        reply = load.receive(timeout=1800)
        accepted.update(reply["accepted"])
        refusals.update(reply["refusals"])
        join_other.update(reply["other"])
        join_failures.update(reply["failed"])
    joined_s = time.monotonic() - joins_started
    ramp_seconds = time.monotonic() - ramp_started
    # The last diff windows flushed (a window is tens of ms) before memory is read.
    time.sleep(2.0)
    memory["joined"] = _used(client)
    members = len({c.user for c in all_clients})
    _procs.log(f"capacity: {accepted} in {joined_s:.0f} s; holding {sizes.hold:g} s")

    # What the sockets were told during the ramp (a leave then is a drop too).
    ramp_statuses = [load.request({"cmd": "room_status"}) for load in loads]
    ramp_left: dict[str, str] = {}
    for load in loads:
        ramp_left.update(load.request({"cmd": "left"})["left"])

    # The hold: counts from zero, every key that expires named.
    for load in loads:
        load.request({"cmd": "arm_leaves", "expected": {}})
    expired = _ExpiredKeys(redis_server)
    expired_before = int(client.info("stats")["expired_keys"])
    cpu_before = [server.cpu_seconds() for server in servers]
    ramp_cpu = [after - before for after, before in zip(cpu_before, ramp_cpu, strict=True)]
    samples = []
    hold_started = time.monotonic()
    with expired:
        while True:
            elapsed = time.monotonic() - hold_started
            statuses = [load.request({"cmd": "room_status"}) for load in loads]
            sockets, waits = _readyz(servers)
            samples.append(
                {
                    "t": elapsed,
                    "client_open": sum(s["open"] for s in statuses),
                    # None when a server did not answer /readyz within its timeout (a
                    # process stopped that long: a full collection, say).
                    "server_sockets": None if None in sockets else sum(filter(None, sockets)),
                    "readyz_unanswered": sum(n is None for n in sockets),
                    "readyz_longest_s": max(waits),
                    "redis_keys": _keys(client),
                    "expired_keys": int(client.info("stats")["expired_keys"]) - expired_before,
                    "closed": sum(s["closed"] for s in statuses),
                    "leaves": sum(sum(s["leaves"].values()) for s in statuses),
                    "ended": sum(
                        n for s in statuses for k, n in s["other"].items() if k.startswith("ended")
                    ),
                }
            )
            if elapsed >= sizes.hold:
                break
            time.sleep(max(0.0, min(sizes.sample_every, sizes.hold - elapsed)))
        held_seconds = time.monotonic() - hold_started
        cpu = [
            (server.cpu_seconds() - before) / held_seconds
            for server, before in zip(servers, cpu_before, strict=True)
        ]
        time.sleep(0.5)  # the last expiry events read
    statuses = [load.request({"cmd": "room_status"}) for load in loads]

    # Every open socket's session key and member, each checked by name.
    # "2": open, its join and watch accepted; "1": open, its join refused.
    connected: list[_clients.Client] = []
    joined: list[bool] = []
    for load, clients in zip(loads, held, strict=True):
        flags = load.request({"cmd": "open_map"})["map"]
        for c, flag in zip(clients, flags, strict=True):
            if flag != "0":
                connected.append(c)
                joined.append(flag == "2")
    missing_sessions, missing_members, missing_refused = _missing(client, connected, joined, sizes)
    open_users = {c.user for c in connected}
    left: dict[str, str] = {}
    for load in loads:
        left.update(load.request({"cmd": "left"})["left"])
    left_while_open = sum(1 for user in left if user in open_users)
    ramp_left_while_open = sum(1 for user in ramp_left if user in open_users)
    ramp_leaves: Counter[str] = Counter()
    for s in ramp_statuses:
        ramp_leaves.update(s["leaves"])
    must_live = _must_live(connected, sizes)
    expired_names = expired.names
    expired_must_live = sum(1 for name in expired_names if name in must_live)
    never_connected = len(all_clients) - len(connected)

    breaker: Counter[str] = Counter()
    for server in servers:
        breaker.update(server.breaker_causes())
    rss = [server.rss_kib() for server in servers]
    held_min = min(s["client_open"] for s in samples)
    leaves: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for s in statuses:
        leaves.update(s["leaves"])
        other.update(s["other"])
    ended = sum(n for k, n in other.items() if k.startswith("ended"))
    errors = {k: n for k, n in (join_other + other).items() if k.startswith("error")}
    per_session = max(1, len(all_clients))
    return {
        "requested": sizes.sessions,
        "connected": held_min,
        "members": members,
        "ramp_seconds": ramp_seconds,
        "ramp": {"create_s": created_s, "open_s": opened_s, "join_watch_s": joined_s},
        # The servers' CPU time over the ramp (sockets opened, joined and watching).
        "ramp_server_cpu_s": ramp_cpu,
        "ramp_failures": dict(failures),
        "joins_accepted": accepted["presence.join"],
        "watches_accepted": accepted["presence.watch"],
        "join_failures": dict(join_failures),
        # Every join or watch refused, those tried again (as the JS client does) and
        # accepted later included.
        "join_refusals": dict(refusals),
        "errors": errors,
        "samples": samples,
        "spurious_expiries": missing_sessions + missing_members + expired_must_live,
        "missing_at_end": missing_sessions,
        "members_missing_at_end": missing_members,
        "expired_keys_during_hold": samples[-1]["expired_keys"],
        "expired_during_hold_by_kind": dict(Counter(_kind(name) for name in expired_names)),
        "expired_must_live": expired_must_live,
        # The names of the keys expired during the hold, but the rooms' versions (by
        # design), at most 100: what expired that need not have.
        "expired_names": [n for n in expired_names if not n.endswith(":v")][:100],
        "never_connected": never_connected,
        "closed": samples[-1]["closed"],
        "ended": ended,
        "leaves_by_reason": dict(leaves),
        "users_told_a_leave": len(left),
        "users_told_a_leave_while_open": left_while_open,
        "ramp_leaves_by_reason": dict(ramp_leaves),
        "ramp_users_told_a_leave_while_open": ramp_left_while_open,
        "ramp_other_messages": dict(sum((Counter(s["other"]) for s in ramp_statuses), Counter())),
        "members_missing_of_refused_joins": missing_refused,
        "drops": samples[-1]["closed"] + ended + left_while_open + ramp_left_while_open,
        "gaps": sum(s["gaps"] for s in statuses),
        "other_messages": {k: n for k, n in other.items() if not k.startswith(("error", "ended"))},
        "breaker_causes": dict(breaker),
        "server_rss_mib": [r / 1024 for r in rss],
        "rss_kib_per_session": sum(rss) / max(1, held_min),
        "rss_kib_per_session_by_process": [r / max(1, held_min / len(servers)) for r in rss],
        # What the sockets added: the servers' RSS less theirs before the first opened.
        "rss_kib_added_per_session": (sum(rss) - sum(rss_before)) / max(1, held_min),
        "server_cpu_per_s": cpu,
        "cpu_us_per_session_s": sum(cpu) / max(1, held_min) * 1e6,
        "load_rss_mib": [_procs.rss_kib(load.pid) / 1024 for load in loads],
        "redis_memory": memory,
        "redis_used_mib": _used(client) / 1024 / 1024,
        "redis_bytes_per_session": (memory["sessions"] - memory["before"]) / per_session,
        "redis_bytes_per_socket": (memory["sockets"] - memory["sessions"]) / per_session,
        "redis_bytes_per_member": (memory["joined"] - memory["sockets"]) / max(1, members),
        "held_seconds": held_seconds,
    }


def _missing(
    client: Any, connected: list[_clients.Client], joined: list[bool], sizes: Sizes
) -> tuple[int, int, int]:
    """Open sockets' sessions whose key is gone, and their users missing from their
    room's members: of sockets whose join was accepted, and of those whose join was
    refused. A user's first session lives in the user's lone slot (its value starts
    with the session id), any other in a key of its own: see presence/keys.py."""
    sessions = members = refused = 0
    for start in range(0, len(connected), 5_000):
        part = connected[start : start + 5_000]
        pipe = client.pipeline(transaction=False)
        for c in part:
            pipe.exists(keys.session_key(PREFIX, c.user, c.session_id))
            pipe.get(keys.lone_key(PREFIX, c.user))
            pipe.hexists(keys.room_keys(PREFIX, _room_of(c.user, sizes))[0], c.user)
        found = pipe.execute()
        for i, c in enumerate(part):
            own, lone, member = found[3 * i : 3 * i + 3]
            if not own and not (lone or "").startswith(f"{c.session_id}|"):
                sessions += 1
            if not member:
                if joined[start + i]:
                    members += 1
                else:
                    refused += 1
    return sessions, members, refused


def _must_live(connected: list[_clients.Client], sizes: Sizes) -> set[str]:
    """The keys that must not expire while these sockets are open."""
    names: set[str] = set()
    for c in connected:
        names.add(keys.session_key(PREFIX, c.user, c.session_id))
        names.add(keys.lone_key(PREFIX, c.user))
        names.add(keys.tabs_key(PREFIX, c.user))
    for room in {_room_of(c.user, sizes) for c in connected}:
        members, users = keys.room_keys(PREFIX, room)[:2]
        names.update((members, users))
    return names


def _kind(name: str) -> str:
    """A key's kind, for the count of keys expired: a room key by its suffix
    (``room:v``), a user's by the part after its tag (``one``, ``s``, ``tabs``)."""
    if ":room:" in name:
        return "room:" + name.rsplit(":", 1)[1]
    return name.split("}:", 1)[1].split(":", 1)[0] if "}:" in name else name


class _ExpiredKeys:
    """Turns on Redis's keyspace notifications of expiries and records, from a thread,
    the name of every key that expires while it runs."""

    def __init__(self, redis_server: _redis.RedisServer) -> None:
        self.client = redis_server.client()
        self.names: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe("__keyevent@0__:expired")
        self._ready.set()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                self.names.append(str(message["data"]))
        pubsub.close()

    def __enter__(self) -> _ExpiredKeys:
        self.client.config_set("notify-keyspace-events", "Ex")
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.config_set("notify-keyspace-events", "")


def _keys(client: Any) -> int:
    keyspace = client.info("keyspace").get("db0", {})
    return int(keyspace.get("keys", 0))
