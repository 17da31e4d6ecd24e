"""Writes ``RESULTS.md`` and ``results.png`` from ``results.json``.

Every target is one line, met or not, with the figure it was judged on (the table of
targets, with each threshold written once, is :mod:`bench._targets`). A
figure is the median over rounds, with the spread (min–max) beside it; a ratio to the
floor is taken within each round (service and floor measured back to back) and then
the median of those ratios. ``bench/analysis.md`` (written by hand, for the targets
that are missed) is appended as it is.
"""

# The report is typeset for people: the multiplication sign for ratios and the en dash
# for ranges are meant.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import _procs, _servers, _stats, _targets, fanout, peers, reclaim
from . import storm as storm_bench


def write(results: dict[str, Any], out: Path) -> None:
    benchmarks = results.get("benchmarks", {})
    lines = _header(results)
    targets = _targets.judge(benchmarks)
    lines += ["## Targets", "", "| Target | Figure | Verdict |", "| --- | --- | --- |"]
    for target, figure, met in targets:
        verdict = "not run" if met is None else ("**met**" if met else "**not met**")
        lines.append(f"| {target} | {figure} | {verdict} |")
    lines.append("")
    for name, section in [
        ("idle", _idle),
        ("capacity", _capacity),
        ("storm", _storm),
        ("rest", _rest),
        ("cleanup", _cleanup),
        ("redis_memory", _redis_memory),
        ("fanout", fanout.section),
        ("reclaim", reclaim.section),
        ("peers", peers.section),
        ("profile", _profile),
    ]:
        if name in benchmarks:
            lines += section(benchmarks[name])
            lines.append(_footer(name, benchmarks[name]))
            lines.append("")
    analysis = _procs.REPO / "bench" / "analysis.md"
    if analysis.exists() and not any(b.get("quick") for b in benchmarks.values()):
        lines += [analysis.read_text().rstrip(), ""]
    (out / "RESULTS.md").write_text("\n".join(lines).rstrip() + "\n")
    _chart(benchmarks, out / "results.png")


# --- formatting ---------------------------------------------------------------------


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, int | float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _s(summary: dict[str, Any] | None, digits: int = 1, unit: str = "") -> str:
    """``median (min–max)``."""
    if not summary or not summary.get("n"):
        return "–"
    median = _f(summary["median"], digits)
    if summary["n"] == 1 or summary["min"] == summary["max"]:
        return f"{median}{unit}"
    return f"{median}{unit} ({_f(summary['min'], digits)}–{_f(summary['max'], digits)})"


def row(label: str, cells: list[str]) -> str:
    """A table row: the label, then the cells."""
    return f"| {label} | " + " | ".join(cells) + " |"


def table_head(names: list[str]) -> list[str]:
    """A table's header: an empty label's column, then a column a name."""
    return [row("", names), row("---", ["---"] * len(names))]


def summary_row(label: str, by_kind: dict[str, Any], kinds: list[str], digits: int = 1) -> str:
    """A row of each kind's ``median (min–max)`` from ``by_kind``."""
    return row(label, [_s(by_kind[k], digits) for k in kinds])


def _footer(name: str, result: dict[str, Any]) -> str:
    """What a section measured: the code (commit), when, and how quiet the machine was."""
    code = result.get("service_code") or result.get("machine", {}).get("service_code")
    text = (
        f"_{name}: {result['wall_seconds']:.0f} s wall, finished {result['finished']}"
        f"{' (quick sizes)' if result.get('quick') else ''}"
    )
    if code:
        text += f"; service code {code}"
    if result.get("service_code_changed_to"):
        text += f" (**changed during the run** to {result['service_code_changed_to']})"
    quiet = result.get("quiet")
    if quiet:
        text += f"; {quiet_text(quiet)}"
    elif result.get("machine", {}).get("loadavg_at_start"):
        text += f"; load average at the end {result['machine']['loadavg_at_start']}"
    return text + "._"


def quiet_text(quiet: dict[str, Any]) -> str:
    """ "quiet" or "not quiet", with the load average and other processes' CPU."""
    if not quiet.get("samples"):
        return "machine not sampled"
    load = quiet["loadavg_1m"]
    verdict = "quiet" if quiet["quiet"] else "**not quiet**"
    return (
        f"machine {verdict}: other processes used {quiet['other_cpu_cores_mean']:.2f} "
        f"cores on average (at most {quiet['other_cpu_cores_max']:.2f}; quiet is under "
        f"{_procs.QUIET_CORES:g}), 1-minute load average {load['min']:.2f}–{load['max']:.2f}"
    )


def _header(results: dict[str, Any]) -> list[str]:
    machine = results.get("machine", {})
    quick = any(b.get("quick") for b in results.get("benchmarks", {}).values())
    lines = [
        "# Benchmark results",
        "",
        "Written by `scripts/bench` (see `bench/README.md`); the chart is `results.png`.",
        "",
    ]
    if quick:
        lines += [
            "> **Quick run**: tiny sizes that only show the scripts work. The figures mean "
            "nothing and the verdicts below are not judgements.",
            "",
        ]
    lines += [
        f"- Generated: {results.get('generated', '?')}",
        f"- Machine: {machine.get('nproc', '?')} CPUs ({machine.get('cpu', '?')}), "
        f"{machine.get('memory', '?')} RAM, open files {machine.get('open_files', '?')}",
        f"- Software: Python {machine.get('python', '?')}, redis-server "
        f"{machine.get('redis', '?')}, uvicorn {machine.get('uvicorn', '?')}, websockets "
        f"{machine.get('websockets', '?')}, starlette {machine.get('starlette', '?')}",
        f"- Pinning: server on CPU {_procs.SERVER_CPU}; load clients, redis-server, wrk and the "
        f"orchestrator on CPU {_procs.LOAD_CPU} (pinned: {machine.get('pinned', '?')})",
        f"- Load average after the last benchmark run: {machine.get('loadavg_at_start', '?')}"
        " (other engineers' test suites may have been running on the same machine; the "
        "ratios to the floor, measured back to back in the same run, are the figures that "
        "count). Each section's footer says whether the machine was quiet while it ran: "
        "the CPU that processes other than the benchmark's used, sampled every second "
        "from `/proc/stat` less the benchmark's own process tree, and the load average",
    ]
    if machine.get("service_code"):
        lines.append(
            f"- Service code of the last run: {machine['service_code']} (each section's "
            "footer names the code it measured)"
        )
    if results.get("note"):
        lines.append(f"- Note: {results['note']}")
    lines.append("")
    return lines


# --- targets ------------------------------------------------------------------------


# --- sections -----------------------------------------------------------------------


_KIND_NAMES = {
    "service": "service",
    "stock": "service, stock protocol",
    "floor": "floor",
    "stock-floor": "floor, stock protocol",
}


def _idle(result: dict[str, Any]) -> list[str]:
    s = result["summary"]
    sizes = result["sizes"]
    kinds = s.get("kinds", ["service", "floor"])
    services = [k for k in kinds if _servers.is_service(k)]
    top = sizes["steps"][-1]
    lines = [
        "## 1. Idle sessions",
        "",
        f"Sockets opened in steps to N = {', '.join(f'{n:,}' for n in sizes['steps'])} on one "
        f"server process; ping interval {sizes['ping_interval']:g} s (the refresher ticks as "
        f"often); steady window {sizes['window']:g} s per step; {sizes['rounds']} rounds, "
        f"the kinds one after another in each ({', '.join(kinds)}). `stock` is the service "
        "and `stock-floor` the floor on uvicorn's stock `websockets-sansio` protocol "
        "(`PRESENCE_WS_PROTOCOL=websockets-sansio`), the others on `presence.wsproto`. "
        "Per-session figures are slopes of a least-squares fit across N. All requested "
        f"sockets connected in every round: {'yes' if s['all_connected'] else '**no**'}.",
        "",
        *table_head([_KIND_NAMES.get(k, k) for k in kinds]),
        summary_row("RSS per session (KiB)", s["rss_kib_per_session"], kinds),
        summary_row("CPU per session-second (µs, slope)", s["cpu_us_per_session_s"], kinds, 2),
    ]
    by_n = s.get("cpu_us_per_session_s_by_n") or {
        k: {str(top): s["cpu_us_per_session_s_at_top"][k]} for k in kinds
    }
    for n in sizes["steps"]:
        if all(str(n) in by_n[k] for k in kinds):
            lines.append(
                row(
                    f"CPU per session-second at N = {n:,} (µs, total / N)",
                    [_s(by_n[k][str(n)], 2) for k in kinds],
                )
            )
    lines += [
        summary_row(
            f"Handshakes/s, last step ({sizes['in_flight']} in flight)",
            s["handshake_rate"],
            kinds,
            0,
        ),
        summary_row("Handshake p99, last step (ms)", s["handshake_p99_ms"], kinds),
        summary_row("Server CPU per handshake (ms)", s["handshake_cpu_ms"], kinds, 2),
        row(
            f"Event-loop stall at N = {top:,}: `/healthz` p99 / max (ms)",
            [_stall(s, k) for k in kinds],
        ),
        row("Longest generation-2 GC pause, all rounds (ms)", [_gc(result, k) for k in kinds]),
        row(
            "Redis breaker opened, all rounds (cause)",
            [_causes(result, k) if _servers.is_service(k) else "–" for k in kinds],
        ),
        row(
            "Handshakes refused, all rounds (tried again a second later)",
            [_refusals(result, k) for k in kinds],
        ),
        "",
    ]
    # Results written before the stock kinds have the service/floor ratios alone.
    ratios = s.get("ratios") or {
        "service": {"floor": {"rss": s["rss_ratio"], "cpu": s["cpu_ratio"]}}
    }
    if ratios:
        floors = [k for k in kinds if not _servers.is_service(k)]
        lines += [
            "Ratios, each taken within a round and the median over rounds (spread):",
            "",
            row("", [f"RSS / {f}" for f in floors] + [f"CPU / {f}" for f in floors]),
            row("---", ["---"] * (2 * len(floors))),
        ]
        for kind in kinds:
            if kind not in ratios or not ratios[kind]:
                continue
            cells = [
                _s(ratios[kind][f]["rss"], 2) if f in ratios[kind] else "–" for f in floors
            ] + [_s(ratios[kind][f]["cpu"], 2) if f in ratios[kind] else "–" for f in floors]
            lines.append(row(_KIND_NAMES.get(kind, kind), cells))
        lines.append("")
    lines += [
        "Per step (median over rounds):",
        "",
        row(
            "N",
            [f"RSS {k} (MiB)" for k in kinds]
            + [f"CPU {k} (ms/s)" for k in kinds]
            + [
                "refresher round trips / tick",
                "all round trips / tick (with health-check PINGs and the node lease, 2 a second)",
                "Redis commands / tick",
                "REFRESH time in Redis (ms)",
            ],
        ),
        row("---", ["---"] * (2 * len(kinds) + 4)),
    ]
    for i, n in enumerate(sizes["steps"]):

        def med(kind: str, key: str, scale: float = 1.0, i: int = i) -> float:
            values = [
                r["plateaus"][i][key] * scale
                for r in result["rounds"]
                if r["kind"] == kind and r["plateaus"][i].get(key) is not None
            ]
            return _stats.summary(values)["median"]

        lines.append(
            row(
                f"{n:,}",
                [_f(med(k, "rss_kib", 1 / 1024)) for k in kinds]
                + [_f(med(k, "cpu_per_s", 1000)) for k in kinds]
                + [
                    _f(med("service", "round_trips_per_tick"), 2),
                    _f(med("service", "round_trips_per_tick_with_pings"), 2),
                    _f(med("service", "redis_commands_per_tick"), 0),
                    _f(s["refresh_redis_ms_by_n"][str(n)]["median"], 1),
                ],
            )
        )
    if any(r.get("quiet") for r in result["rounds"]):
        lines += ["", "How quiet the machine was in each round:", ""]
        for r in result["rounds"]:
            lines.append(f"- round {r['round'] + 1}, {r['kind']}: {quiet_text(r['quiet'] or {})}")
    if "service" in services:
        first = next(r for r in result["rounds"] if r["kind"] == "service")
        lines += [
            "",
            "Round trips seen in one window (service, first round, last step): "
            + ", ".join(f"`{k}` × {v}" for k, v in first["plateaus"][-1]["round_trips"].items())
            + ".",
        ]
    lines.append("")
    return lines


def _stall(s: dict[str, Any], kind: str) -> str:
    p99 = s.get("loop_stall_p99_ms", {}).get(kind)
    worst = s.get("loop_stall_max_ms", {}).get(kind)
    return f"{_s(p99, 0)} / {_s(worst, 0)}"


def _gc(result: dict[str, Any], kind: str) -> str:
    pauses = [p for r in result["rounds"] if r["kind"] == kind for p in r.get("gc_pauses_ms", [])]
    if not any("gc_pauses_ms" in r for r in result["rounds"]):
        return "–"
    return f"{max(pauses):.0f} ({len(pauses)} over 50 ms)" if pauses else "none over 50 ms"


def _causes(result: dict[str, Any], kind: str) -> str:
    causes: dict[str, int] = {}
    for r in result["rounds"]:
        if r["kind"] == kind:
            for cause, count in r.get("breaker_causes", {}).items():
                causes[cause] = causes.get(cause, 0) + count
    return "; ".join(f"{count} × `{cause}`" for cause, count in causes.items()) or "0"


def _refusals(result: dict[str, Any], kind: str) -> str:
    kinds: dict[str, int] = {}
    for r in result["rounds"]:
        if r["kind"] == kind:
            for p in r["plateaus"]:
                for failure, count in p["handshake_failed"].items():
                    kinds[failure] = kinds.get(failure, 0) + count
    return ", ".join(f"{count} × `{failure}`" for failure, count in kinds.items()) or "0"


def _capacity(result: dict[str, Any]) -> list[str]:
    sizes = result["sizes"]
    samples = result["samples"]
    if not sizes.get("rooms"):
        return [
            "## 2. Capacity",
            "",
            f"Measured before presence was on (plain sessions, TTL {sizes['ttl']:g} s): "
            f"{result['connected']:,} of {result['requested']:,} held "
            f"{result['held_seconds']:.0f} s. Run `scripts/bench capacity` again for the "
            "target's load.",
            "",
        ]
    memory = result["redis_memory"]
    ramp = result["ramp"]

    def counts(values: dict[str, int]) -> str:
        return ", ".join(f"{n:,} × `{k}`" for k, n in sorted(values.items())) or "none"

    servers = result["server_rss_mib"]
    return [
        "## 2. Capacity",
        "",
        f"{result['requested']:,} sessions ({sizes['per_user']} a user: {result['members']:,} "
        f"members) in {sizes['rooms']:,} rooms, every socket joined to its room and "
        f"watching it; {sizes['processes']} `presence serve` processes on CPUs "
        f"{sizes['server_cpus']}, {sizes['loaders']} load processes (`bench/_fanout_load.py`) "
        f"and redis-server on CPU {_procs.LOAD_CPU}. The service's defaults: 30 s pings, "
        "24 h TTL, the refresher every 30 s. Held "
        f"{result['held_seconds']:.0f} s, sampled every {sizes['sample_every']:g} s.",
        "",
        "| | |",
        "| --- | --- |",
        f"| Sockets held (minimum over the hold) | {result['connected']:,} |",
        f"| Ramp | {result['ramp_seconds']:.0f} s: sessions created {ramp['create_s']:.0f} s, "
        f"sockets opened {ramp['open_s']:.0f} s, joins and watches {ramp['join_watch_s']:.0f} s; "
        f"servers' CPU over it {_f(sum(result.get('ramp_server_cpu_s', [math.nan])))} s |",
        f"| Handshakes refused or failed | {counts(result['ramp_failures'])} |",
        f"| Joins / watches accepted (answered by a sync) | {result['joins_accepted']:,} / "
        f"{result['watches_accepted']:,}; not: {counts(result['join_failures'])} |",
        f"| Refusals (each sent again after a full-jitter delay, as the JS client does) | "
        f"{counts(result.get('join_refusals', {}))} |",
        f"| Errors sent to the sockets | {counts(result['errors'])} |",
        f"| Sessions whose socket never opened | {result['never_connected']:,} |",
        f"| Keys in Redis (first / last sample) | "
        f"{samples[0]['redis_keys']:,} / {samples[-1]['redis_keys']:,} |",
        f"| Redis `expired_keys` during the hold (by kind) | "
        f"{result['expired_keys_during_hold']:,} ({counts(result['expired_during_hold_by_kind'])}"
        f"); of keys that must live while their socket is open: {result['expired_must_live']}"
        + (
            f"; others than a room's versions: "
            f"{', '.join(f'`{n}`' for n in result['expired_names'][:5])}"
            if result.get("expired_names")
            else ""
        )
        + " |",
        f"| Sessions / members of open sockets missing at the end (each checked by name) | "
        f"{result['missing_at_end']} / {result['members_missing_at_end']} (and "
        f"{result.get('members_missing_of_refused_joins', 0)} of sockets whose join was "
        "refused) |",
        f"| Drops | {result['drops']}: {result['closed']} sockets closed, {result['ended']} "
        f"`ended`, users told a leave while their socket is open: "
        f"{result['users_told_a_leave_while_open']} during the hold, "
        f"{result.get('ramp_users_told_a_leave_while_open', 0)} during the ramp |",
        f"| Leaves told during the ramp, by reason | "
        f"{counts(result.get('ramp_leaves_by_reason', {}))} |",
        f"| Leaves told to watchers, by reason (a leave counts once per watcher) | "
        f"{counts(result['leaves_by_reason'])}; users told a leave: "
        f"{result['users_told_a_leave']} |",
        f"| Watchers' gaps in seq | {result['gaps']} |",
        "| Samples a server did not answer `/readyz` within 10 s; longest answer (s) | "
        f"{sum(x.get('readyz_unanswered', 0) for x in samples)}; "
        f"{_f(max((x.get('readyz_longest_s', 0.0) for x in samples), default=0.0), 1)} |",
        "| Redis breaker opened (cause) | " + counts(result["breaker_causes"]) + " |",
        f"| Server RSS per session | {_f(result['rss_kib_per_session'])} KiB "
        f"(sum {_f(sum(servers) / 1024, 2)} GiB); per process "
        f"{', '.join(_f(x) for x in result['rss_kib_per_session_by_process'])} KiB; added by "
        f"the sockets (less the servers' RSS before them) "
        f"{_f(result.get('rss_kib_added_per_session'))} KiB |",
        f"| Server RSS per process (MiB) | {', '.join(_f(x, 0) for x in servers)} |",
        f"| Server CPU per session-second during the hold | "
        f"{_f(result['cpu_us_per_session_s'], 2)} µs (per process, ms/s: "
        f"{', '.join(_f(x * 1000) for x in result['server_cpu_per_s'])}) |",
        f"| Load-client RSS per process (MiB) | "
        f"{', '.join(_f(x, 0) for x in result['load_rss_mib'])} |",
        f"| Redis `used_memory` per session / per socket (tab) / per member | "
        f"{_f(result['redis_bytes_per_session'], 0)} / {_f(result['redis_bytes_per_socket'], 0)}"
        f" / {_f(result['redis_bytes_per_member'], 0)} B (before "
        f"{_f(memory['before'] / 2**20)} MiB, after sessions {_f(memory['sessions'] / 2**20)}, "
        f"after sockets {_f(memory['sockets'] / 2**20)}, after joins "
        f"{_f(memory['joined'] / 2**20)}; at the end {_f(result['redis_used_mib'])}) |",
        "",
    ]


def _storm(result: dict[str, Any]) -> list[str]:
    s = result["summary"]
    sizes = result["sizes"]
    variants = list(s["all_back_s"])

    def row(label: str, key: str, digits: int = 1, fmt: Any = None) -> str:
        values = s.get(key, {})
        cells = [
            "–" if v not in values else fmt(values[v]) if fmt else _s(values[v], digits)
            for v in variants
        ]
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = [
        "## 3. Reconnect storm",
        "",
        f"{sizes['clients']:,} clients following the browser client's schedule (full-jitter "
        "backoff 0.5 s base, 30 s cap; one REST heartbeat at once on loss); SIGTERM at time "
        f"zero, restart on the same port once the old process has exited; {sizes['rounds']} "
        f"rounds, variants alternating; a round gives up {sizes['give_up_after']:g} s after "
        "the SIGTERM (∞: not all were back by then).",
        "",
        "| | " + " | ".join(variants) + " |",
        "| --- |" + " --- |" * len(variants),
        row("All back after (s)", "all_back_s"),
        row("Half back after (s)", "back_p50_s"),
        row("Down: SIGTERM to ready again (s)", "down_s"),
        row("Peak reconnects in one second", "peak_connects_per_s", 0),
        row("Server CPU per reconnect (ms)", "recovery_cpu_ms_per_reconnect", 2),
        row("5xx (handshakes + heartbeats, all rounds)", "errors_5xx", fmt=str),
        row("Handshakes refused 404 (all rounds)", "handshake_404", fmt=str),
        row("Redis breaker trips logged (all rounds)", "breaker_trips", fmt=str),
        row("Kernel listen-queue overflows (SYNs dropped)", "listen_overflows", 0),
        row("Load client's CPU busy from SIGTERM to the end (share)", "load_cpu_busy", 2),
        "",
        "Failures the clients saw after the restart, per round (a refused connection while "
        "the server is down is expected):",
        "",
    ]
    for r in result["rounds"]:
        lines.append(
            f"- round {r['round'] + 1}, {r['kind']}: "
            + (", ".join(f"`{k}` × {v}" for k, v in sorted(r["failures"].items())) or "none")
            + f"; heartbeats {r['heartbeats'] or 'none'}; close codes {r['close_codes']}"
        )
    lines.append("")
    lines += storm_bench.section(result)
    return lines


def _rest(result: dict[str, Any]) -> list[str]:
    s = result["summary"]
    sizes = result["sizes"]
    return [
        "## 4. REST heartbeat",
        "",
        f"`wrk -t1 -c{sizes['connections']} -d{sizes['duration']:g}s` POSTing `{{}}` to "
        f"`/sessions/{{id}}/heartbeat` over {sizes['sessions']:,} sessions with their bearer "
        f"tokens; {sizes['rounds']} rounds alternating after a warm-up run of each.",
        "",
        "| | service | floor | ratio |",
        "| --- | --- | --- | --- |",
        f"| Requests/s | {_s(s['requests_per_s']['service'], 0)} | "
        f"{_s(s['requests_per_s']['floor'], 0)} | {_s(s['throughput_ratio'], 2)} |",
        f"| p50 (ms) | {_s(s['p50_ms']['service'])} | {_s(s['p50_ms']['floor'])} | |",
        f"| p99 (ms) | {_s(s['p99_ms']['service'])} | {_s(s['p99_ms']['floor'])} | |",
        f"| Server CPU per request (ms) | {_s(s['cpu_ms_per_request']['service'], 3)} | "
        f"{_s(s['cpu_ms_per_request']['floor'], 3)} | |",
        f"| Non-2xx responses | {s['non_2xx']['service']} | {s['non_2xx']['floor']} | |",
        "",
    ]


def _cleanup(result: dict[str, Any]) -> list[str]:
    lines = [
        "## 5. `inactive` cleanup",
        "",
        f"`RedisStore.delete_inactive` for one user, {result['sizes']['rounds']} rounds with "
        "the store sizes interleaved; the deleted sessions are written back between calls.",
        "",
        "| Stored | Inactive | Time per call (ms) | Inside Redis (ms) | All deleted, rest kept |",
        "| --- | --- | --- | --- | --- |",
    ]
    for v in sorted(result["summary"].values(), key=lambda v: (v["inactive"], v["stored"])):
        lines.append(
            f"| {v['stored']:,} | {v['inactive']:,} | {_s(v['ms'], 2)} | "
            f"{_s(v['redis_ms'], 2)} | {'yes' if v['all_deleted'] and v['rest_kept'] else 'no'} |"
        )
    lines.append("")
    return lines


def _redis_memory(result: dict[str, Any]) -> list[str]:
    lines = [
        "## 6. Redis memory per session",
        "",
        f"`used_memory` delta over {result['sizes']['sessions']:,} sessions created through "
        f"the service's store, {result['sizes']['rounds']} rounds with the variants "
        "interleaved, each from an empty Redis.",
        "",
        "| Variant | Bytes per session |",
        "| --- | --- |",
    ]
    for variant, summary in result["summary"].items():
        lines.append(f"| {variant} | {_s(summary, 0)} |")
    lines.append("")
    return lines


def _profile(result: dict[str, Any]) -> list[str]:
    lines = [
        "## Profiles",
        "",
        "py-spy samples of the running server (own time is the function at the top of the "
        "stack; inclusive is any frame in it), and tracemalloc's count of what each open "
        "socket allocates. Raw stacks are in `bench/.work/profiles/`.",
        "",
    ]
    for key, title in [
        ("idle_service", "Service, idle sockets"),
        ("idle_floor", "Floor, idle sockets"),
        ("rest_service", "Service under REST heartbeats"),
    ]:
        p = result.get(key)
        if not p:
            continue
        extra = ""
        if "cpu_s" in p:
            extra = f", {p['sockets']:,} sockets, {p['cpu_s']:.2f} s of CPU in the window"
        if p.get("gc_pauses_ms"):
            pauses = p["gc_pauses_ms"]
            extra += (
                f"; generation-2 GC pauses over 50 ms while it ran: {len(pauses)}, "
                f"longest {max(pauses):.0f} ms"
            )
        lines += [
            f"### {title} ({p['samples']:,} samples{extra})",
            "",
            "| Own time | share | | Inclusive | share |",
            "| --- | --- | --- | --- | --- |",
        ]
        own, inclusive = p["own"], p["inclusive"][: len(p["own"])]
        for i in range(max(len(own), len(inclusive))):
            a = own[i] if i < len(own) else ("", 0)
            b = inclusive[i] if i < len(inclusive) else ("", 0)
            lines.append(f"| `{a[0]}` | {a[1]:.1%} | | `{b[0]}` | {b[1]:.1%} |")
        lines.append("")
    service, floor = result.get("memory_service"), result.get("memory_floor")
    if service and floor:
        mine = {where: size for where, size, _ in service["by_line"]}
        theirs = {where: size for where, size, _ in floor["by_line"]}
        extra = sorted(
            ((mine.get(w, 0) - theirs.get(w, 0), w) for w in set(mine) | set(theirs)),
            reverse=True,
        )
        total = service["traced_bytes_per_socket"] - floor["traced_bytes_per_socket"]
        lines += [
            f"### What the service adds per socket: {_f(total, 0)} bytes traced",
            "",
            f"Lines among the {len(service['by_line'])} largest of either where the service "
            "allocates more per socket than the floor; the rest of the difference is spread "
            "over smaller lines.",
            "",
            "| Allocated at | extra bytes per socket |",
            "| --- | --- |",
        ]
        lines += [f"| `{where}` | {_f(size, 0)} |" for size, where in extra[:15] if size >= 16]
        lines.append("")
    for key, title in [("memory_service", "service"), ("memory_floor", "floor")]:
        m = result.get(key)
        if not m:
            continue
        lines += [
            f"### What one socket allocates: {title} ({m['sockets']:,} sockets, "
            f"{_f(m['traced_bytes_per_socket'] / 1024)} KiB traced per socket)",
            "",
            "| Allocated at | bytes per socket | blocks per socket |",
            "| --- | --- | --- |",
        ]
        for where, size, count in m["by_line"][:15]:
            lines.append(f"| `{where}` | {_f(size, 0)} | {_f(count, 1)} |")
        lines.append("")
    return lines


# --- chart --------------------------------------------------------------------------


def _chart(b: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "service": "#1f77b4",
        "floor": "#7f7f7f",
        "stock": "#ff7f0e",
        "stock-floor": "#bcbd22",
    }
    fig, axes = plt.subplots(2, 4, figsize=(21, 9.5))
    fig.suptitle("Presence benchmarks: service (blue) against its floor (grey)", fontsize=14)

    ax = axes[0][0]
    ax2 = axes[0][1]
    idle = b.get("idle")
    if idle:
        for r in idle["rounds"]:
            ns = [p["n"] for p in r["plateaus"]]
            label = r["kind"] if r["round"] == 0 else None
            ax.plot(
                ns, [p["rss_kib"] / 1024 for p in r["plateaus"]], "o-",
                color=colors[r["kind"]], alpha=0.7, label=label,
            )  # fmt: skip
            ax2.plot(
                ns, [p["cpu_per_s"] * 1000 for p in r["plateaus"]], "o-",
                color=colors[r["kind"]], alpha=0.7, label=label,
            )  # fmt: skip
        s = idle["summary"]
        measured = s.get("kinds", ["service", "floor"])
        if "service" in measured and "floor" in measured:
            ax.set_title(
                f"1. Idle: server RSS vs sockets\n"
                f"{s['rss_kib_per_session']['service']['median']:.1f} "
                f"vs {s['rss_kib_per_session']['floor']['median']:.1f} KiB/socket "
                f"(×{s['rss_ratio']['median']:.2f}; target "
                f"≤ ×{_targets.threshold('idle_rss_ratio'):.2f}, "
                f"≤ {_targets.threshold('idle_rss_kib'):g} KiB)"
            )
            ax2.set_title(
                "1. Idle: server CPU vs sockets "
                f"(ping every {idle['sizes']['ping_interval']:g} s)\n"
                f"×{s['cpu_ratio']['median']:.2f} the floor per socket "
                f"(target ≤ ×{_targets.threshold('idle_cpu_ratio'):.2f})"
            )
    _axes(ax, "open sockets", "RSS (MiB)")
    _axes(ax2, "open sockets", "CPU (ms per s)")

    ax = axes[0][2]
    storm = b.get("storm")
    if storm:
        for r in storm["rounds"]:
            cumulative, total = [0], 0
            for count in r["connects_per_s"]:
                total += count
                cumulative.append(total)
            # The count at x is of clients back by the end of second x.
            ax.plot(
                range(len(cumulative)), cumulative,
                color=colors.get(r["kind"], "#2ca02c"), alpha=0.7,
                label=r["kind"] if r["round"] == 0 else None,
            )  # fmt: skip
        limit = _targets.threshold("storm_all_back_s")
        ax.axvline(limit, color="red", linestyle="--", linewidth=1, label=f"target: {limit:g} s")
        ax.set_ylim(bottom=0)
        ax.set_title(
            f"3. Reconnect storm: clients back after SIGTERM\n"
            f"{storm['sizes']['clients']:,} clients, JS backoff schedule"
        )
    _axes(ax, "seconds since SIGTERM", "clients reconnected")

    ax = axes[1][0]
    rest = b.get("rest")
    if rest:
        kinds = ["service", "floor"]
        rates = [rest["summary"]["requests_per_s"][k]["median"] for k in kinds]
        p99 = [rest["summary"]["p99_ms"][k]["median"] for k in kinds]
        bars = ax.bar(kinds, rates, color=[colors[k] for k in kinds])
        for bar, latency in zip(bars, p99, strict=True):
            ax.annotate(
                f"p99 {latency:.1f} ms", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom",
            )  # fmt: skip
        ax.set_title(
            f"4. REST heartbeat, {rest['sizes']['connections']} connections\n"
            f"×{rest['summary']['throughput_ratio']['median']:.2f} the floor "
            f"(target ≥ ×{_targets.threshold('rest_throughput_ratio'):.2f}, "
            f"p99 ≤ ×{_targets.threshold('rest_p99_ratio'):.1f} the floor's)"
        )
    _axes(ax, "", "requests per second", legend=False)

    ax = axes[1][1]
    cleanup = b.get("cleanup")
    if cleanup:
        by_k: dict[int, list[tuple[int, float]]] = {}
        for v in cleanup["summary"].values():
            by_k.setdefault(v["inactive"], []).append((v["stored"], v["ms"]["median"]))
        for k, points in sorted(by_k.items()):
            points.sort()
            ax.plot(*zip(*points, strict=True), "o-", label=f"{k:,} inactive")
        limit = _targets.threshold("cleanup_ms")
        ax.axhline(limit, color="red", linestyle="--", linewidth=1, label=f"target: {limit:g} ms")
        ax.set_xscale("log")
        ax.set_title("5. `inactive` cleanup: time per call\nflat across store size = O(deleted)")
    _axes(ax, "sessions stored for the user", "ms per call")

    ax = axes[1][2]
    memory = b.get("redis_memory")
    if memory:
        names = list(memory["summary"])
        values = [memory["summary"][n]["median"] for n in names]
        ax.bar(
            [n.replace("service ", "").replace("floor: ", "floor\n") for n in names],
            values,
            color=[colors["floor"] if n.startswith("floor") else colors["service"] for n in names],
        )
        limit = _targets.threshold("redis_bytes")
        ax.axhline(limit, color="red", linestyle="--", linewidth=1, label=f"target: {limit:g} B")
        ax.set_title("6. Redis memory per session\nby sessions per user")
    _axes(ax, "", "bytes per session")

    ax = axes[0][3]
    cap = b.get("capacity")
    if cap:
        t = [x["t"] for x in cap["samples"]]
        ax.plot(t, [x["client_open"] for x in cap["samples"]], "o-", label="sockets open (clients)")
        ax.plot(
            t,
            [
                x["server_sockets"] if x["server_sockets"] is not None else float("nan")
                for x in cap["samples"]
            ],
            "x--",
            label="sockets (servers)",
        )
        ax.plot(t, [x["redis_keys"] for x in cap["samples"]], ".-", label="keys in Redis")
        ax.set_ylim(bottom=0)
        where = (
            f"{cap['sizes']['rooms']:,} rooms"
            if cap["sizes"].get("rooms")
            else f"TTL {cap['sizes']['ttl']:g} s"
        )
        ax.set_title(
            f"2. Capacity: {cap['requested']:,} over {cap['sizes']['processes']} processes, "
            f"{where}\n{cap['spurious_expiries']} spurious expiries, {cap['drops']} drops"
        )
    _axes(ax, "seconds into the hold", "count")

    ax = axes[1][3]
    ax.axis("off")
    ax.set_title("Targets")
    rows = _targets.judge(b)
    for i, (target, _figure, met) in enumerate(rows):
        mark, color = {True: ("met", "green"), False: ("NOT MET", "red")}.get(
            met, ("not run", "grey")
        )
        ax.text(0, 1 - i / max(10, len(rows)), f"{mark}: {target}", color=color, fontsize=8.5,
                transform=ax.transAxes, va="top", wrap=True)  # fmt: skip

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _axes(ax: Any, xlabel: str, ylabel: str, legend: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
