"""Peers: an idle socket of Presence beside what a user would pick instead, in one run.

Three servers, one after another in each round (A B C A B C ...), each one process pinned
to the server CPU, on the same load clients (``bench._load``, one process on the load CPU,
fresh loopback source addresses), pings every ``ping_interval`` seconds (5 s) and no
per-message compression:

- ``service``: ``presence serve`` with its Redis, as :mod:`bench.idle` starts it
  (``bench._servers``); its sockets are kept alive by protocol pings, which the
  ``websockets`` client answers by itself;
- ``python-socketio``: a ``socketio.AsyncServer`` as an ASGI app on uvicorn with uvicorn's
  stock ``websockets-sansio`` protocol (``bench._peer_socketio`` says which options);
- ``node``: Node.js Socket.IO 4 (``bench/peers/server.js``, ``socket.io`` from npm into
  ``bench/peers/node_modules``, ``npm ci`` when missing).

The Socket.IO clients speak Engine.IO 4 on the websocket transport: each connects the
default namespace and answers every ping of the server. Each connect completed is
counted, and so is every pong sent in each steady window (for Presence's sockets, every
protocol ping the client received, which it answers by itself), against the pings the
window should hold (N × window / interval): a socket that is open but not pinged is a defect of
the benchmark, and the summary says whether any was seen.

At each step of N: RSS (VmRSS) after the step, and server CPU (utime + stime, from
``/proc``) over a steady window; per kind, RSS per connection and CPU per
connection-second are slopes of a least-squares fit across N, and the CPU also total / N
at each N. The ratios service / python-socketio and service / node are taken within each
round and the median over rounds reported, and against the lighter peer of each round.
"""

# The report is typeset for people: the multiplication sign for ratios and the en dash
# for ranges are meant.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

from . import _clients, _procs, _redis, _servers, _stats
from ._procs import PYTHON, REPO, WORK, free_port, log
from .idle import _cpu_rate

KINDS = ("service", "python-socketio", "node")
PEERS = ("python-socketio", "node")
EIO_PATH = "/socket.io/?EIO=4&transport=websocket"
NODE_DIR = REPO / "bench" / "peers"

# How much of the pings a window should hold must have been answered besides every socket
# answering one at least: a window's edges cut a ping or so a socket, and a server that
# pauses (a long garbage collection) sends its pings late, so not all of them.
PONGS_FLOWING = 0.75
# Sockets opened before the first step, so that what is imported or cached on first use
# is in the baseline and not in the slope.
WARMUP = 10


@dataclass(frozen=True)
class Sizes:
    steps: tuple[int, ...] = (1_000, 5_000, 10_000)
    rounds: int = 2
    ping_interval: float = 5.0
    ping_timeout: float = 20.0
    window: float = 15.0
    settle: float = 3.0
    in_flight: int = 64
    retries: int = 3
    per_user: int = 5
    kinds: tuple[str, ...] = KINDS


FULL = Sizes()
QUICK = Sizes(steps=(20, 40), rounds=1, ping_interval=0.5, window=1.5, settle=0.3)


def run(sizes: Sizes = FULL) -> dict[str, Any]:
    unknown = [k for k in sizes.kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown peers kind {unknown[0]!r}; choose from {', '.join(KINDS)}")
    if "node" in sizes.kinds:
        ensure_node_modules()
    rounds: list[dict[str, Any]] = []
    for number in range(sizes.rounds):
        for kind in sizes.kinds:
            log(f"peers: round {number + 1}/{sizes.rounds}, {kind}")
            started = time.monotonic()
            measured = _round(kind, sizes)
            rounds.append(
                {"round": number, "kind": kind, "quiet": _procs.quiet_since(started), **measured}
            )
    return {
        "sizes": asdict(sizes),
        "versions": versions(sizes.kinds),
        "rounds": rounds,
        "summary": _summarize(rounds, sizes),
    }


# --- the peers' servers -------------------------------------------------------------


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed (Node.js 20 or later; apt-get install nodejs)")
    return node


def ensure_node_modules() -> None:
    """``npm ci`` into ``bench/peers/node_modules`` when it is missing or older than the
    lock file (``scripts/bench`` does the same before it starts)."""
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed; the peers benchmark installs socket.io with it")
    log("peers: npm ci in bench/peers")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True
    )


def versions(kinds: tuple[str, ...]) -> dict[str, str]:
    """The versions measured: the peers' libraries and their runtimes."""
    found: dict[str, str] = {}
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        found["python-socketio"] = version("python-socketio")
        found["python-engineio"] = version("python-engineio")
        found["uvicorn"] = version("uvicorn")
        found["websockets"] = version("websockets")
    if "node" in kinds:
        with contextlib.suppress(Exception):
            import json

            package = NODE_DIR / "node_modules" / "socket.io" / "package.json"
            found["socket.io"] = json.loads(package.read_text())["version"]
            found["node"] = subprocess.run(
                [node_binary(), "--version"], capture_output=True, text=True, check=True
            ).stdout.strip()
    return found


class PeerServer(_servers.Server):
    """python-socketio on uvicorn, or Node.js Socket.IO 4, in a child process pinned to
    the server CPU (``taskset`` execs, so the pid measured is the server's own)."""

    def __init__(self, kind: str, config: _servers.ServerConfig) -> None:
        if kind not in PEERS:
            raise ValueError(f"unknown peer {kind!r}")
        self.kind = kind
        self.config = config
        self.port = free_port()
        self.cpu = _procs.SERVER_CPU
        self.process = None
        self.log_path = WORK / "logs" / f"{kind}-{self.port}.log"

    def command(self) -> list[str]:
        if self.kind == "node":
            return [node_binary(), str(NODE_DIR / "server.js"), str(self.port)]
        host_port = ["--host", "127.0.0.1", "--port", str(self.port)]
        return [PYTHON, "-m", "bench._peer_socketio", "serve", *host_port]


# --- one round of one kind ----------------------------------------------------------


def _round(kind: str, sizes: Sizes) -> dict[str, Any]:
    top = max(sizes.steps)
    warmup = WARMUP
    eio = kind != "service"
    with contextlib.ExitStack() as stack:
        config = _servers.ServerConfig(
            ttl_seconds=3600.0,
            heartbeat_interval=sizes.ping_interval,
            ping_timeout=sizes.ping_timeout,
        )
        server: _servers.Server
        if eio:
            server = stack.enter_context(PeerServer(kind, config))
            spec = {"port": server.port, "ws": EIO_PATH, "eio": True}
            specs = [spec] * (top + warmup)
        else:
            redis_server = stack.enter_context(_redis.RedisServer("peers"))
            config.redis_url = redis_server.url
            owners = _clients.users_for(top + warmup, sizes.per_user)
            clients = _clients.create_sessions(redis_server.url, owners, ttl=config.ttl_seconds)
            server = stack.enter_context(_servers.Server("service", config))
            tokens = _clients.tokens_for(clients)
            # Protocol pings, answered by the websockets client itself, and counted.
            specs = [{**c.spec(server.port, tokens), "count_pings": True} for c in clients]
        loader = stack.enter_context(_clients.Loader(f"peers-{kind}"))
        addresses = _clients.ADDRESSES.take(top + warmup)
        # A few sockets first, so that what is imported or cached on first use is in the
        # baseline and not in the slope (as bench.idle does).
        loader.request({"cmd": "open", "clients": specs[:warmup], "addresses": addresses})
        time.sleep(sizes.settle)
        baseline_rss = server.rss_kib()
        baseline_cpu_rate = _cpu_rate(server, sizes.window / 2)
        opened = warmup
        plateaus = []
        for step in sizes.steps:
            ramp = loader.request(
                {
                    "cmd": "open",
                    "clients": specs[opened : step + warmup],
                    "addresses": addresses,
                    "concurrency": sizes.in_flight,
                    "retries": sizes.retries,
                }
            )
            opened = step + warmup
            time.sleep(sizes.settle)
            rss_after_step = server.rss_kib()
            before = loader.request({"cmd": "status"})
            loader.request({"cmd": "ping_mark"})
            cpu_before, cpu_started = server.cpu_seconds(), time.monotonic()
            with _servers.StallProbe(server) as probe:
                time.sleep(sizes.window)
            cpu_after, cpu_ended = server.cpu_seconds(), time.monotonic()
            after = loader.request({"cmd": "status"})
            # Each socket, one by one: a socket open through the window and never pinged
            # (or whose pings went unanswered) is held half-open.
            pinged = loader.request({"cmd": "ping_check"})
            elapsed = cpu_ended - cpu_started
            cpu_rate = (cpu_after - cpu_before) / elapsed
            open_clients = after["open"] - warmup
            # Every socket open through the window is pinged elapsed / interval times.
            expected_pongs = after["open"] * elapsed / sizes.ping_interval
            pongs = after["pongs"] - before["pongs"]
            plateaus.append(
                {
                    "n": step,
                    "open_clients": open_clients,
                    "open_before_window": before["open"] - warmup,
                    "sio_connects": after["sio_connects"] - warmup if eio else None,
                    "pongs": pongs,
                    "pongs_expected": expected_pongs,
                    "pongs_ratio": pongs / expected_pongs if expected_pongs else None,
                    "sockets_checked": pinged["checked"],
                    "sockets_unpinged": pinged["unpinged"],
                    "pongs_per_socket_min": pinged["min"],
                    "failures": after["failures"],
                    "closes": after["closes"],
                    "rss_kib": rss_after_step,
                    "rss_end_kib": server.rss_kib(),
                    "cpu_per_s": cpu_rate,
                    "handshakes": ramp["opened"],
                    "handshake_failed": ramp["failed"],
                    "handshake_rate": ramp["rate"],
                    "handshake_ms": ramp["handshake_ms"],
                    "loop_stall": probe.summary(),
                }
            )
            pings_text = (
                f" pongs={pongs}/{expected_pongs:.0f} unpinged={pinged['unpinged']}"
                f"/{pinged['checked']}"
            )
            log(
                f"peers {kind} n={step}: rss={rss_after_step} KiB "
                f"cpu={cpu_rate * 1000:.1f} ms/s rate={ramp['rate']:.0f}/s "
                f"open={open_clients} failed={ramp['failed']}{pings_text}"
            )
        gc_pauses = server.gc_pauses_ms()
    ns = [p["open_clients"] for p in plateaus]
    return {
        "gc_pauses_ms": gc_pauses,
        "baseline_rss_kib": baseline_rss,
        "baseline_cpu_per_s": baseline_cpu_rate,
        "plateaus": plateaus,
        "rss_kib_per_connection": _stats.slope(ns, [p["rss_kib"] for p in plateaus]),
        "cpu_us_per_connection_s": _stats.slope(ns, [p["cpu_per_s"] * 1e6 for p in plateaus]),
        "cpu_us_per_connection_s_by_n": {
            str(p["n"]): p["cpu_per_s"] * 1e6 / max(1, p["open_clients"]) for p in plateaus
        },
    }


# --- the summary --------------------------------------------------------------------


def _summarize(rounds: list[dict[str, Any]], sizes: Sizes) -> dict[str, Any]:
    kinds = [k for k in sizes.kinds if any(r["kind"] == k for r in rounds)]
    peers = [k for k in kinds if k in PEERS]
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rounds:
        by_round.setdefault(r["round"], {})[r["kind"]] = r

    def of(kind: str, key: str) -> list[float]:
        return [r[key] for r in rounds if r["kind"] == kind]

    def at_n(r: dict[str, Any], n: int) -> float:
        return float(r["cpu_us_per_connection_s_by_n"][str(n)])

    def within(ours: str, theirs: str, value: Any) -> dict[str, float]:
        # Within each round: the kinds were measured one after another.
        return _stats.summary(
            value(kinds_[ours]) / value(kinds_[theirs])
            for kinds_ in by_round.values()
            if ours in kinds_ and theirs in kinds_ and value(kinds_[theirs])
        )

    def lighter(key: str, value: Any = None) -> dict[str, float]:
        # Against the lighter peer of each round (no ratio to a slope of 0 or less, which
        # only a run too small to measure gives).
        read = value or (lambda r: r[key])

        def ratio(kinds_: dict[str, dict[str, Any]]) -> float:
            least = min(read(kinds_[p]) for p in peers)
            return read(kinds_["service"]) / least if least > 0 else float("nan")

        return _stats.summary(
            ratio(kinds_)
            for kinds_ in by_round.values()
            if "service" in kinds_ and all(p in kinds_ for p in peers)
        )

    ratios: dict[str, Any] = {}
    if "service" in kinds:
        for peer in peers:
            ratios[peer] = {
                "rss": within("service", peer, lambda r: r["rss_kib_per_connection"]),
                "cpu": within("service", peer, lambda r: r["cpu_us_per_connection_s"]),
                "cpu_by_n": {
                    str(n): within("service", peer, lambda r, n=n: at_n(r, n)) for n in sizes.steps
                },
            }
    plateaus = [p for r in rounds for p in r["plateaus"]]
    nan = _stats.summary([])
    return {
        "kinds": kinds,
        "rss_kib_per_connection": {
            k: _stats.summary(of(k, "rss_kib_per_connection")) for k in kinds
        },
        "cpu_us_per_connection_s": {
            k: _stats.summary(of(k, "cpu_us_per_connection_s")) for k in kinds
        },
        "cpu_us_per_connection_s_by_n": {
            k: {
                str(n): _stats.summary(at_n(r, n) for r in rounds if r["kind"] == k)
                for n in sizes.steps
            }
            for k in kinds
        },
        "ratios": ratios,
        "rss_ratio_lighter": lighter("rss_kib_per_connection")
        if "service" in kinds and peers
        else nan,
        "cpu_ratio_lighter": lighter("cpu_us_per_connection_s")
        if "service" in kinds and peers
        else nan,
        # The whole CPU over N at each N (fixed costs included), against the lighter peer
        # at that N.
        "cpu_ratio_lighter_by_n": {
            str(n): lighter("", lambda r, n=n: at_n(r, n)) if "service" in kinds and peers else nan
            for n in sizes.steps
        },
        # "all_connected": the Socket.IO connect completed too, where there is one.
        **_stats.plateaus_summary(
            rounds,
            kinds,
            lambda p: (
                p["open_clients"] == p["n"]
                and p["open_before_window"] == p["n"]
                and p["sio_connects"] in (None, p["n"])
            ),
        ),
        # How much of the pings each window should hold were answered: Presence's protocol
        # pings (the websockets client answers them) and the peers' Engine.IO pings.
        "pongs_ratio_min": min(
            (p["pongs_ratio"] for p in plateaus if p["pongs_ratio"] is not None),
            default=float("nan"),
        ),
        # Every socket open through each window answered a ping in it (each one checked),
        # and the pings answered were most of those the window should hold.
        "sockets_unpinged": sum(p["sockets_unpinged"] for p in plateaus),
        "pings_flowing": all(
            p["sockets_unpinged"] == 0
            and p["sockets_checked"] == p["n"] + WARMUP
            and p["pongs_ratio"] is not None
            and p["pongs_ratio"] >= PONGS_FLOWING
            for p in plateaus
        ),
    }


def cpu_worst_ratio(result: dict[str, Any]) -> float:
    """The CPU target's figure: the worse of the slope's ratio to the lighter peer and the
    whole CPU over N's at each N (medians over rounds; NaN when any is not measured)."""
    s = result["summary"]
    medians = [s["cpu_ratio_lighter"], *s.get("cpu_ratio_lighter_by_n", {}).values()]
    values = [float(m["median"]) if m.get("n") else float("nan") for m in medians]
    return float("nan") if any(v != v for v in values) else max(values)


def full(result: dict[str, Any]) -> bool:
    """The run is the benchmark's full size: N to 10,000 over 2 rounds or more."""
    sizes = result["sizes"]
    return bool(sizes["steps"][-1] >= 10_000 and sizes["rounds"] >= 2)


def sound(result: dict[str, Any]) -> bool:
    """Every socket connected (Socket.IO connect included) and pinged in every window."""
    s = result["summary"]
    return bool(s["all_connected"] and s["pings_flowing"])


# --- the report ---------------------------------------------------------------------

_NAMES = {
    "service": "Presence",
    "python-socketio": "python-socketio (uvicorn)",
    "node": "Node.js Socket.IO 4",
}


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:,.{digits}f}"


def ratio_figure(result: dict[str, Any], key: str, unit: str, digits: int) -> str:
    """The target's figure: the ratio to the lighter peer and to each, and the values."""
    from .report import _s  # report imports this module

    s = result["summary"]
    values = s["rss_kib_per_connection" if key == "rss" else "cpu_us_per_connection_s"]
    lighter = s[f"{key}_ratio_lighter"]
    each = ", ".join(
        f"{_s(s['ratios'][p][key], 2)} × {_NAMES[p]}" for p in PEERS if p in s["ratios"]
    )
    shown = "; ".join(f"{_NAMES[k]} {_f(values[k]['median'], digits)} {unit}" for k in s["kinds"])
    text = f"{_s(lighter, 2)} × the lighter ({each}); {shown}"
    if key == "cpu":
        by_n = s.get("cpu_ratio_lighter_by_n", {})
        text += "; total / N against the lighter at each N: " + ", ".join(
            f"{_s(r, 2)} × at {int(n):,}" for n, r in by_n.items()
        )
    if not sound(result):
        text += " (**some sockets not connected or not pinged**)"
    return text


def _gc(result: dict[str, Any], kind: str) -> str:
    if kind == "node":
        return "–"
    pauses = [p for r in result["rounds"] if r["kind"] == kind for p in r["gc_pauses_ms"]]
    return f"{max(pauses):,.0f} ({len(pauses)} over 50 ms)" if pauses else "none over 50 ms"


def section(result: dict[str, Any]) -> list[str]:
    from .report import _s, quiet_text, row, summary_row, table_head  # it imports this module

    s, sizes = result["summary"], result["sizes"]
    kinds = s["kinds"]
    versions_text = ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
    lines = [
        "## Peers: an idle socket beside python-socketio and Node.js Socket.IO 4",
        "",
        f"One server process at a time, sockets opened in steps to N = "
        f"{', '.join(f'{n:,}' for n in sizes['steps'])}; {sizes['rounds']} rounds, the kinds "
        f"one after another in each ({', '.join(kinds)}); pings every "
        f"{sizes['ping_interval']:g} s (Presence: protocol pings; the peers: Engine.IO "
        f"pings, answered by the load client), no compression; steady window "
        f"{sizes['window']:g} s a step. python-socketio runs as an ASGI app on uvicorn's "
        "stock `websockets-sansio` protocol and `httptools` (uvicorn's own pings off); Node "
        "is one process (its pid measured). Versions: "
        f"{versions_text or '–'}. Every socket connected (the Socket.IO connect "
        f"completed) in every step: {'yes' if s['all_connected'] else '**no**'}. Sockets "
        "open through a window that answered no ping in it (each checked by the load "
        f"client): {s.get('sockets_unpinged', '–')}; of the pings each window should hold, "
        f"at least {_f(100 * s['pongs_ratio_min'], 0)} % answered "
        f"({'pings flowing' if s['pings_flowing'] else '**pings missing**'}).",
        "",
        *table_head([_NAMES.get(k, k) for k in kinds]),
        summary_row("RSS per connection (KiB, slope)", s["rss_kib_per_connection"], kinds),
        summary_row(
            "CPU per connection-second (µs, slope)", s["cpu_us_per_connection_s"], kinds, 2
        ),
    ]
    for n in sizes["steps"]:
        lines.append(
            row(
                f"CPU per connection-second at N = {n:,} (µs, total / N)",
                [_s(s["cpu_us_per_connection_s_by_n"][k][str(n)], 2) for k in kinds],
            )
        )
    lines += [
        summary_row(
            f"Handshakes/s, last step ({sizes['in_flight']} in flight)",
            s["handshake_rate"],
            kinds,
            0,
        ),
        summary_row(
            f"`/healthz` max at N = {sizes['steps'][-1]:,} (ms)", s["loop_stall_max_ms"], kinds, 0
        ),
        row(
            "Longest generation-2 GC pause over 50 ms, all rounds (ms; Python only)",
            [_gc(result, k) for k in kinds],
        ),
        row("Handshakes refused, all rounds", [str(s["handshake_refusals"][k]) for k in kinds]),
        "",
    ]
    if s["ratios"]:
        peers = [p for p in PEERS if p in s["ratios"]]
        lines += [
            "Presence / each peer, within each round, median over rounds (spread):",
            "",
            row("", ["RSS", "CPU (slope)"] + [f"CPU at N = {n:,}" for n in sizes["steps"]]),
            row("---", ["---"] * (2 + len(sizes["steps"]))),
        ]
        for p in peers:
            r = s["ratios"][p]
            lines.append(
                row(
                    f"Presence / {_NAMES[p]}",
                    [_s(r["rss"], 2), _s(r["cpu"], 2)]
                    + [_s(r["cpu_by_n"][str(n)], 2) for n in sizes["steps"]],
                )
            )
        lines += [
            row(
                "Presence / the lighter peer",
                [_s(s["rss_ratio_lighter"], 2), _s(s["cpu_ratio_lighter"], 2)]
                + [_s(s.get("cpu_ratio_lighter_by_n", {}).get(str(n)), 2) for n in sizes["steps"]],
            ),
            "",
        ]
    lines += [
        "Per step (median over rounds):",
        "",
        row(
            "N",
            [f"RSS {k} (MiB)" for k in kinds]
            + [f"CPU {k} (ms/s)" for k in kinds]
            + [f"pongs / expected {k}" for k in kinds],
        ),
        row("---", ["---"] * (3 * len(kinds))),
    ]
    for i, n in enumerate(sizes["steps"]):

        def med(kind: str, key: str, scale: float = 1.0, i: int = i) -> float:
            return _stats.summary(
                r["plateaus"][i][key] * scale
                for r in result["rounds"]
                if r["kind"] == kind and r["plateaus"][i].get(key) is not None
            )["median"]

        lines.append(
            row(
                f"{n:,}",
                [_f(med(k, "rss_kib", 1 / 1024)) for k in kinds]
                + [_f(med(k, "cpu_per_s", 1000)) for k in kinds]
                + [_f(med(k, "pongs_ratio"), 2) for k in kinds],
            )
        )
    if any(r.get("quiet") for r in result["rounds"]):
        lines += ["", "How quiet the machine was in each round:", ""]
        for r in result["rounds"]:
            lines.append(f"- round {r['round'] + 1}, {r['kind']}: {quiet_text(r['quiet'] or {})}")
    lines.append("")
    return lines
