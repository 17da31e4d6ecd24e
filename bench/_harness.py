"""What every benchmark needs: a redis-server of its own, the server under test or its
floor in a child process pinned to one core, load processes pinned to the other, and
readings of RSS, CPU time and Redis statistics.

Processes are measured from ``/proc`` rather than from inside, so the service and its
floor are read the same way and nothing in them needs to cooperate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import itertools
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import redis

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
PYTHON = sys.executable

# The server gets CPU 0 to itself; load clients, redis-server, wrk and this orchestrator
# share CPU 1. On a machine with one CPU nothing is pinned.
SERVER_CPU = "0"
LOAD_CPU = "1"

JWT_SECRET = "presence-bench-secret-long-enough-for-hs256!"  # noqa: S105 - a local bench
# The per-user cap is raised so that a benchmark can put as many sessions as it likes
# on one user; the benchmarks still spread sessions over many users, as real ones are.
MAX_SESSIONS_PER_USER = 2_000_000
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def can_pin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cmd: Sequence[str], cpu: str) -> list[str]:
    """``cmd`` run under ``taskset -c cpu`` (taskset execs, so the pid is the command's)."""
    if can_pin():
        return ["taskset", "-c", cpu, *cmd]
    return list(cmd)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def token(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 24 * 3600}, JWT_SECRET, "HS256")


# --- /proc readings -----------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from ``/proc/<pid>/status`` (VmRSS, KiB)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as stat:
        raw = stat.read()
    # The command name may hold spaces; the fields after its closing parenthesis don't.
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tcp_counters() -> dict[str, int]:
    """The kernel's count of connections dropped because a listen queue was full, and of
    SYNs sent again (``/proc/net/netstat``): a full backlog costs a client 1 s, 3 s, 7 s..."""
    wanted = {"ListenOverflows", "ListenDrops", "TCPSynRetrans"}
    counters: dict[str, int] = {}
    with open("/proc/net/netstat") as netstat:
        lines = netstat.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            for name, value in zip(names.split()[1:], values.split()[1:], strict=True):
                if name in wanted:
                    counters[name] = int(value)
    return counters


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[:3]
    total_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                total_kib = int(line.split()[1])
    redis_version = "none"
    if shutil.which("redis-server"):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        redis_version = out.stdout.split()[2].removeprefix("v=")
    from importlib.metadata import version

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{total_kib / 1024 / 1024:.0f} GiB",
        "python": sys.version.split()[0],
        "redis": redis_version,
        "uvicorn": version("uvicorn"),
        "websockets": version("websockets"),
        "starlette": version("starlette"),
        "loadavg_at_start": " ".join(load),
        "pinned": "yes" if can_pin() else "no",
        "open_files": str(_nofile()),
        "service_code": service_code(),
    }


def service_code() -> str:
    """The commit measured, and a digest of ``presence/`` when it differs from it."""
    import hashlib

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    head = git("rev-parse", "--short=10", "HEAD") or "unknown"
    diff = git("diff", "HEAD", "--", "presence")
    # New files count too: a module not yet committed is code measured.
    for name in git("ls-files", "--others", "--exclude-standard", "--", "presence").split():
        with contextlib.suppress(OSError):
            diff += f"\n+++ {name}\n" + (REPO / name).read_text(errors="replace")
    if not diff:
        return head
    return f"{head} + uncommitted changes to presence/ (diff sha1 {hashlib.sha1(diff.encode()).hexdigest()[:10]})"  # noqa: S324, E501


def _nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- was the machine quiet? ---------------------------------------------------------


def _busy_jiffies() -> int:
    """CPU time the whole machine spent busy (all CPUs), from ``/proc/stat``."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    # user nice system idle iowait irq softirq steal (guest time is within user).
    values = [int(v) for v in fields[:8]]
    return sum(values) - values[3] - values[4]


def _own_jiffies() -> int:
    """CPU time of this process and everything it started: its own and its reaped
    children's (``/proc/self/stat``), and every live descendant's."""
    children: dict[int, list[int]] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                raw = stat.read()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        times[pid] = int(fields[11]) + int(fields[12])
        if pid == os.getpid():
            times[pid] += int(fields[13]) + int(fields[14])  # reaped children
    total, stack = times.get(os.getpid(), 0), list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        total += times.get(pid, 0)
        stack += children.get(pid, [])
    return total


class QuietSampler:
    """Samples, once a ``interval``, the 1-minute load average and the CPU that
    processes other than this benchmark's used (the machine's busy time less this
    process tree's), so that each figure can say whether the machine was quiet."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        #: (monotonic time, 1-minute load average, other processes' CPU in cores).
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="quiet")

    def _run(self) -> None:
        busy, own, at = _busy_jiffies(), _own_jiffies(), time.monotonic()
        while not self._stop.wait(self.interval):
            busy2, own2, at2 = _busy_jiffies(), _own_jiffies(), time.monotonic()
            other = max(0, (busy2 - busy) - (own2 - own)) / _CLK_TCK / max(at2 - at, 1e-6)
            with open("/proc/loadavg") as loadavg:
                load = float(loadavg.read().split()[0])
            self.samples.append((at2, load, other))
            busy, own, at = busy2, own2, at2

    def start(self) -> QuietSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float | None = None) -> dict[str, Any]:
        """The load average and other processes' CPU over a window (monotonic times)."""
        end = time.monotonic() if end is None else end
        window = [s for s in self.samples if start <= s[0] <= end]
        return quiet_summary([s[1] for s in window], [s[2] for s in window])


#: Other processes' CPU (cores, on average) under which a run counts as quiet.
QUIET_CORES = 0.10


def quiet_summary(loads: Sequence[float], others: Sequence[float]) -> dict[str, Any]:
    if not others:
        return {"samples": 0, "quiet": None}
    return {
        "samples": len(others),
        "loadavg_1m": summary(loads),
        "other_cpu_cores_mean": statistics.fmean(others),
        "other_cpu_cores_max": max(others),
        "quiet": statistics.fmean(others) < QUIET_CORES,
    }


#: The sampler of this run, started by ``python -m bench``; None when not running.
SAMPLER: QuietSampler | None = None


def quiet_since(start: float) -> dict[str, Any] | None:
    """How quiet the machine was since ``start`` (monotonic), or None without a sampler."""
    return None if SAMPLER is None else SAMPLER.between(start)


# --- numbers ------------------------------------------------------------------------


def summary(values: Iterable[float]) -> dict[str, float]:
    """Median and spread (min, max) of the rounds."""
    data = sorted(values)
    if not data:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(data), "min": data[0], "max": data[-1], "n": len(data)}


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    if len(xs) < 2:
        return float("nan")
    return statistics.linear_regression(xs, ys).slope


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


# --- source addresses ---------------------------------------------------------------


class SourceAddresses:
    """Hands out loopback source addresses that no earlier load process of this run used.

    Each address has its own ~28k ephemeral ports, and ports a closed client left in
    TIME_WAIT stay taken for a minute, so fresh addresses are cheaper than waiting.
    """

    def __init__(self) -> None:
        self._next = itertools.product(range(10, 250), range(1, 255))

    def take(self, sessions: int, per_address: int = 8_000) -> list[str]:
        count = max(1, -(-sessions // per_address))
        return [f"127.0.{b}.{c}" for b, c in itertools.islice(self._next, count)]


ADDRESSES = SourceAddresses()


# --- redis-server -------------------------------------------------------------------


class RedisServer:
    """A redis-server of the benchmark's own on a free port, pinned to the load CPU."""

    def __init__(self, name: str = "redis") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/bench installs it)")
        self.binary = binary
        self.port = free_port()
        self.dir = WORK / "tmp" / f"{name}-{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.dir),
            "--loglevel", "warning",
            "--maxclients", "10000",
        ]  # fmt: skip
        self.process = subprocess.Popen(pinned(cmd, LOAD_CPU), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def client(self) -> redis.Redis:
        # A named connection, so that its own commands can be told apart in the slowlog.
        return redis.Redis(
            port=self.port, decode_responses=True, client_name="bench", socket_timeout=60
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RoundTrips:
    """Counts the commands that clients send Redis over a window: the round trips.

    The slowlog with a threshold of 0 records every command, with its arguments; those a
    Lua script runs inside Redis carry the address ``?:0`` and are left out, as are the
    bench's own (client name ``bench``). Logging every command inside a script slows
    the script, so Redis-side times are read with :class:`CommandStats` instead.
    """

    def __init__(self, client: redis.Redis, max_len: int = 1_000_000) -> None:
        self.client = client
        self.max_len = max_len

    def start(self) -> None:
        self.client.config_set("slowlog-max-len", self.max_len)
        self.client.slowlog_reset()
        self.client.config_set("slowlog-log-slower-than", 0)

    def stop(self) -> dict[str, int]:
        self.client.config_set("slowlog-log-slower-than", 10_000)
        entries = self.client.slowlog_get(self.max_len)
        self.client.slowlog_reset()
        names = script_names()
        counts: dict[str, int] = {}
        for entry in entries:
            if _text(entry.get("client_name")) == "bench":
                continue
            if _text(entry.get("client_address")).startswith("?"):
                continue  # run by a script, inside the round trip of its EVALSHA
            words = _text(entry["command"]).split()
            name = words[0].lower() if words else "?"
            if name in ("evalsha", "eval") and len(words) > 1:
                name = f"{name} {names.get(words[1], words[1][:8])}"
            counts[name] = counts.get(name, 0) + 1
        return counts


class CommandStats:
    """``INFO commandstats`` over a window: every command Redis ran, those inside Lua
    scripts included, and the microseconds they took."""

    _OWN = frozenset(
        {"info", "config|set", "slowlog|get", "slowlog|reset", "client|setname", "hello"}
    )

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.before: dict[str, tuple[int, int]] = {}

    def start(self) -> None:
        self.before = self._read()

    def stop(self) -> dict[str, dict[str, float]]:
        after = self._read()
        delta = {}
        for name, (calls, usec) in after.items():
            calls0, usec0 = self.before.get(name, (0, 0))
            if calls != calls0 and name not in self._OWN:
                delta[name] = {"calls": calls - calls0, "usec": usec - usec0}
        return delta

    def _read(self) -> dict[str, tuple[int, int]]:
        stats = self.client.info("commandstats")
        return {
            key.removeprefix("cmdstat_"): (int(value["calls"]), int(value["usec"]))
            for key, value in stats.items()
            if isinstance(value, dict)
        }


def script_names() -> dict[str, str]:
    """The service's Lua scripts by SHA1, as EVALSHA names them."""
    import hashlib

    from presence.stores import _presence_scripts, _scripts

    names = {
        hashlib.sha1(getattr(_scripts, name).encode()).hexdigest(): name  # noqa: S324
        for name in ("CREATE", "GET", "LIST", "TOUCH", "REFRESH", "DELETE", "RESTORE")
    }
    for name in dir(_presence_scripts):
        value = getattr(_presence_scripts, name)
        if name.isupper() and isinstance(value, str):
            names[hashlib.sha1(value.encode()).hexdigest()] = f"presence.{name}"  # noqa: S324
    return names


#: The presence store's node lease: renewed, and lapsed leases looked for, once a
#: second whatever the sockets (see the README's "Crashed processes are reclaimed").
LEASE_TRIPS = frozenset({"evalsha presence.RENEW", "evalsha presence.LAPSED"})


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


# --- the server under test and its floor --------------------------------------------


@dataclass
class ServerConfig:
    """Environment of one server process (the service or the floor: the same for both)."""

    redis_url: str | None = None
    ttl_seconds: float = 3600.0
    heartbeat_interval: float = 30.0
    ping_timeout: float = 20.0
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, port: int) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PRESENCE_", "REDIS_", "SESSION_", "HEARTBEAT_"))
        }
        env.update(
            {
                "PORT": str(port),
                "HOST": "127.0.0.1",
                "SESSION_TTL_HOURS": repr(self.ttl_seconds / 3600),
                "HEARTBEAT_INTERVAL": repr(self.heartbeat_interval),
                "PRESENCE_PING_TIMEOUT": repr(self.ping_timeout),
                "PRESENCE_JWT_SECRET": JWT_SECRET,
                "PRESENCE_MAX_SESSIONS_PER_USER": str(MAX_SESSIONS_PER_USER),
                "LOG_LEVEL": "warning",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.redis_url is not None:
            env["REDIS_URL"] = self.redis_url
        env.update(self.extra_env)
        return env


#: The servers a benchmark can run, by kind: whether it is the service (or the bare
#: floor), and the WebSocket protocol it runs on (``PRESENCE_WS_PROTOCOL``): ours,
#: ``presence.wsproto``, or uvicorn's stock ``websockets-sansio``.
SERVER_KINDS: dict[str, tuple[bool, str]] = {
    "service": (True, "presence"),
    "stock": (True, "websockets-sansio"),
    "floor": (False, "presence"),
    "stock-floor": (False, "websockets-sansio"),
}


def is_service(kind: str) -> bool:
    """True for a kind that runs Presence itself (with Redis), False for a floor."""
    return SERVER_KINDS[kind][0]


class Server:
    """``presence serve`` (kind ``service``) or the bare Starlette floor (kind ``floor``)
    in a child process pinned to the server CPU, on a port of its own; ``stock`` and
    ``stock-floor`` are the same on uvicorn's stock WebSocket protocol."""

    def __init__(self, kind: str, config: ServerConfig, port: int | None = None) -> None:
        if kind not in SERVER_KINDS:
            raise ValueError(f"unknown server kind {kind!r}")
        self.kind = kind
        protocol = SERVER_KINDS[kind][1]
        if protocol != "presence":
            config = dataclasses.replace(
                config, extra_env={**config.extra_env, "PRESENCE_WS_PROTOCOL": protocol}
            )
        self.config = config
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = WORK / "logs" / f"{kind}-{self.port}.log"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("server is not running")
        return self.process.pid

    def command(self) -> list[str]:
        # bench._serve is `presence serve` that also logs why the Redis breaker opened.
        module = "bench._serve" if is_service(self.kind) else "bench._floor"
        return [PYTHON, "-m", module, "serve", "--host", "127.0.0.1", "--port", str(self.port)]

    def gc_pauses_ms(self) -> list[float]:
        """Pauses of generation-2 garbage collections over 50 ms, from this server's log
        (see :mod:`bench._gcwatch`)."""
        pauses = []
        if self.log_path.exists():
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith("GC PAUSE: generation 2 took "):
                    pauses.append(float(line.split(" took ", 1)[1].split()[0]))
        return pauses

    def breaker_causes(self) -> dict[str, int]:
        """How often the service's Redis circuit breaker opened, by the exception that
        opened it (from this server's log, restarts included)."""
        causes: dict[str, int] = {}
        if self.log_path.exists():
            for line in self.log_path.read_text(errors="replace").splitlines():
                if "BREAKER OPENED BY: " in line:
                    cause = line.split("BREAKER OPENED BY: ", 1)[1]
                    causes[cause] = causes.get(cause, 0) + 1
        return causes

    def start(self, timeout: float = 30.0) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # the child keeps its own copy of the descriptor
        self.process = subprocess.Popen(
            pinned(self.command(), SERVER_CPU),
            env=self.config.env(self.port),
            cwd=REPO,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start-up; see {self.log_path}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.get("/readyz")[0] == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} did not become ready; see {self.log_path}")

    def get(self, path: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            return response.status, json.loads(body) if body else None
        finally:
            conn.close()

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM (uvicorn's graceful shutdown), SIGKILL past ``timeout``.

        Returns how long the process took to exit."""
        if self.process is None:
            return 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class StallProbe:
    """GETs ``/healthz`` every ``interval`` seconds from a thread while it runs.

    The answer needs nothing but the event loop, so its latency is how long the loop was
    busy with something else: a refresher tick, a burst of pings.
    """

    def __init__(self, server: Server, interval: float = 0.1) -> None:
        self.server = server
        self.interval = interval
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
                continue
            self.latencies.append(time.perf_counter() - started)
            self._stop.wait(self.interval)
        conn.close()

    def __enter__(self) -> StallProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        values = sorted(self.latencies)
        return {
            "p50_ms": percentile(values, 50) * 1000,
            "p99_ms": percentile(values, 99) * 1000,
            "max_ms": (values[-1] if values else float("nan")) * 1000,
            "samples": len(values),
        }


# --- sessions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """One simulated browser tab: its session and the URLs it uses."""

    user: str
    session_id: str

    def spec(self, port: int, tokens: dict[str, str]) -> dict[str, Any]:
        auth = tokens[self.user]
        base = f"/api/v1/chat/sessions/{self.session_id}"
        return {
            "port": port,
            "ws": f"{base}/ws?token={auth}",
            "heartbeat": f"{base}/heartbeat",
            "auth": f"Bearer {auth}",
        }


def users_for(count: int, per_user: int, prefix: str = "u") -> list[str]:
    """``count`` session owners, ``per_user`` sessions each (the last may have fewer)."""
    return [f"{prefix}{i // per_user}" for i in range(count)]


def create_sessions(
    redis_url: str, owners: Sequence[str], *, ttl: float, concurrency: int = 64
) -> list[Client]:
    """Creates one session per owner through the service's own Redis store (the same
    Lua script ``POST /sessions`` runs), ``concurrency`` calls in flight."""
    return asyncio.run(_create_sessions(redis_url, owners, ttl, concurrency))


async def _create_sessions(
    redis_url: str, owners: Sequence[str], ttl: float, concurrency: int
) -> list[Client]:
    from presence.sessions import new_session_id
    from presence.stores import RedisStore

    store = RedisStore(redis_url, ttl=ttl, max_sessions_per_user=MAX_SESSIONS_PER_USER, timeout=5)
    await store.open()
    clients: list[Client] = []
    try:
        queue = iter(owners)

        async def worker() -> None:
            for user in queue:
                session = await store.create(user, new_session_id())
                clients.append(Client(user, session.id))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await store.close()
    return clients


def tokens_for(clients: Iterable[Client]) -> dict[str, str]:
    return {user: token(user) for user in {c.user for c in clients}}


# --- load processes -----------------------------------------------------------------


class Loader:
    """A ``bench._load`` process pinned to the load CPU, driven by JSON lines."""

    def __init__(self, name: str = "load") -> None:
        log_path = WORK / "logs" / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                pinned([PYTHON, "-m", "bench._load"], LOAD_CPU),
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        self.process.stdin.flush()

    def receive(self, timeout: float = 600.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                raise TimeoutError(f"load process did not answer; see {self.log_path}")
            chunk = os.read(self.process.stdout.fileno(), 1 << 20)
            if not chunk:
                raise RuntimeError(f"load process exited; see {self.log_path}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"load process: {reply['error']}")
        return reply

    def request(self, command: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        self.send(command)
        return self.receive(timeout)

    def close(self) -> None:
        """Ends the process; the kernel closes its sockets (the server sees them go)."""
        with contextlib.suppress(Exception):
            self.send({"cmd": "exit"})
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._selector.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def loaders(count: int, name: str = "load") -> Iterator[list[Loader]]:
    started = [Loader(f"{name}{i}") for i in range(count)]
    try:
        yield started
    finally:
        for loader in started:
            loader.close()


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
