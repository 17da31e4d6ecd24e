"""The one table of targets the report judges: for each, the benchmark it reads, its name,
the figure it is judged on, the comparison and the threshold.

Each threshold is written once, here: the target's line in ``RESULTS.md`` is made from
it (``name`` with ``{threshold}`` filled in and the comparison's sign), its verdict
compares the figure with it, and the chart draws its lines from it
(:func:`threshold`). A target whose figure needs conditions beyond the one number (the
run at full size, no 5xx) says so in ``also``; one that only applies to some runs (the
stock floor measured) says so in ``applies``.
"""

# The report is typeset for people: the multiplication sign for ratios is meant.
# ruff: noqa: RUF001

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import peers, reclaim, storm
from .fanout import _num as _fnum
from .fanout import _seconds

Result = dict[str, Any]
Row = tuple[str, str, bool | None]

_COMPARISONS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "<=": ("≤", operator.le),
    ">=": ("≥", operator.ge),
    "==": ("=", operator.eq),
    "<": ("<", operator.lt),
}


def _always(result: Result) -> bool:
    return True


@dataclass(frozen=True)
class Target:
    """One target line.

    Attributes:
        key: names it for :func:`threshold` (the chart).
        benchmark: the key of the benchmark in ``results.json`` it reads.
        name: the line's text, ``{threshold}`` where the threshold goes, after the sign.
        value: the number judged, from the benchmark's result.
        figure: the figure shown, from the benchmark's result.
        comparison: ``<=``, ``>=`` or ``==``: value against threshold.
        threshold: the target.
        shown: how the threshold is written in the name.
        also: what must hold besides (full size, nothing lost), from the result.
        applies: False when the result cannot judge it (the line is left out).
    """

    key: str
    benchmark: str
    name: str
    value: Callable[[Result], float]
    figure: Callable[[Result], str]
    comparison: str
    threshold: float
    shown: str = "{:g}"
    also: Callable[[Result], bool] = _always
    applies: Callable[[Result], bool] = _always

    def title(self) -> str:
        sign = _COMPARISONS[self.comparison][0]
        return self.name.format(threshold=f"{sign} {self.shown.format(self.threshold)}")

    def judge(self, result: Result | None) -> Row | None:
        """The line for this result: (title, figure, met), None when it does not apply;
        met is None when the benchmark did not run."""
        if not result:
            return (self.title(), "–", None)
        if not self.applies(result):
            return None
        value = self.value(result)
        compare = _COMPARISONS[self.comparison][1]
        met = not math.isnan(value) and compare(value, self.threshold) and self.also(result)
        return (self.title(), self.figure(result), met)


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, int | float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _s(summary: dict[str, Any] | None, digits: int = 1) -> str:
    if not summary or not summary.get("n"):
        return "–"
    median = _f(summary["median"], digits)
    if summary["n"] == 1 or summary["min"] == summary["max"]:
        return median
    return f"{median} ({_f(summary['min'], digits)}–{_f(summary['max'], digits)})"


# --- idle ---------------------------------------------------------------------------


def _idle(result: Result) -> dict[str, Any]:
    return result["summary"]  # type: ignore[no-any-return]


def _median(summary: dict[str, Any]) -> float:
    return float(summary["median"]) if summary.get("n") else float("nan")


def _measured(*kinds: str) -> Callable[[Result], bool]:
    """A target that needs these kinds of server in the idle run (``--set kinds=``)."""

    def applies(result: Result) -> bool:
        measured = _idle(result).get("kinds", ["service", "floor"])
        return all(kind in measured for kind in kinds)

    return applies


def _stock(result: Result) -> dict[str, Any]:
    return _idle(result).get("ratios", {}).get("service", {}).get("stock-floor") or {}


def _rss_figure(result: Result) -> str:
    s = _idle(result)
    kib = s["rss_kib_per_session"]
    return (
        f"{_f(s['rss_ratio']['median'], 2)} × ({_f(kib['service']['median'])} KiB vs "
        f"{_f(kib['floor']['median'])} KiB per session)"
    )


def _cpu_figure(result: Result) -> str:
    s = _idle(result)
    us = s["cpu_us_per_session_s"]
    return (
        f"{_f(s['cpu_ratio']['median'], 2)} × ({_f(us['service']['median'], 2)} vs "
        f"{_f(us['floor']['median'], 2)} µs)"
    )


def _stock_cpu_figure(result: Result) -> str:
    us = _idle(result)["cpu_us_per_session_s"]
    return (
        f"{_s(_stock(result)['cpu'], 2)} × ({_f(us['service']['median'], 2)} vs "
        f"{_f(us['stock-floor']['median'], 2)} µs, by slope)"
    )


def _stock_at_n(result: Result) -> dict[str, float]:
    return {n: r["median"] for n, r in _stock(result).get("cpu_by_n", {}).items()}


def _stock_at_n_figure(result: Result) -> str:
    by_n = _stock(result).get("cpu_by_n", {})
    return ", ".join(f"{_s(r, 2)} × at N = {int(n):,}" for n, r in by_n.items())


def _stock_rss_figure(result: Result) -> str:
    kib = _idle(result)["rss_kib_per_session"]
    return (
        f"{_s(_stock(result)['rss'], 2)} × ({_f(kib['service']['median'])} vs "
        f"{_f(kib['stock-floor']['median'])} KiB)"
    )


def _trips_figure(result: Result) -> str:
    steps = result["sizes"]["steps"]
    worst = _idle(result)["round_trips_per_tick_max"]
    return f"max {_f(worst, 2)} over N = {', '.join(f'{n:,}' for n in steps)}"


# --- the others ---------------------------------------------------------------------


def _capacity_figure(cap: Result) -> str:
    sizes = cap["sizes"]
    rooms = f" in {sizes['rooms']:,} rooms" if sizes.get("rooms") else " (no rooms)"
    return (
        f"{cap['connected']:,} of {cap['requested']:,}{rooms} held {cap['held_seconds']:.0f} s "
        f"over {sizes['processes']} processes; {cap['spurious_expiries']} spurious "
        f"expiries, {cap['drops']} drops"
    )


def _capacity_presence(cap: Result) -> bool:
    """A run with presence on (every socket joined to its room and watching it)."""
    return bool(cap["sizes"].get("rooms"))


def _capacity_also(cap: Result) -> bool:
    sizes = cap["sizes"]
    return bool(
        _capacity_presence(cap)
        and cap["connected"] >= cap["requested"]
        and cap["joins_accepted"] == cap["watches_accepted"] == cap["requested"]
        and sizes["rooms"] >= 1_000
        and sizes["sessions"] >= 100 * sizes["rooms"]
        and cap["spurious_expiries"] == 0
        and cap["drops"] == 0
        and cap["held_seconds"] >= 600
    )


def _storm_figure(result: Result) -> str:
    s = result["summary"]
    return (
        f"{result['sizes']['clients']:,} clients: all back in {_s(s['all_back_s']['service'])} s "
        f"(worst {_f(s['all_back_s']['service']['max'])} s); {s['errors_5xx']['service']} 5xx"
    )


def _rest_figure(result: Result) -> str:
    s = result["summary"]
    return (
        f"{_f(s['throughput_ratio']['median'], 2)} × "
        f"({_f(s['requests_per_s']['service']['median'])} vs "
        f"{_f(s['requests_per_s']['floor']['median'])} req/s)"
    )


def _cleanup_key(result: Result) -> dict[str, Any]:
    cleanup = result["summary"]
    return max(  # type: ignore[no-any-return]
        (v for v in cleanup.values() if v["inactive"] == 1000),
        key=lambda v: v["stored"],
        default=None,
    ) or max(cleanup.values(), key=lambda v: (v["stored"], v["inactive"]))


def _cleanup_figure(result: Result) -> str:
    key = _cleanup_key(result)
    return (
        f"{_f(key['ms']['median'], 2)} ms for {key['inactive']:,} among {key['stored']:,} "
        f"({_f(key['redis_ms']['median'], 2)} ms inside Redis)"
    )


def _memory_service(result: Result) -> dict[str, Any]:
    return {k: v for k, v in result["summary"].items() if k.startswith("service")}


def _memory_figure(result: Result) -> str:
    service = _memory_service(result)
    worst = max(service, key=lambda k: service[k]["median"])
    return f"{_f(service[worst]['median'], 0)} B at {worst.removeprefix('service ')} " + (
        "(worst case); "
        + ", ".join(
            f"{_f(v['median'], 0)} B at {k.removeprefix('service ')}"
            for k, v in service.items()
            if k != worst
        )
    )


def _fanout_full(result: Result) -> bool:
    sizes = result["sizes"]
    return bool(
        sizes["watchers"] >= 10_000 and sizes["joiners"] >= 1_000 and sizes["processes"] >= 3
    )


def _fanout_latency_figure(result: Result) -> str:
    s, sizes = result["summary"], result["sizes"]
    return (
        f"{sizes['watchers']:,} watchers over {sizes['processes']} processes, "
        f"{sizes['joiners']:,} joins sent over {sizes['spread']:g} s: until every watcher "
        f"has a join p99 {_seconds(s['all_watchers_p99_s'])} s, the worst round "
        f"{_fnum(s['all_watchers_p99_s']['max'], 3)} s (per pair p99 "
        f"{_seconds(s['pair_p99_s'])} s, p50 {_seconds(s['pair_p50_s'])} s); pairs never "
        f"delivered: {int(s['pairs_missing']['max']):,}"
    )


def _fanout_messages_figure(result: Result) -> str:
    s, sizes = result["summary"], result["sizes"]
    return (
        f"{_fnum(s['messages_per_watcher_p50'], 0)} messages a watcher (naive: "
        f"{sizes['joiners']:,}) over {_fnum(s['diff_windows'], 0)} windows of "
        f"{result['diff_window_ms']:g} ms: {_fnum(s['messages_per_window_max'], 2)} a window "
        f"on average, at most {_fnum(s['max_messages_in_one_window_max']['max'], 0)} in any "
        "one window (worst watcher)"
    )


def _fanout_commands_figure(result: Result) -> str:
    s = result["summary"]
    return (
        f"{_fnum(s['commands_per_join_net'])} commands a join, inside scripts included "
        f"and Redis's background rate taken out ({_fnum(s['commands_per_join'])} with it); "
        f"{_fnum(s['evalsha_per_join'], 2)} script calls a join"
    )


def _peers_target(
    key: str, name: str, value: Callable[[Result], float], unit: str, digits: int
) -> Target:
    """A peers target: Presence's ``key`` ("rss" or "cpu") under the lighter peer's, met
    only at full size with every socket connected and pinged."""
    return Target(
        f"peers_{key}_ratio",
        "peers",
        name,
        value,
        lambda r: peers.ratio_figure(r, key, unit, digits),
        "<",
        1.0,
        "{:g}",
        also=lambda r: peers.full(r) and peers.sound(r),
        applies=lambda r: f"{key}_ratio_lighter" in r.get("summary", {}),
    )


TARGETS: tuple[Target, ...] = (
    Target(
        "idle_rss_ratio",
        "idle",
        "Idle session RSS {threshold} × the floor",
        lambda r: _median(_idle(r)["rss_ratio"]),
        _rss_figure,
        "<=",
        1.10,
        "{:.2f}",
        applies=_measured("service", "floor"),
    ),
    Target(
        "idle_rss_kib",
        "idle",
        "Idle session RSS {threshold} KiB",
        lambda r: _median(_idle(r)["rss_kib_per_session"]["service"]),
        lambda r: f"{_f(_idle(r)['rss_kib_per_session']['service']['median'])} KiB",
        "<=",
        24,
        applies=_measured("service"),
    ),
    Target(
        "idle_stall_ms",
        "idle",
        "Longest event-loop stall of one process holding 15,000 idle sockets (a /healthz "
        "probe every 100 ms; the idle window and a reconnect storm of 10,000) {threshold} ms",
        lambda r: max(
            float(_idle(r)["loop_stall_max_ms"]["service"]["max"]),
            float(_idle(r).get("storm_stall_max_ms", {}).get("service", {}).get("max", "nan")),
        ),
        lambda r: (
            f"{_f(_idle(r)['loop_stall_max_ms']['service']['max'], 0)} ms idle at N = "
            f"{r['sizes']['steps'][-1]:,} (worst round; p99 "
            f"{_f(_idle(r)['loop_stall_p99_ms']['service']['median'], 0)} ms), "
            f"{_f(_idle(r).get('storm_stall_max_ms', {}).get('service', {}).get('max'), 0)} ms "
            f"in the storm of {r['sizes'].get('storm', 0):,} (p99 "
            f"{_f(_idle(r).get('storm_stall_p99_ms', {}).get('service', {}).get('median'), 0)}"
            f" ms; all back: {_idle(r).get('storm_all_back')}); the bare floor "
            f"{_f(_idle(r)['loop_stall_max_ms'].get('floor', {}).get('max'), 0)} ms idle, "
            f"{_f(_idle(r).get('storm_stall_max_ms', {}).get('floor', {}).get('max'), 0)} ms "
            "in the storm"
        ),
        "<=",
        50,
        also=lambda r: r["sizes"]["steps"][-1] >= 15_000 and "storm_stall_max_ms" in _idle(r),
        applies=lambda r: "loop_stall_max_ms" in _idle(r),
    ),
    Target(
        "idle_cpu_ratio",
        "idle",
        "Idle CPU per session-second {threshold} × the floor",
        lambda r: _median(_idle(r)["cpu_ratio"]),
        _cpu_figure,
        "<=",
        1.20,
        "{:.2f}",
        applies=_measured("service", "floor"),
    ),
    Target(
        "idle_cpu_stock_ratio",
        "idle",
        "Idle CPU per session-second {threshold} × the stock floor (bare Starlette on stock "
        "`websockets-sansio`), by slope",
        lambda r: _median(_stock(r)["cpu"]),
        _stock_cpu_figure,
        "<=",
        1.10,
        "{:.2f}",
        applies=lambda r: bool(_stock(r)),
    ),
    Target(
        "idle_cpu_stock_ratio_at_n",
        "idle",
        "Idle CPU per session-second {threshold} × the stock floor at each N (whole CPU / N)",
        lambda r: max(_stock_at_n(r).values(), default=float("nan")),
        _stock_at_n_figure,
        "<=",
        1.10,
        "{:.2f}",
        applies=lambda r: bool(_stock(r).get("cpu_by_n")),
    ),
    Target(
        "idle_rss_stock_ratio",
        "idle",
        "Idle session RSS {threshold} × the stock floor",
        lambda r: _median(_stock(r)["rss"]),
        _stock_rss_figure,
        "<=",
        0.70,
        "{:.2f}",
        applies=lambda r: bool(_stock(r)),
    ),
    Target(
        "idle_round_trips",
        "idle",
        "Redis round trips per refresher tick {threshold} per process, whatever N",
        lambda r: float(_idle(r)["round_trips_per_tick_max"]),
        _trips_figure,
        "==",
        1,
        applies=_measured("service"),
    ),
    Target(
        "capacity_sessions",
        "capacity",
        "Sessions held 600 s on the service's defaults with presence on (each joined to "
        "one of 1,000 rooms of 100 and watching it), 0 spurious expiries, 0 drops "
        "{threshold}",
        lambda r: float(r["connected"]),
        _capacity_figure,
        ">=",
        100_000,
        "{:,}",
        also=_capacity_also,
    ),
    Target(
        "capacity_expiries",
        "capacity",
        "Capacity: spurious expiries (a session key, the user's tabs or a member gone "
        "while its socket is open) {threshold}",
        lambda r: float(r["spurious_expiries"]),
        lambda r: (
            f"{r['spurious_expiries']} ({r['missing_at_end']} sessions and "
            f"{r['members_missing_at_end']} members missing at the end, "
            f"{r['expired_must_live']} such keys expired during the hold)"
        ),
        "==",
        0,
        applies=_capacity_presence,
    ),
    Target(
        "capacity_drops",
        "capacity",
        "Capacity: drops (a socket closed, an `ended`, a leave of a member whose socket is "
        "open) {threshold}",
        lambda r: float(r["drops"]),
        lambda r: (
            f"{r['drops']} ({r['closed']} closed, {r['ended']} ended, "
            f"{r['users_told_a_leave_while_open'] + r['ramp_users_told_a_leave_while_open']} "
            "users told a leave while open)"
        ),
        "==",
        0,
        applies=_capacity_presence,
    ),
    Target(
        "storm_all_back_s",
        "storm",
        "Reconnect storm of 10,000, no 5xx: all back {threshold} s",
        lambda r: float(r["summary"]["all_back_s"]["service"]["max"]),
        _storm_figure,
        "<=",
        30,
        also=lambda r: (
            r["sizes"]["clients"] >= 10_000 and r["summary"]["errors_5xx"]["service"] == 0
        ),
        # A run of the presence variant alone (a dev run) has no service round.
        applies=lambda r: "service" in r.get("summary", {}).get("all_back_s", {}),
    ),
    Target(
        "rest_throughput_ratio",
        "rest",
        "REST heartbeat throughput {threshold} × the floor",
        lambda r: _median(r["summary"]["throughput_ratio"]),
        _rest_figure,
        ">=",
        0.80,
        "{:.2f}",
    ),
    Target(
        "rest_p99_ratio",
        "rest",
        "REST heartbeat p99 {threshold} × the floor's p99 at the same concurrency",
        lambda r: (
            _median(r["summary"]["p99_ms"]["service"]) / _median(r["summary"]["p99_ms"]["floor"])
        ),
        lambda r: (
            f"{_f(r['summary']['p99_ms']['service']['median'])} ms against the floor's "
            f"{_f(r['summary']['p99_ms']['floor']['median'])} ms at "
            f"{r['sizes']['connections']} connections"
        ),
        "<=",
        1.2,
        "{:.1f}",
    ),
    Target(
        "cleanup_ms",
        "cleanup",
        "`inactive` cleanup of 1,000 among 1M {threshold} ms",
        lambda r: float(_cleanup_key(r)["ms"]["median"]),
        _cleanup_figure,
        "<=",
        20,
        also=lambda r: _cleanup_key(r)["stored"] >= 1_000_000 and _cleanup_key(r)["all_deleted"],
    ),
    Target(
        "redis_bytes",
        "redis_memory",
        "Redis {threshold} bytes per session",
        lambda r: max(v["median"] for v in _memory_service(r).values()),
        _memory_figure,
        "<=",
        250,
    ),
    Target(
        "fanout_p99_s",
        "fanout",
        "Fan-out: every join to all of 10,000 watchers at p99 {threshold} s",
        lambda r: float(r["summary"]["all_watchers_p99_s"]["max"]),
        _fanout_latency_figure,
        "<=",
        1.0,
        also=lambda r: _fanout_full(r) and int(r["summary"]["pairs_missing"]["max"]) == 0,
    ),
    Target(
        "fanout_messages_per_window",
        "fanout",
        "Fan-out: messages a watcher receives per diff window {threshold}, not 1,000",
        lambda r: max(
            r["summary"]["messages_per_window_max"]["max"],
            r["summary"]["max_messages_in_one_window_max"]["max"],
        ),
        _fanout_messages_figure,
        "<=",
        2,
        also=_fanout_full,
    ),
    Target(
        "fanout_commands_per_join",
        "fanout",
        # Reported, not bounded: any finite figure meets it (the name shows no threshold).
        "Fan-out: Redis commands per join reported",
        lambda r: float(r["summary"]["commands_per_join_net"]["median"]),
        _fanout_commands_figure,
        "<=",
        math.inf,
        also=_fanout_full,
    ),
    _peers_target(
        "rss",
        "Idle socket beside python-socketio and Node.js Socket.IO 4 (5 s pings, no "
        "compression, N to 10,000): RSS per connection {threshold} × the lighter peer's",
        lambda r: _median(r["summary"]["rss_ratio_lighter"]),
        "KiB",
        1,
    ),
    _peers_target(
        "cpu",
        "Idle socket beside python-socketio and Node.js Socket.IO 4: CPU per "
        "connection-second {threshold} × the lighter peer's, by slope and at each N",
        peers.cpu_worst_ratio,
        "µs",
        2,
    ),
    Target(
        "storm_rooms_right_s",
        "storm",
        "Reconnect storm of 10,000 sessions into 100 rooms: all back and every room's "
        "member list right within {threshold} s; 0 × 5xx",
        lambda r: float(r["summary"]["presence"]["right_s"]["max"]),
        storm.rooms_right_figure,
        "<=",
        30,
        also=lambda r: (
            storm.rooms_full(r)
            and r["summary"]["presence"]["right_every_round"]
            and r["summary"]["errors_5xx"]["presence"] == 0
        ),
        applies=lambda r: "presence" in r.get("summary", {}),
    ),
    Target(
        "storm_rooms_leaves",
        "storm",
        "Reconnect storm into rooms: watchers see no leave for a session back within the "
        "grace ({threshold})",
        lambda r: float(r["summary"]["presence"]["leaves_for_clients_back_within_grace"]),
        storm.rooms_leaves_figure,
        "==",
        0,
        # Shown met only when some client was back within the grace in every round.
        also=lambda r: (
            storm.rooms_full(r) and r["summary"]["presence"]["back_within_grace"]["min"] > 0
        ),
        applies=lambda r: "presence" in r.get("summary", {}),
    ),
    Target(
        "reclaim_complete_s",
        "reclaim",
        "Crash reclaim: SIGKILL a process holding 20,000 members; every watcher elsewhere "
        "has every `node_down` leave within {threshold} s",
        lambda r: float(r["summary"]["complete_max_s"]["max"]),
        reclaim.complete_figure,
        "<=",
        reclaim.TARGET_S,
        also=lambda r: (
            reclaim.full(r)
            and int(r["summary"]["leaves_missing"]["max"]) == 0
            and bool(r["summary"]["redis_clean"])
        ),
    ),
    Target(
        "reclaim_commands_per_member",
        "reclaim",
        # Reported, not bounded: any finite figure meets it (the name shows no threshold).
        "Crash reclaim: Redis work per reaped member reported",
        lambda r: float(r["summary"]["commands_per_member_net"]["median"]),
        reclaim.work_figure,
        "<=",
        math.inf,
        also=reclaim.full,
    ),
)


def judge(benchmarks: dict[str, Result]) -> list[Row]:
    """Every target's line for these results, in the table's order."""
    rows = [target.judge(benchmarks.get(target.benchmark)) for target in TARGETS]
    return [row for row in rows if row is not None]


def threshold(key: str) -> float:
    """A target's threshold, by its key (for the chart's lines)."""
    return next(t.threshold for t in TARGETS if t.key == key)
