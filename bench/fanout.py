"""Presence fan-out: one room of many watchers over several processes, and a crowd of
users joining it at once.

``watchers`` sockets watch one room, spread round-robin over ``processes`` ``presence
serve`` processes on one redis-server (as behind a balancer); ``joiners`` further
sockets, one user each, are open on the same processes and each sends
``presence.join`` for the room at its own moment, evenly spread over ``spread``
seconds. Each round has a fresh room (the watchers move to it; the joiners join it).

It records, per round:

- the time from a join being sent until each watcher has it, over every (join,
  watcher) pair, and until *every* watcher has it, per join (p50/p99/max); and when
  each watcher's own view (sync plus diffs) first held every member;
- the messages and bytes each watcher received (frames on the wire), against the
  naive cost of one message per join per watcher, and the messages per diff window;
- the diffs published (a subscriber of the room's channel times each), and the time
  from a join's sending to the diff that carries it;
- ``INFO commandstats`` over the burst: every Redis command, those run inside Lua
  scripts included, per join;
- CPU of the servers, the load processes and redis-server over the burst, so that
  where the time goes can be told.
"""

# The report's rows are typeset for people: the en dash for ranges, the multiplication
# sign for counts are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import contextlib
import math
import os
import selectors
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from presence import events, keys
from presence.asgi import protocol
from presence.models import Diff
from presence.settings import Settings

from . import _clients, _procs, _redis, _servers, _stats


@dataclass(frozen=True)
class Sizes:
    watchers: int = 10_000
    joiners: int = 1_000
    processes: int = 3
    # Load processes for the watchers (the joiners have one of their own).
    loaders: int = 4
    # The joins are sent evenly over this many seconds.
    spread: float = 1.0
    rounds: int = 3
    in_flight: int = 64
    per_user: int = 5
    # A round ends this long after the last message any watcher got...
    settle: float = 2.0
    # ...or this long after the burst began, complete or not.
    give_up: float = 60.0
    # Seconds of Redis's background commands counted before the first burst: longer
    # than the refresher's interval (the heartbeat interval, 30 s by default).
    background: float = 31.0


FULL = Sizes()
QUICK = Sizes(
    watchers=60, joiners=12, loaders=2, spread=0.3, rounds=1, settle=1.0, give_up=20, background=1
)

ROOM = "fanout.bench"


class FanoutLoader(_clients.Loader):
    """A :mod:`bench._fanout_load` process pinned to the load CPU."""

    def __init__(self, name: str, cpu: str = _procs.LOAD_CPU) -> None:
        log_path = _procs.WORK / "logs" / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                _procs.pinned([_procs.PYTHON, "-m", "bench._fanout_load"], cpu),
                cwd=_procs.REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        self._buffer = b""


@contextlib.contextmanager
def _loaders(count: int, name: str) -> Iterator[list[FanoutLoader]]:
    started = [FanoutLoader(f"{name}{i}") for i in range(count)]
    try:
        yield started
    finally:
        for loader in started:
            loader.close()


class Published:
    """Subscribes to the room's channel from a thread and times every diff published
    there (the moment Redis hands it to subscribers, as the servers hear it)."""

    def __init__(self, redis_server: _redis.RedisServer, channel: str) -> None:
        self.pubsub = redis_server.client().pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)
        self.diffs: list[tuple[float, Diff]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.05)
            if message is not None and message.get("type") == "message":
                self.diffs.append((time.monotonic(), events.decode_diff(message["data"])))

    def __enter__(self) -> Published:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.pubsub.close()


def run(sizes: Sizes = FULL) -> dict[str, Any]:
    settings = Settings()
    with _redis.RedisServer("fanout") as redis_server:
        config = _servers.ServerConfig(
            redis_url=redis_server.url, extra_env={"PRESENCE_OPEN_ROOMS": "true"}
        )
        servers = [_servers.Server("service", config) for _ in range(sizes.processes)]
        try:
            for server in servers:
                server.start()
            with (
                _loaders(sizes.loaders, "fanout-watch") as watch_loads,
                _loaders(1, "fanout-join") as join_loads,
            ):
                rounds = _rounds(sizes, redis_server, servers, watch_loads, join_loads[0])
        finally:
            for server in servers:
                server.kill()
        breaker: dict[str, int] = {}
        for server in servers:
            for cause, count in server.breaker_causes().items():
                breaker[cause] = breaker.get(cause, 0) + count
    return {
        "sizes": asdict(sizes),
        "diff_window_ms": settings.diff_window * 1000,
        "room_list_limit": settings.room_list_limit,
        "rounds": rounds,
        "breaker_causes": breaker,
        "summary": _summary(rounds),
    }


def _rounds(
    sizes: Sizes,
    redis_server: _redis.RedisServer,
    servers: list[_servers.Server],
    watch_loads: list[FanoutLoader],
    join_load: FanoutLoader,
) -> list[dict[str, Any]]:
    watchers = _clients.create_sessions(
        redis_server.url, _clients.users_for(sizes.watchers, sizes.per_user, "w"), ttl=3600
    )
    joiners = _clients.create_sessions(
        redis_server.url, [f"j{i}" for i in range(sizes.joiners)], ttl=3600
    )
    tokens = _clients.tokens_for([*watchers, *joiners])
    ports = [server.port for server in servers]
    first_room = f"{ROOM}.0"
    started = time.monotonic()
    for index, load in enumerate(watch_loads):
        mine = watchers[index :: len(watch_loads)]
        specs = [
            c.spec(ports[(index + j * len(watch_loads)) % len(ports)], tokens)
            for j, c in enumerate(mine)
        ]
        load.send(
            {
                "cmd": "open",
                "clients": specs,
                "addresses": _clients.ADDRESSES.take(len(specs)),
                "concurrency": max(1, sizes.in_flight // len(watch_loads)),
                "room": first_room,
                "watch": True,
                "role": "watcher",
            }
        )
    opened = [load.receive() for load in watch_loads]
    join_specs = [
        {**c.spec(ports[i % len(ports)], tokens), "user": c.user} for i, c in enumerate(joiners)
    ]
    joined = join_load.request(
        {
            "cmd": "open",
            "clients": join_specs,
            "addresses": _clients.ADDRESSES.take(len(join_specs)),
            "concurrency": sizes.in_flight,
            "role": "joiner",
        }
    )
    watching = sum(r["opened"] for r in opened)
    _procs.log(
        f"fanout: {watching:,} watchers watching and {joined['opened']:,} joiners open "
        f"in {time.monotonic() - started:.0f} s"
    )
    if watching < sizes.watchers or joined["opened"] < sizes.joiners:
        raise RuntimeError(
            f"fanout: only {watching} watchers and {joined['opened']} joiners opened: "
            f"{[r['failed'] for r in opened]} {joined['failed']}"
        )
    rate = _background(redis_server, sizes.background)
    results = []
    for number in range(sizes.rounds):
        room = f"{ROOM}.{number}"
        if number:
            for load in watch_loads:
                load.send({"cmd": "watch", "room": room, "concurrency": 16})
            synced = sum(load.receive()["synced"] for load in watch_loads)
            if synced < sizes.watchers:
                raise RuntimeError(f"fanout: only {synced} watchers synced on {room}")
        result = _burst(sizes, redis_server, servers, watch_loads, join_load, room, rate)
        result["round"] = number
        results.append(result)
        _procs.log(
            f"fanout round {number + 1}: pair p99 {result['pair_latency_s']['p99'] * 1000:.0f} ms,"
            f" all watchers p99 {result['all_watchers_latency_s']['p99'] * 1000:.0f} ms, "
            f"{result['messages_per_watcher']['p50']:.0f} messages a watcher "
            f"({result['messages_per_window']['max']:.2f} a window at most), "
            f"{result['redis']['commands_per_join']:.1f} Redis commands a join"
        )
    return results


def _background(redis_server: _redis.RedisServer, seconds: float) -> float:
    """Commands a second that Redis runs with everyone idle: the refresher's ticks (one
    a heartbeat interval in each process), the leases, health checks. Read over a
    whole refresher interval, as a tick is thousands of commands at once."""
    stats = _redis.CommandStats(redis_server.client())
    stats.start()
    started = time.monotonic()
    time.sleep(seconds)
    calls = sum(v["calls"] for v in stats.stop().values())
    return calls / (time.monotonic() - started)


def _burst(
    sizes: Sizes,
    redis_server: _redis.RedisServer,
    servers: list[_servers.Server],
    watch_loads: list[FanoutLoader],
    join_load: FanoutLoader,
    room: str,
    rate: float,
) -> dict[str, Any]:
    client = redis_server.client()
    window = Settings().diff_window
    for load in (*watch_loads, join_load):
        load.request({"cmd": "arm", "expected": sizes.joiners})
    stats = _redis.CommandStats(client)
    pids = {
        "servers": [s.pid for s in servers],
        "loaders": [load.pid for load in (*watch_loads, join_load)],
        "redis": [redis_server.process.pid] if redis_server.process else [],
    }
    gc_before = [len(s.gc_pauses_ms()) for s in servers]
    leases_before = sum(_lease_lost(s) for s in servers)
    probes = [_servers.StallProbe(server) for server in servers]
    with contextlib.ExitStack() as stack:
        published = stack.enter_context(
            Published(redis_server, keys.room_channel("presence", room))
        )
        for probe in probes:
            stack.enter_context(probe)
        time.sleep(0.2)  # subscribed before the first join
        stats.start()
        cpu_before = {k: [_procs.cpu_seconds(p) for p in v] for k, v in pids.items()}
        machine_before = _machine_busy()
        t0 = time.monotonic() + 0.3
        burst = join_load.request(
            {"cmd": "burst", "room": room, "at": t0, "spread": sizes.spread},
            timeout=sizes.give_up,
        )
        sent: dict[str, float] = burst["sent"]
        # Until every watcher's view holds every join, then until no watcher has had a
        # message for `settle` seconds (what came late is counted too).
        deadline = t0 + sizes.give_up
        all_complete_at = None
        while time.monotonic() < deadline:
            progress = [load.request({"cmd": "progress"}) for load in watch_loads]
            complete = sum(p["complete"] for p in progress)
            last = max(p["last_receipt"] for p in progress)
            if complete >= sizes.watchers and all_complete_at is None:
                all_complete_at = time.monotonic()
            if all_complete_at is not None and time.monotonic() - max(last, t0) >= sizes.settle:
                break
            time.sleep(0.1)
        ended = time.monotonic()
        join_errors = join_load.request({"cmd": "progress"})["other"]
        cpu_after = {k: [_procs.cpu_seconds(p) for p in v] for k, v in pids.items()}
        machine_after = _machine_busy()
        commands = stats.stop()
    reports = [
        load.request({"cmd": "report", "sent": sent, "t0": t0, "window": window}, timeout=600)
        for load in watch_loads
    ]
    result = _round(
        sizes, window, room, sent, t0, ended, reports, published.diffs, commands,
        {k: [a - b for a, b in zip(cpu_after[k], cpu_before[k], strict=True)] for k in pids},
        burst,
    )  # fmt: skip
    result["join_refusals"] = join_errors
    result["redis"]["background_per_s"] = rate
    result["redis"]["commands_per_join_net"] = max(
        0.0, (result["redis"]["commands_total"] - rate * result["elapsed_s"]) / result["joins"]
    )
    # How long each process's event loop kept a /healthz probe waiting during the burst,
    # and its generation-2 collections over 50 ms (bench._gcwatch).
    result["loop_stall_ms"] = [probe.summary() for probe in probes]
    result["gc_pauses_ms"] = [s.gc_pauses_ms()[n:] for s, n in zip(servers, gc_before, strict=True)]
    result["lease_lost"] = sum(_lease_lost(s) for s in servers) - leases_before
    # Whether the machine was quiet: CPU that processes other than the benchmark's
    # (servers, load, redis-server, this one) used during the burst, as a share of all.
    ours = sum(result["cpu_s"].values()) + machine_after[1] - machine_before[1]
    busy = machine_after[0] - machine_before[0]
    capacity = (machine_after[2] - machine_before[2]) * (os.cpu_count() or 1)
    result["machine"] = {
        "other_cpu_share": max(0.0, busy - ours) / capacity,
        "busy_share": busy / capacity,
        "loadavg_after": _loadavg(),
    }
    return result


def _machine_busy() -> tuple[float, float, float]:
    """CPU seconds every CPU has been busy (``/proc/stat``), this process's own, and
    the time."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK"), _procs.cpu_seconds(os.getpid()), time.monotonic()


def _loadavg() -> str:
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def _lease_lost(server: _servers.Server) -> int:
    """How often a process found its lease lapsed and itself reaped (from its log)."""
    if not server.log_path.exists():
        return 0
    return server.log_path.read_text(errors="replace").count("was taken for dead and reaped")


def _round(
    sizes: Sizes,
    window: float,
    room: str,
    sent: dict[str, float],
    t0: float,
    ended: float,
    reports: list[dict[str, Any]],
    published: list[tuple[float, Diff]],
    commands: dict[str, dict[str, float]],
    cpu: dict[str, list[float]],
    burst: dict[str, Any],
) -> dict[str, Any]:
    watchers = [w for r in reports for w in r["watchers"]]
    histogram: Counter[int] = Counter()
    last_seen: dict[str, float] = {}
    seen_by: Counter[str] = Counter()
    for r in reports:
        histogram.update({int(k): v for k, v in r["histogram_ms"].items()})
        seen_by.update(r["seen_by"])
        for user, when in r["last_seen"].items():
            last_seen[user] = max(when, last_seen.get(user, 0.0))
    # Per join: until every watcher has it (inf when some watcher never got it).
    every = sorted(
        last_seen[u] - sent[u] if seen_by[u] >= len(watchers) else math.inf for u in sent
    )
    # Per join: until the diff carrying it was published.
    first_published: dict[str, float] = {}
    for when, diff in published:
        for member in diff.joins:
            first_published.setdefault(member.user, when)
    to_publish = sorted(first_published[u] - sent[u] for u in sent if u in first_published)
    complete = sorted(
        w["complete_s"] if w["complete_s"] is not None else math.inf for w in watchers
    )
    last_sent = max(sent.values()) - t0
    messages = sorted(w["messages"] for w in watchers)
    wire = sorted(w["bytes"] for w in watchers)
    # The windows the burst's diffs took: from the first published to the last.
    times = [when for when, _ in published]
    windows = 1 + math.floor((max(times) - min(times)) / window) if times else 0
    per_window = sorted(w["messages"] / windows for w in watchers) if windows else []
    # The naive cost: one message a join for each watcher, each a diff of that join alone.
    naive_bytes = 0
    for _, diff in published:
        for i, member in enumerate(diff.joins):
            one = Diff(room, diff.seq + i, (member,), (), (), diff.count)
            naive_bytes += len(protocol.presence_diff(one, 1000).encode()) + 4
    joins = len(sent)
    calls = {name: int(v["calls"]) for name, v in commands.items()}
    calls.pop("subscribe", None)
    calls.pop("unsubscribe", None)
    total_calls = sum(calls.values())
    usec = sum(v["usec"] for name, v in commands.items() if name in calls)
    evalsha = calls.get("evalsha", 0)
    elapsed = ended - t0
    return {
        "room": room,
        "watchers": len(watchers),
        "joins": joins,
        "late_send_ms_max": burst["late_ms_max"],
        "sent_span_s": last_sent,
        "watchers_complete": sum(1 for w in watchers if w["joins_had"] >= joins),
        "pairs_missing": len(watchers) * joins - sum(w["joins_had"] for w in watchers),
        "pair_latency_s": _histogram_pcts(histogram),
        "all_watchers_latency_s": _pcts(every),
        "to_publish_s": _pcts(to_publish),
        "watcher_complete_s": _pcts(complete),
        "watcher_complete_after_last_join_s": _pcts([c - last_sent for c in complete]),
        "messages_per_watcher": _pcts(messages),
        "bytes_per_watcher": _pcts(wire),
        "syncs_during_burst": sum(w["syncs"] for w in watchers),
        "gaps_seen": sum(w["gaps"] for w in watchers),
        "other_messages": _merge(r["other"] for r in reports),
        "closed_sockets": sum(r["closed"] for r in reports),
        "diffs_published": len(published),
        "joins_per_diff": _pcts(sorted(len(d.joins) for _, d in published)),
        "publish_span_s": (max(times) - min(times)) if times else float("nan"),
        "diff_windows": windows,
        "messages_per_window": _pcts(per_window),
        "max_messages_in_one_window": _pcts(
            sorted(m for r in reports for m in r["per_window_max"])
        ),
        "naive": {
            "messages_per_watcher": joins,
            "messages": joins * len(watchers),
            "bytes_per_watcher": naive_bytes,
        },
        "messages_total": sum(messages),
        "bytes_total": sum(wire),
        "redis": {
            "commands": calls,
            "commands_total": total_calls,
            "commands_per_join": total_calls / joins if joins else float("nan"),
            "evalsha_per_join": evalsha / joins if joins else float("nan"),
            "publish": calls.get("publish", 0) + calls.get("spublish", 0),
            "usec_per_join": usec / joins if joins else float("nan"),
        },
        "elapsed_s": elapsed,
        "cpu_s": {k: sum(v) for k, v in cpu.items()},
        "server_cpu_s": cpu["servers"],
    }


def _pcts(values: list[float]) -> dict[str, float]:
    data = sorted(values)
    return {
        "p50": _stats.percentile(data, 50),
        "p99": _stats.percentile(data, 99),
        "max": data[-1] if data else float("nan"),
        "n": len(data),
    }


def _histogram_pcts(histogram: Counter[int]) -> dict[str, float]:
    """Percentiles of latencies counted in 1 ms bins (seconds, each bin's upper edge)."""
    total = sum(histogram.values())
    out: dict[str, float] = {"n": total}
    if not total:
        return {**out, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(histogram.items())
    for name, q in (("p50", 0.50), ("p99", 0.99)):
        rank, running = q * total, 0
        for ms, count in ordered:
            running += count
            if running >= rank:
                out[name] = (ms + 1) / 1000
                break
    out["max"] = (ordered[-1][0] + 1) / 1000
    return out


def _merge(counters: Any) -> dict[str, int]:
    merged: Counter[str] = Counter()
    for counter in counters:
        merged.update(counter)
    return dict(merged)


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def over(*path: str) -> dict[str, float]:
        values = []
        for r in rounds:
            value: Any = r
            for key in path:
                value = value[key]
            values.append(float(value))
        return _stats.summary(values)

    return {
        "pair_p50_s": over("pair_latency_s", "p50"),
        "pair_p99_s": over("pair_latency_s", "p99"),
        "pair_max_s": over("pair_latency_s", "max"),
        "all_watchers_p50_s": over("all_watchers_latency_s", "p50"),
        "all_watchers_p99_s": over("all_watchers_latency_s", "p99"),
        "all_watchers_max_s": over("all_watchers_latency_s", "max"),
        "to_publish_p50_s": over("to_publish_s", "p50"),
        "to_publish_p99_s": over("to_publish_s", "p99"),
        "watcher_complete_p50_s": over("watcher_complete_s", "p50"),
        "watcher_complete_p99_s": over("watcher_complete_s", "p99"),
        "messages_per_watcher_p50": over("messages_per_watcher", "p50"),
        "messages_per_watcher_max": over("messages_per_watcher", "max"),
        "bytes_per_watcher_p50": over("bytes_per_watcher", "p50"),
        "messages_per_window_max": over("messages_per_window", "max"),
        "max_messages_in_one_window_max": over("max_messages_in_one_window", "max"),
        "diffs_published": over("diffs_published"),
        "diff_windows": over("diff_windows"),
        "commands_per_join": over("redis", "commands_per_join"),
        "commands_per_join_net": over("redis", "commands_per_join_net"),
        "evalsha_per_join": over("redis", "evalsha_per_join"),
        "redis_usec_per_join": over("redis", "usec_per_join"),
        "server_cpu_s": over("cpu_s", "servers"),
        "loader_cpu_s": over("cpu_s", "loaders"),
        "redis_cpu_s": over("cpu_s", "redis"),
        "naive_bytes_per_watcher": over("naive", "bytes_per_watcher"),
        "pairs_missing": over("pairs_missing"),
        "syncs_during_burst": over("syncs_during_burst"),
        "all_complete": all(r["watchers_complete"] == r["watchers"] for r in rounds),
    }


# --- the report's rows and section (bench/report.py calls these) ----------------------


def section(result: dict[str, Any]) -> list[str]:
    """The report's section on the fan-out benchmark."""
    s = result["summary"]
    sizes = result["sizes"]
    rounds = result["rounds"]

    def row(label: str, key: str, digits: int = 1, scale: float = 1.0) -> str:
        return f"| {label} | {_span(s[key], digits, scale)} |"

    lines = [
        "## 7. Presence fan-out",
        "",
        f"{sizes['watchers']:,} watchers of one room spread over {sizes['processes']} "
        f"`presence serve` processes (all on CPU {_procs.SERVER_CPU}) on one redis-server; "
        f"{sizes['joiners']:,} more sockets, one user each, send `presence.join` evenly over "
        f"{sizes['spread']:g} s. Diff window {result['diff_window_ms']:g} ms. "
        f"{sizes['rounds']} rounds, each with a fresh room. A join's latency runs from the "
        "moment its socket sent it to the moment a watcher's load process read the diff "
        "(or sync) carrying it. Median over rounds (min–max).",
        "",
        "| | |",
        "| --- | --- |",
        row("Join to one watcher, p50 (ms)", "pair_p50_s", 0, 1000),
        row("Join to one watcher, p99 (ms)", "pair_p99_s", 0, 1000),
        row("Join to one watcher, max (ms)", "pair_max_s", 0, 1000),
        row("Join to every watcher, p50 over joins (ms)", "all_watchers_p50_s", 0, 1000),
        row("Join to every watcher, p99 over joins (ms)", "all_watchers_p99_s", 0, 1000),
        row("Join to the diff published in Redis, p50 (ms)", "to_publish_p50_s", 0, 1000),
        row("Join to the diff published in Redis, p99 (ms)", "to_publish_p99_s", 0, 1000),
        row("Burst start to a watcher's view holding all, p99 (s)", "watcher_complete_p99_s", 2),
        row("Messages a watcher received (median watcher)", "messages_per_watcher_p50", 0),
        f"| Naive: one message a join for each watcher | {sizes['joiners']:,} |",
        row("Bytes a watcher received, frames (median watcher)", "bytes_per_watcher_p50", 0),
        row("Naive bytes a watcher (a one-join diff for each join)", "naive_bytes_per_watcher", 0),
        row("Diffs published", "diffs_published", 0),
        row("Diff windows the diffs spanned", "diff_windows", 0),
        row("Messages a window, worst watcher", "messages_per_window_max", 2),
        row("Most messages a watcher read in one window", "max_messages_in_one_window_max", 0),
        row("Syncs sent to watchers during the burst", "syncs_during_burst", 0),
        row("Redis commands a join (INFO commandstats, scripts' own included, "
            "background rate taken out)", "commands_per_join_net", 1),
        row("The same, background included", "commands_per_join", 1),
        row("Redis script calls (EVALSHA) a join", "evalsha_per_join", 2),
        row("Redis time a join (µs, commandstats)", "redis_usec_per_join", 0),
        row("Server CPU, 3 processes, over the burst (s)", "server_cpu_s", 2),
        row("Load processes' CPU over the burst (s)", "loader_cpu_s", 2),
        row("redis-server CPU over the burst (s)", "redis_cpu_s", 2),
        "",
        "Per round:",
        "",
        "| Round | joins sent over (s) | joins refused (in-band errors) | all complete "
        "| pairs missing | longest loop stall (ms, per process) | leases lost "
        "| leaves/updates seen | other processes' CPU (share of the machine) "
        "| load average after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for r in rounds:
        stalls = ", ".join(_num(p["max_ms"], 0) for p in r.get("loop_stall_ms", []))
        machine = r.get("machine", {})
        lines.append(
            f"| {r['round'] + 1} | {r['sent_span_s']:.2f} | "
            + (
                (", ".join(f"`{k}` × {v}" for k, v in r["join_refusals"].items()) or "0")
                if "join_refusals" in r
                else "–"
            )
            + f" | {r['watchers_complete']:,} of {r['watchers']:,} | {r['pairs_missing']:,} | "
            f"{stalls or '–'} | {r.get('lease_lost', '–')} | "
            f"{r['other_messages'].get('leaves_or_updates', 0)} | "
            f"{_num(machine.get('other_cpu_share', float('nan')), 2)} | "
            f"{machine.get('loadavg_after', '–')} |"
        )
    commands = Counter[str]()
    for r in rounds:
        commands.update(r["redis"]["commands"])
    top = commands.most_common(8)
    lines += [
        "",
        "Redis commands over all rounds, the most frequent: "
        + ", ".join(f"`{name}` × {count:,}" for name, count in top)
        + ".",
        "",
    ]
    return lines


def _seconds(summary: dict[str, float]) -> str:
    return _num(summary["median"], 3) if summary.get("n") else "–"


def _num(value: Any, digits: int = 1) -> str:
    if isinstance(value, dict):
        value = value.get("median", float("nan"))
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "∞" if isinstance(value, float) and math.isinf(value) else "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _span(summary: dict[str, float], digits: int, scale: float) -> str:
    if not summary.get("n"):
        return "–"
    median = _num(summary["median"] * scale, digits)
    if summary["min"] == summary["max"]:
        return median
    return (
        f"{median} ({_num(summary['min'] * scale, digits)}–{_num(summary['max'] * scale, digits)})"
    )
