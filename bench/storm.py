"""Reconnect storm: restart the server under connected clients that follow the browser
client's own reconnect schedule, and time how long until every one is back.

Each round (service, then floor: A B A B ...) opens ``clients`` sockets in ``browser``
mode (see :mod:`bench._load`: an immediate REST heartbeat on loss, then a new socket after
full-jitter backoff, 0.5 s base, 30 s cap), waits until they have been up longer than
the client's ``stableMs``, then sends the server SIGTERM, waits for it to exit (uvicorn
closes every socket with 1012 and the service marks each session disconnected) and
starts it again on the same port, as a deploy would. Time zero is the SIGTERM.

The ``presence`` variant is the service with rooms: each client is a user of its own
in one of ``rooms`` rooms, and joins it again on every socket it opens (as the JS
client does); ``watchers`` sockets on a second process, not restarted, watch every
room (20 rooms each, the most a session may watch), with the lean client of
:mod:`bench._fanout_load`. It also records when every room's member list was right
again (in Redis, and in every watcher's view), and the leaves the watchers were told:
a client back within the grace must cause none. The grace of a restart is
``PRESENCE_RESTART_GRACE`` (30 s by default; the offline grace, 5 s, if that is shorter):
the stopped process's members stay held for it (README, "A restart is not a departure").
"""

# The report's rows are typeset for people: the en dash for ranges, the multiplication
# sign for counts are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from presence import keys
from presence.settings import Settings

from . import _clients, _procs, _redis, _servers, _stats
from .fanout import FanoutLoader

# web/src/chatSessionManager.js: DEFAULT_BACKOFF and DEFAULT_HEARTBEAT_INTERVAL_MS.
JS_BACKOFF = {"base": 0.5, "cap": 30.0, "stable": 10.0}
JS_HEARTBEAT_INTERVAL = 30.0


# Each variant: the server kind and environment on top of the benchmark's own.
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "service": ("service", {}),
    "floor": ("floor", {}),
    "presence": ("service", {"PRESENCE_OPEN_ROOMS": "true"}),
}
PREFIX = "presence"
# A session watches at most PRESENCE_MAX_ROOMS_PER_SESSION rooms (20 by default).
ROOMS_PER_WATCHER = 20


@dataclass(frozen=True)
class Sizes:
    clients: int = 10_000
    rounds: int = 3
    variants: tuple[str, ...] = tuple(VARIANTS)
    in_flight: int = 64
    up_before_restart: float = 11.0
    give_up_after: float = 60.0
    per_user: int = 5
    # The presence variant: rooms the clients are in, and watchers of them elsewhere.
    rooms: int = 100
    watchers: int = 50
    # The target of issue 13: all back and every member list right within this.
    target_s: float = 30.0


FULL = Sizes()
QUICK = Sizes(
    clients=30,
    rounds=1,
    variants=("service", "floor", "presence"),
    up_before_restart=0.5,
    give_up_after=30.0,
    rooms=3,
    watchers=3,
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
        rooms = variant == "presence"
        # With rooms a member is a user: one session each, so that every session is a
        # member of its own.
        owners = _clients.users_for(sizes.clients, 1 if rooms else sizes.per_user, "r")
        if kind == "service":
            clients = _clients.create_sessions(redis_server.url, owners, ttl=config.ttl_seconds)
        else:
            clients = [_clients.Client(user, f"{i:022d}") for i, user in enumerate(owners)]
        server = _servers.Server(kind, config)
        room_of = {c.user: f"storm.{i % sizes.rooms}" for i, c in enumerate(clients)}
        watched = Watched(sizes, redis_server, config, room_of) if rooms else None
        try:
            server.start()
            with _clients.Loader(f"storm-{kind}") as loader:
                tokens = _clients.tokens_for(clients)
                specs = [c.spec(server.port, tokens) for c in clients]
                if rooms:
                    for c, spec in zip(clients, specs, strict=True):
                        spec.update(user=c.user, room=room_of[c.user])
                opened = loader.request(
                    {
                        "cmd": "open",
                        "clients": specs,
                        "addresses": _clients.ADDRESSES.take(3 * sizes.clients),
                        "concurrency": sizes.in_flight,
                        "mode": "browser",
                        "backoff": JS_BACKOFF,
                        "heartbeat_interval": JS_HEARTBEAT_INTERVAL,
                        "timeout": 30.0,
                    }
                )
                if watched is not None:
                    watched.start()
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
                presence = None
                if watched is not None:
                    presence = watched.after_storm(started, report["all_back"])
                    report = loader.request({"cmd": "storm", "detail": True})
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
            if watched is not None:
                watched.close()
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
    extra = {} if presence is None else {"presence": _presence(presence, report, sizes)}
    return {
        **extra,
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

    presence = [r["presence"] for r in rounds if "presence" in r]
    rooms = {}
    if presence:
        rooms = {
            "presence": {
                "right_s": _stats.summary(
                    float("inf") if p["right_s"] is None else p["right_s"] for p in presence
                ),
                "right_every_round": all(
                    p["right_s"] is not None and p["right_at_end"] for p in presence
                ),
                "leaves_for_clients_back_within_grace": sum(
                    p["leaves_for_clients_back_within_grace"] for p in presence
                ),
                "users_told_a_leave": _stats.summary(p["users_told_a_leave"] for p in presence),
                "back_within_grace": _stats.summary(p["back_within_grace"] for p in presence),
                "back_after_grace": _stats.summary(p["back_after_grace"] for p in presence),
                "grace_s": max(p["grace_s"] for p in presence),
            }
        }
    return {
        **rooms,
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


class Watched:
    """The presence variant's rooms: watchers of every room on a process of their own
    (not restarted), and what Redis and they hold of each room's members."""

    def __init__(
        self,
        sizes: Sizes,
        redis_server: _redis.RedisServer,
        config: _servers.ServerConfig,
        room_of: dict[str, str],
    ) -> None:
        self.sizes = sizes
        self.client = redis_server.client()
        self.room_of = room_of
        self.members: dict[str, set[str]] = {}
        for user, room in room_of.items():
            self.members.setdefault(room, set()).add(user)
        self.rooms = sorted(self.members)
        self.redis_url = redis_server.url
        self.server = _servers.Server("service", config).start()
        self.load = FanoutLoader("storm-watch")
        self.joined_s: float | None = None
        self.missing_before = 0

    def redis_wrong(self) -> tuple[int, int]:
        """Members missing from their rooms in Redis, and members there not expected."""
        pipe = self.client.pipeline(transaction=False)
        for room in self.rooms:
            pipe.hkeys(keys.room_keys(PREFIX, room)[0])
        missing = extra = 0
        for room, users in zip(self.rooms, pipe.execute(), strict=True):
            held = {_redis._text(u) for u in users}
            missing += len(self.members[room] - held)
            extra += len(held - self.members[room])
        return missing, extra

    def redis_right(self) -> bool:
        return self.redis_wrong() == (0, 0)

    def views_wrong(self) -> dict[str, Any]:
        """Every watcher's view of each of its rooms against the room's clients: its
        count, and its members (a sync's, then each diff's joins and leaves applied)."""
        return self.load.request(
            {"cmd": "views_wrong", "members": {r: sorted(u) for r, u in self.members.items()}}
        )

    def views_right(self) -> bool:
        wrong = self.views_wrong()
        return bool(wrong["views"]) and wrong["wrong"] == 0 and wrong["missing"] == 0

    def start(self) -> None:
        """Once every client is a member of its room (in Redis), the watchers watch."""
        started = time.monotonic()
        # Until every client is in, or the rooms stop filling for 10 s: on a loaded
        # machine a join may be refused store_unavailable (its Redis call over the
        # bound), and it is not sent again until that client's next socket.
        last, still = (-1, -1), time.monotonic()
        while time.monotonic() - still < 10.0:
            wrong = self.redis_wrong()
            if wrong == (0, 0):
                break
            if wrong != last:
                last, still = wrong, time.monotonic()
            time.sleep(0.25)
        self.missing_before = self.redis_wrong()[0]
        self.joined_s = time.monotonic() - started
        watchers = _clients.create_sessions(
            self.redis_url, _clients.users_for(self.sizes.watchers, 5, "sw"), ttl=3600
        )
        tokens = _clients.tokens_for(watchers)
        groups = [
            self.rooms[i : i + ROOMS_PER_WATCHER]
            for i in range(0, len(self.rooms), ROOMS_PER_WATCHER)
        ]
        specs = [
            {**c.spec(self.server.port, tokens), "rooms": groups[i % len(groups)]}
            for i, c in enumerate(watchers)
        ]
        opened = self.load.request(
            {
                "cmd": "open",
                "clients": specs,
                "addresses": _clients.ADDRESSES.take(len(specs)),
                "concurrency": 16,
                "role": "watcher",
            }
        )
        synced = self.load.request({"cmd": "watch_rooms", "rooms": [], "concurrency": 16})
        if opened["opened"] < len(specs) or synced["synced"] < len(specs):
            raise RuntimeError(f"storm: watchers {opened} {synced}")
        expected = {room: len(users) for room, users in self.members.items()}
        self.load.request({"cmd": "arm_leaves", "expected": expected})

    def after_storm(self, started: float, all_back: bool) -> dict[str, Any]:
        """From every client back: until every room's member list is right in Redis
        and in every watcher's view; then a grace longer, for a late leave."""
        grace = restart_grace()
        deadline = started + self.sizes.give_up_after
        right_at = None
        while all_back and time.monotonic() < deadline:
            if self.redis_right() and self.views_right():
                right_at = time.monotonic()
                break
            time.sleep(0.25)
        time.sleep(grace + 1.0)
        report = self.load.request({"cmd": "leaves_report", "t0": started, "left": True})
        missing, extra = self.redis_wrong()
        views = self.views_wrong()
        return {
            "views_at_end": views,
            "redis_missing_at_end": missing,
            "redis_extra_at_end": extra,
            "right_s": None if right_at is None else right_at - started,
            "right_at_end": self.redis_right() and self.views_right(),
            "joined_before_s": self.joined_s,
            "redis_missing_before": self.missing_before,
            "grace_s": grace,
            "watchers": report["watchers"],
            "left": report["left"],
            "other": report["other"],
        }

    def close(self) -> None:
        self.load.close()
        self.server.kill()


def restart_grace() -> float:
    """How long after a restart a client's return must cause no leave: the service's
    restart grace, or its offline grace when that is longer (the reaper waits for both)."""
    settings = Settings()
    return max(settings.restart_grace, settings.offline_grace)


def _presence(presence: dict[str, Any], report: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """The presence variant's figures: when the member lists were right, and the leaves
    told against when each client was back."""
    grace = presence["grace_s"]
    down: dict[str, float | None] = {}
    for user, lost_at, back_at in report["lost_tabs"]:
        down[user] = None if back_at is None or lost_at is None else back_at - lost_at
    within = {u for u, d in down.items() if d is not None and d <= grace}
    left = presence["left"]
    wrong = sorted(u for u in left if u in within)
    reasons: Counter[str] = Counter(why for _, why in left.values())
    by_watcher: Counter[str] = Counter()
    for w in presence["watchers"]:
        by_watcher.update(w["leaves"])
    return {
        "rooms": sizes.rooms,
        "watchers": len(presence["watchers"]),
        "right_s": presence["right_s"],
        "right_at_end": presence["right_at_end"],
        "redis_missing_at_end": presence["redis_missing_at_end"],
        "redis_extra_at_end": presence["redis_extra_at_end"],
        "views_at_end": presence.get("views_at_end"),
        "client_errors": report.get("errors", {}),
        "joined_before_s": presence["joined_before_s"],
        "redis_missing_before": presence.get("redis_missing_before", 0),
        "grace_s": grace,
        "back_within_grace": len(within),
        "back_after_grace": sum(1 for d in down.values() if d is not None and d > grace),
        "not_back": sum(1 for d in down.values() if d is None),
        "down_s": {
            "p50": _stats.percentile(sorted(d for d in down.values() if d is not None), 50),
            "max": max((d for d in down.values() if d is not None), default=float("nan")),
        },
        "users_told_a_leave": len(left),
        "leaves_by_reason": dict(reasons),
        "leaves_for_clients_back_within_grace": len(wrong),
        "examples": [[u, down[u], left[u]] for u in wrong[:5]],
        "watcher_changes": dict(by_watcher),
        "syncs": sum(w["syncs"] for w in presence["watchers"]),
        "gaps": sum(w["gaps"] for w in presence["watchers"]),
        "other_messages": presence["other"],
    }


# --- the presence variant's figures (bench/_targets.py) and lines (bench/report.py) --


def rooms_full(result: dict[str, Any]) -> bool:
    """The presence variant ran at the target's size: 10,000 clients into 100 rooms."""
    sizes = result["sizes"]
    return bool(sizes["clients"] >= 10_000 and sizes["rooms"] >= 100)


def rooms_right_figure(result: dict[str, Any]) -> str:
    """The figure of the target "all back and every member list right within 30 s"."""
    s = result["summary"]
    p = s["presence"]
    sizes = result["sizes"]
    rounds = [r for r in result["rounds"] if r["kind"] == "presence"]
    back = s["all_back_s"]["presence"]
    return (
        f"{sizes['clients']:,} clients in {sizes['rooms']} rooms, {sizes['watchers']} "
        f"watchers on another process: all back after {_seconds(back['median'])} s, every "
        f"member list right (Redis and every watcher) after {_seconds(p['right_s']['median'])}"
        f" s (worst {_seconds(p['right_s']['max'])} s, {len(rounds)} rounds); "
        f"{s['errors_5xx']['presence']} 5xx"
    )


def rooms_leaves_figure(result: dict[str, Any]) -> str:
    """The figure of the target "no leave for a session back within the grace"."""
    p = result["summary"]["presence"]
    return (
        f"{p['leaves_for_clients_back_within_grace']} leaves told for a client back within "
        f"the grace ({_seconds(p.get('grace_s', 5.0), 0)} s; all rounds); median "
        f"{_seconds(p['back_within_grace']['median'], 0)} "
        f"clients back within it, {_seconds(p['back_after_grace']['median'], 0)} after it "
        f"(their leaves: {_seconds(p['users_told_a_leave']['median'], 0)} users told)"
    )


def section(result: dict[str, Any]) -> list[str]:
    """The presence variant's lines, under the storm's section of the report."""
    rounds = [r for r in result["rounds"] if "presence" in r]
    if not rounds:
        return []
    sizes = result["sizes"]
    lines = [
        f"With rooms (`presence`): each client a user of its own in one of {sizes['rooms']} "
        f"rooms, joining it again on each socket it opens; {sizes['watchers']} watchers of "
        f"every room on a second process, not restarted. 'Right': every room's members in "
        "Redis are its clients, and every watcher's view has each room's count.",
        "",
        "| Round | all back (s) | member lists right (s) | still right a grace later "
        "| back within the grace / after / never | leaves told, by reason "
        "| leaves for a client back within the grace | members missing / extra in Redis "
        "at the end | in-band errors the clients got | watcher syncs, gaps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rounds:
        p = r["presence"]
        lines.append(
            f"| {r['round'] + 1} | {_seconds(r['all_back_s'])} | {_seconds(p['right_s'])} | "
            f"{'yes' if p['right_at_end'] else 'no'} | {p['back_within_grace']:,} / "
            f"{p['back_after_grace']:,} / {p['not_back']:,} | "
            + (
                ", ".join(f"`{k}` × {v:,}" for k, v in sorted(p["leaves_by_reason"].items()))
                or "none"
            )
            + f" | {p['leaves_for_clients_back_within_grace']} | "
            f"{p.get('redis_missing_at_end', '–')} / {p.get('redis_extra_at_end', '–')} | "
            + (
                ", ".join(f"`{k}` × {v:,}" for k, v in sorted(p.get("client_errors", {}).items()))
                or "none"
            )
            + f" | {p['syncs']}, {p['gaps']} |"
        )
    lines.append("")
    return lines


def _seconds(value: float | None, digits: int = 1) -> str:
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return "∞" if value == float("inf") else "–"
    return f"{value:.{digits}f}"
