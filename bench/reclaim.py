"""Crash reclaim: SIGKILL a process holding many members, and time every watcher
elsewhere until it has been told each of their leaves.

A **victim** ``presence serve`` process holds ``members`` members: users with one
socket each carrying ``sessions_per_user`` sessions (the first its own, the others
attached with ``session.attach``), each session joined to one of ``rooms`` rooms, so
that a room holds ``members / rooms`` members. ``watchers`` sockets on ``survivors``
other processes, on the same redis-server, watch every room. Then the victim is
killed with SIGKILL: no closing handshake, no leave of its own; the survivors find
its lease lapsed (``LEASE_TTL``), wait out the offline grace, and reap its members,
each leave with reason ``node_down``.

It records, per round: for each watcher, the time from the SIGKILL until its view of
every room is down to the members left (none) and until the last ``node_down`` leave
it was told (p50/p99/max over watchers); the leaves each watcher was not told (a
diff truncated at ``PRESENCE_ROOM_LIST_LIMIT``, a gap the server filled with a
sync); ``INFO commandstats`` from the kill until the reap is done, per reaped
member, with the survivors' own background rate taken out (read after the reap);
Redis's ``SLOWLOG`` over the reap; and that Redis holds none of the dead process's
members afterwards: no room row, no tab of theirs, no lease.
"""

# The report's rows are typeset for people: the en dash for ranges, the multiplication
# sign for counts are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from presence import keys
from presence.settings import Settings

from . import _clients, _procs, _redis, _servers, _stats
from .fanout import FanoutLoader, _loadavg, _loaders, _machine_busy, _num, _pcts, _span

PREFIX = "presence"


@dataclass(frozen=True)
class Sizes:
    members: int = 20_000
    sessions_per_user: int = 10
    # Each user's sessions join `sessions_per_user` of these rooms (users alternate
    # between groups of rooms), so a room holds members / rooms members: 1,000 at full
    # size, within one diff's list limit.
    rooms: int = 20
    watchers: int = 200
    survivors: int = 2
    member_loaders: int = 1
    rounds: int = 1
    in_flight: int = 32
    # From the kill, the reap is given this long before the round is called failed.
    give_up: float = 60.0
    # The survivors' background rate is read over this many seconds after the reap.
    background: float = 10.0
    # Members joining: the rooms are taken as they are once they have not grown for
    # this long (a join refused on a loaded machine is not tried again).
    join_settle: float = 10.0


FULL = Sizes()
QUICK = Sizes(
    members=60, sessions_per_user=3, rooms=4, watchers=6, give_up=30, background=1, join_settle=5
)

ROOM = "reclaim.bench"
# The target of issue 13: every watcher elsewhere has every node_down leave within 10 s.
TARGET_S = 10.0


def run(sizes: Sizes = FULL) -> dict[str, Any]:
    settings = Settings()
    rounds = []
    with _redis.RedisServer("reclaim") as redis_server:
        config = _servers.ServerConfig(
            redis_url=redis_server.url, extra_env={"PRESENCE_OPEN_ROOMS": "true"}
        )
        survivors = [_servers.Server("service", config) for _ in range(sizes.survivors)]
        try:
            for server in survivors:
                server.start()
            for number in range(sizes.rounds):
                result = _round(sizes, redis_server, config, survivors, number)
                result["round"] = number
                _per_member(result)
                rounds.append(result)
                w = result["watcher_complete_s"]
                _procs.log(
                    f"reclaim round {number + 1}: {result['members']:,} members reaped; every "
                    f"watcher complete p50 {w['p50']:.2f} s, p99 {w['p99']:.2f} s, max "
                    f"{w['max']:.2f} s; {result['leaves_missing']:,} leaves missing; "
                    f"{result['redis']['commands_per_member_net']:.1f} Redis commands a member"
                )
        finally:
            for server in survivors:
                server.kill()
    return {
        "sizes": asdict(sizes),
        "offline_grace_s": settings.offline_grace,
        "lease_ttl_s": keys.LEASE_TTL,
        "room_list_limit": settings.room_list_limit,
        "rounds": rounds,
        "summary": _summary(rounds),
    }


def _rooms_of(user_index: int, sizes: Sizes, rooms: list[str]) -> list[str]:
    groups = max(1, len(rooms) // sizes.sessions_per_user)
    start = (user_index % groups) * sizes.sessions_per_user
    return [rooms[(start + k) % len(rooms)] for k in range(sizes.sessions_per_user)]


def _round(
    sizes: Sizes,
    redis_server: _redis.RedisServer,
    config: _servers.ServerConfig,
    survivors: list[_servers.Server],
    number: int,
) -> dict[str, Any]:
    client = redis_server.client()
    rooms = [f"{ROOM}.{number}.{i}" for i in range(sizes.rooms)]
    prefix = f"r{number}m"
    clients = _clients.create_sessions(
        redis_server.url,
        _clients.users_for(sizes.members, sizes.sessions_per_user, prefix),
        ttl=3600,
    )
    by_user: dict[str, list[str]] = defaultdict(list)
    for c in clients:
        by_user[c.user].append(c.session_id)
    watcher_clients = _clients.create_sessions(
        redis_server.url, _clients.users_for(sizes.watchers, 5, f"r{number}w"), ttl=3600
    )
    tokens = _clients.tokens_for([*clients, *watcher_clients])
    expected: Counter[str] = Counter()
    victim = _servers.Server("service", config)
    victim.start()
    started = time.monotonic()
    try:
        with (
            _loaders(sizes.member_loaders, "reclaim-member") as member_loads,
            _loaders(1, "reclaim-watch") as watch_loads,
        ):
            users = sorted(by_user, key=lambda u: int(u.removeprefix(prefix)))
            for index, load in enumerate(member_loads):
                specs = []
                for user in users[index :: len(member_loads)]:
                    sessions = by_user[user]
                    mine = _rooms_of(int(user.removeprefix(prefix)), sizes, rooms)[: len(sessions)]
                    expected.update(mine)
                    first = _clients.Client(user, sessions[0])
                    specs.append(
                        {
                            **first.spec(victim.port, tokens),
                            "attach": sessions[1:],
                            "sessions": sessions,
                            "rooms": mine,
                        }
                    )
                load.send(
                    {
                        "cmd": "open",
                        "clients": specs,
                        "addresses": _clients.ADDRESSES.take(len(specs)),
                        "concurrency": sizes.in_flight,
                        "role": "member",
                    }
                )
            opened = [load.receive() for load in member_loads]
            held = sum(r["opened"] for r in opened)
            if held < len(by_user):
                raise RuntimeError(
                    f"reclaim: only {held} of {len(by_user)} members' sockets held: "
                    f"{[r['failed'] for r in opened]}"
                )
            room_rows = [keys.room_keys(PREFIX, room)[0] for room in rooms]
            # Until every member is in, or the rooms stop growing for a while: on a
            # loaded machine a join's Redis call may time out (it is refused in-band),
            # and the round goes on with the members the victim does hold.
            last: list[int] = []
            still = time.monotonic()
            while time.monotonic() - still < sizes.join_settle:
                counts = [client.hlen(k) for k in room_rows]
                if counts == [expected[r] for r in rooms]:
                    break
                if counts != last:
                    last, still = counts, time.monotonic()
                time.sleep(0.5)
            counts = [client.hlen(k) for k in room_rows]
            refused = member_loads[0].request({"cmd": "progress"})["other"]
            held_members = dict(zip(rooms, counts, strict=True))
            ports = [s.port for s in survivors]
            watch = watch_loads[0]
            specs = [c.spec(ports[i % len(ports)], tokens) for i, c in enumerate(watcher_clients)]
            watch.request(
                {
                    "cmd": "open",
                    "clients": specs,
                    "addresses": _clients.ADDRESSES.take(len(specs)),
                    "concurrency": sizes.in_flight,
                    "role": "watcher",
                }
            )
            synced = watch.request({"cmd": "watch_rooms", "rooms": rooms, "concurrency": 16})
            if synced["synced"] < sizes.watchers:
                raise RuntimeError(f"reclaim: only {synced['synced']} watchers synced")
            setup_s = time.monotonic() - started
            _procs.log(
                f"reclaim: {sizes.members:,} members of {len(by_user):,} users in "
                f"{sizes.rooms} rooms on the victim, {sizes.watchers} watchers on "
                f"{sizes.survivors} processes, in {setup_s:.0f} s"
            )
            holders = client.zrange(keys.lease_keys(PREFIX)[0], 0, -1)
            watch.request({"cmd": "arm_leaves", "expected": {room: 0 for room in rooms}})
            result = _kill_and_reap(sizes, redis_server, survivors, victim, watch, rooms)
            result["setup_s"] = setup_s
            result["members"] = sum(held_members.values())
            result["members_meant"] = sum(expected.values())
            result["member_refusals"] = refused
            result["users"] = len(by_user)
            result["redis_after"] = _left_in_redis(client, rooms, list(by_user), holders)
            return result
    finally:
        victim.kill()


def _kill_and_reap(
    sizes: Sizes,
    redis_server: _redis.RedisServer,
    survivors: list[_servers.Server],
    victim: _servers.Server,
    watch: FanoutLoader,
    rooms: list[str],
) -> dict[str, Any]:
    client = redis_server.client()
    stats = _redis.CommandStats(client)
    pids = {
        "survivors": [s.pid for s in survivors],
        "loaders": [watch.pid],
        "redis": [redis_server.process.pid] if redis_server.process else [],
    }
    client.slowlog_reset()
    probes = [_servers.StallProbe(server) for server in survivors]
    gc_before = [len(s.gc_pauses_ms()) for s in survivors]
    for probe in probes:
        probe.__enter__()
    try:
        stats.start()
        cpu_before = {k: [_procs.cpu_seconds(p) for p in v] for k, v in pids.items()}
        machine_before = _machine_busy()
        killed = time.monotonic()
        victim.kill()  # SIGKILL
        done_at = None
        deadline = killed + sizes.give_up
        room_rows = [keys.room_keys(PREFIX, room)[0] for room in rooms]
        redis_empty_at = None
        # Room rows left in Redis over time: when the reap began and how fast it went.
        timeline: list[tuple[float, int]] = []
        pipe = client.pipeline(transaction=False)
        while time.monotonic() < deadline:
            for k in room_rows:
                pipe.hlen(k)
            left = sum(pipe.execute())
            now = time.monotonic()
            if not timeline or timeline[-1][1] != left:
                timeline.append((now - killed, left))
            if redis_empty_at is None and not left:
                redis_empty_at = now
            progress = watch.request({"cmd": "progress"})
            if progress["complete"] >= sizes.watchers:
                done_at = time.monotonic()
                break
            time.sleep(0.05)
        # What comes after the last leave (late diffs, the reapers' clean-up) counted too.
        time.sleep(1.0)
        commands = stats.stop()
        ended = time.monotonic()
        cpu_after = {k: [_procs.cpu_seconds(p) for p in v] for k, v in pids.items()}
        machine_after = _machine_busy()
    finally:
        for probe in probes:
            probe.__exit__(None, None, None)
    slowlog = client.slowlog_get(32)
    report = watch.request({"cmd": "leaves_report", "t0": killed}, timeout=600)
    background = _redis.CommandStats(client)
    background.start()
    time.sleep(sizes.background)
    rate = sum(v["calls"] for v in background.stop().values()) / sizes.background
    watchers = report["watchers"]
    complete = sorted(
        w["complete_s"] if w["complete_s"] is not None else math.inf for w in watchers
    )
    last_leave = sorted(
        w["last_leave_s"] if w["last_leave_s"] is not None else math.inf for w in watchers
    )
    calls = {name: int(v["calls"]) for name, v in commands.items()}
    for name in ("subscribe", "unsubscribe", "slowlog|reset", "slowlog"):
        calls.pop(name, None)
    usec = sum(v["usec"] for name, v in commands.items() if name in calls)
    elapsed = ended - killed
    cpu = {k: sum(a - b for a, b in zip(cpu_after[k], cpu_before[k], strict=True)) for k in pids}
    ours = sum(cpu.values()) + machine_after[1] - machine_before[1]
    busy = machine_after[0] - machine_before[0]
    capacity = (machine_after[2] - machine_before[2]) * (os.cpu_count() or 1)
    return {
        "watchers": len(watchers),
        "watchers_complete": sum(1 for w in watchers if w["complete_s"] is not None),
        "watcher_complete_s": _pcts(complete),
        "last_leave_s": _pcts(last_leave),
        "redis_rows_gone_s": None if redis_empty_at is None else redis_empty_at - killed,
        # The first change seen after the kill: the reap's first member gone.
        "reap_began_s": timeline[1][0] if len(timeline) > 1 else None,
        "rows_timeline": timeline,
        "done_s": None if done_at is None else done_at - killed,
        "leaves_by_reason": _merge(w["leaves"] for w in watchers),
        "watcher_leaves": sorted(w["leaves"].get("node_down", 0) for w in watchers),
        "syncs_after_kill": sum(w["syncs"] for w in watchers),
        "gaps_seen": sum(w["gaps"] for w in watchers),
        "messages_per_watcher": _pcts(sorted(w["messages"] for w in watchers)),
        "closed_sockets": report["closed"],
        "other_messages": report["other"],
        "redis": {
            "commands": calls,
            "commands_total": sum(calls.values()),
            "usec": usec,
            "background_per_s": rate,
            "window_s": elapsed,
        },
        "slowlog": [
            {"us": entry["duration"], "command": _redis._text(entry.get("command"))[:80]}
            for entry in slowlog
        ],
        "loop_stall_ms": [probe.summary() for probe in probes],
        "gc_pauses_ms": [s.gc_pauses_ms()[n:] for s, n in zip(survivors, gc_before, strict=True)],
        "cpu_s": cpu,
        "machine": {
            "other_cpu_share": max(0.0, busy - ours) / capacity,
            "busy_share": busy / capacity,
            "loadavg_after": _loadavg(),
        },
    }


def _left_in_redis(
    client: Any, rooms: list[str], users: list[str], holders: list[Any]
) -> dict[str, Any]:
    """What Redis still holds of the dead process's members: room rows and users, tab
    fields of theirs (tabs, rooms, sessions' presence), the process's lease."""
    rows = sum(client.hlen(keys.room_keys(PREFIX, room)[0]) for room in rooms)
    listed = sum(client.zcard(keys.room_keys(PREFIX, room)[1]) for room in rooms)
    live_rooms = sum(1 for room in rooms if client.zscore(keys.rooms_key(PREFIX), room))
    tab_fields = 0
    pipe = client.pipeline(transaction=False)
    for user in users:
        pipe.hkeys(keys.tabs_key(PREFIX, user))
    for fields in pipe.execute():
        tab_fields += sum(1 for f in fields if _redis._text(f)[:2] in ("t:", "r:", "s:", "e:"))
    living = client.zrange(keys.lease_keys(PREFIX)[0], 0, -1)
    return {
        "room_rows": rows,
        "room_users": listed,
        "rooms_listed": live_rooms,
        "tab_fields": tab_fields,
        "leases_before": len(holders),
        "leases_after": len(living),
    }


def _named(command: str) -> str:
    """A SLOWLOG command with an EVALSHA's script named (the service's scripts, by
    SHA1), and its keys cut short."""
    import hashlib

    from presence.stores import _presence_scripts, _scripts

    names = {}
    for module in (_scripts, _presence_scripts):
        for name in dir(module):
            value = getattr(module, name)
            if name.isupper() and isinstance(value, str) and "redis.call" in value:
                names[hashlib.sha1(value.encode()).hexdigest()] = name  # noqa: S324
    words = command.split()
    if len(words) >= 3 and words[0].upper() == "EVALSHA":
        return f"EVALSHA {names.get(words[1], words[1][:8])} ({words[2]} keys)"
    return " ".join(words[:2])


def _merge(counters: Any) -> dict[str, int]:
    merged: Counter[str] = Counter()
    for counter in counters:
        merged.update(counter)
    return dict(merged)


def _per_member(r: dict[str, Any]) -> None:
    """A round's figures per reaped member, the leaves not told, and whether Redis was
    left clean."""
    redis = r["redis"]
    members = r["members"]
    redis["commands_per_member"] = redis["commands_total"] / members
    redis["commands_per_member_net"] = (
        max(0.0, redis["commands_total"] - redis["background_per_s"] * redis["window_s"]) / members
    )
    redis["evalsha_per_member"] = redis["commands"].get("evalsha", 0) / members
    redis["usec_per_member"] = redis["usec"] / members
    r["leaves_missing"] = r["watchers"] * members - sum(r["watcher_leaves"])
    after = r["redis_after"]
    r["redis_clean"] = (
        not after["room_rows"]
        and not after["room_users"]
        and not after["rooms_listed"]
        and not after["tab_fields"]
        and after["leases_after"] == after["leases_before"] - 1
    )


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def over(*path: str) -> dict[str, float]:
        values = []
        for r in rounds:
            value: Any = r
            for key in path:
                if key not in value:  # a figure a round of older code did not record
                    break
                value = value[key]
            else:
                values.append(float("inf") if value is None else float(value))
        return _stats.summary(values)

    return {
        "complete_p50_s": over("watcher_complete_s", "p50"),
        "complete_p99_s": over("watcher_complete_s", "p99"),
        "complete_max_s": over("watcher_complete_s", "max"),
        "last_leave_p50_s": over("last_leave_s", "p50"),
        "last_leave_max_s": over("last_leave_s", "max"),
        "redis_rows_gone_s": over("redis_rows_gone_s"),
        "reap_began_s": over("reap_began_s"),
        "leaves_missing": over("leaves_missing"),
        "commands_per_member": over("redis", "commands_per_member"),
        "commands_per_member_net": over("redis", "commands_per_member_net"),
        "evalsha_per_member": over("redis", "evalsha_per_member"),
        "usec_per_member": over("redis", "usec_per_member"),
        "survivor_cpu_s": over("cpu_s", "survivors"),
        "redis_cpu_s": over("cpu_s", "redis"),
        "all_complete": all(r["watchers_complete"] == r["watchers"] for r in rounds),
        "redis_clean": all(r["redis_clean"] for r in rounds),
    }


# --- the report's figures (bench/_targets.py) and section (bench/report.py) ----------


def full(result: dict[str, Any]) -> bool:
    """The run was at the target's size: 20,000 members held (a join refused on a loaded
    machine is not tried again, so the victim may hold a few fewer), 2 survivors."""
    sizes = result["sizes"]
    held = min(r["members"] / r["members_meant"] for r in result["rounds"])
    return bool(sizes["members"] >= 20_000 and sizes["survivors"] >= 2 and held >= 0.99)


def complete_figure(result: dict[str, Any]) -> str:
    """The figure of the target "every node_down leave within 10 s"."""
    s = result["summary"]
    sizes = result["sizes"]
    missing = int(s["leaves_missing"]["max"])
    return (
        f"{min(r['members'] for r in result['rounds']):,} members held (of "
        f"{sizes['members']:,}) in {sizes['rooms']} rooms, {sizes['watchers']} "
        f"watchers on {sizes['survivors']} processes: the last watcher had every leave "
        f"after {_num(s['complete_max_s']['max'], 2)} s in the worst of "
        f"{s['complete_max_s']['n']} rounds, {_num(s['complete_max_s']['min'], 2)} s in "
        f"the best (p50 over watchers {_num(s['complete_p50_s'], 2)} s, median round; "
        f"lease {result['lease_ttl_s']:g} s + grace "
        f"{result['offline_grace_s']:g} s); leaves not told: {missing:,}; Redis clean "
        f"after: {'yes' if s['redis_clean'] else 'no'}"
    )


def work_figure(result: dict[str, Any]) -> str:
    """The figure of the target "Redis work per reaped member reported"."""
    s = result["summary"]
    return (
        f"{_num(s['commands_per_member_net'])} Redis commands a reaped member "
        f"(background taken out; {_num(s['commands_per_member'])} with it), "
        f"{_num(s['evalsha_per_member'], 2)} script calls, "
        f"{_num(s['usec_per_member'], 1)} µs of Redis time"
    )


def section(result: dict[str, Any]) -> list[str]:
    """The report's section on the crash-reclaim benchmark."""
    s = result["summary"]
    sizes = result["sizes"]

    def row(label: str, key: str, digits: int = 2, scale: float = 1.0) -> str:
        return f"| {label} | {_span(s[key], digits, scale)} |"

    lines = [
        "## 8. Crash reclaim",
        "",
        f"A victim `presence serve` process holds {sizes['members']:,} members: users with "
        f"one socket each carrying {sizes['sessions_per_user']} sessions (`session.attach`), "
        f"each session in one of {sizes['rooms']} rooms. {sizes['watchers']} watchers of "
        f"every room on {sizes['survivors']} other processes (all servers on CPU "
        f"{_procs.SERVER_CPU}), one redis-server. The victim is killed with SIGKILL; times run "
        f"from the signal. Lease {result['lease_ttl_s']:g} s, offline grace "
        f"{result['offline_grace_s']:g} s (the defaults). Median over {sizes['rounds']} "
        "round(s) (min–max).",
        "",
        "| | |",
        "| --- | --- |",
        row("Until a watcher's view of every room is empty, p50 (s)", "complete_p50_s"),
        row("The same, p99 over watchers (s)", "complete_p99_s"),
        row("The same, last watcher (s)", "complete_max_s"),
        row("Until a watcher's last `node_down` leave, p50 (s)", "last_leave_p50_s"),
        row("Until the last watcher's last leave (s)", "last_leave_max_s"),
        row("Until the reap's first member left Redis (s)", "reap_began_s"),
        row("Until Redis holds no room row of theirs (s)", "redis_rows_gone_s"),
        row("Leaves a watcher was not told, all watchers", "leaves_missing", 0),
        row("Redis commands a reaped member (background out)", "commands_per_member_net", 1),
        row("The same, background in", "commands_per_member", 1),
        row("Redis script calls (EVALSHA) a member", "evalsha_per_member", 2),
        row("Redis time a member (µs, commandstats)", "usec_per_member", 1),
        row("Survivors' CPU over the reap (s)", "survivor_cpu_s"),
        row("redis-server CPU over the reap (s)", "redis_cpu_s"),
        "",
        "| Round | leaves told, by reason | syncs after the kill | gaps | longest loop "
        "stall (ms, per survivor) | Redis after | slowest Redis commands (µs) "
        "| other processes' CPU | load average after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rounds"]:
        after = r["redis_after"]
        stalls = ", ".join(_num(p["max_ms"], 0) for p in r["loop_stall_ms"])
        slowest = sorted(r["slowlog"], key=lambda e: -e["us"])[:3]
        slow = ", ".join(f"`{_named(e['command'])}` {e['us']:,}" for e in slowest)
        lines.append(
            f"| {r['round'] + 1} | "
            + ", ".join(f"`{k}` × {v:,}" for k, v in sorted(r["leaves_by_reason"].items()))
            + f" | {r['syncs_after_kill']} | {r['gaps_seen']} | {stalls or '–'} | "
            f"{after['room_rows']} rows, {after['tab_fields']} tab fields, leases "
            f"{after['leases_before']} → {after['leases_after']} | {slow or '–'} | "
            f"{_num(r['machine']['other_cpu_share'], 2)} | {r['machine']['loadavg_after']} |"
        )
    commands: Counter[str] = Counter()
    for r in result["rounds"]:
        commands.update(r["redis"]["commands"])
    lines += [
        "",
        "Redis commands over the reap, the most frequent: "
        + ", ".join(f"`{name}` × {count:,}" for name, count in commands.most_common(8))
        + ".",
        "",
    ]
    return lines
