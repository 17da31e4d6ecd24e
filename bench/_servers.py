"""The server under test, or its floor, in a child process pinned to the server CPU, its
environment, and a probe of its event loop's stalls."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ._procs import PYTHON, REPO, SERVER_CPU, WORK, cpu_seconds, free_port, pinned, rss_kib
from ._stats import percentile

JWT_SECRET = "presence-bench-secret-long-enough-for-hs256!"  # noqa: S105 - a local bench

# The per-user cap is raised so that a benchmark can put as many sessions as it likes
# on one user; the benchmarks still spread sessions over many users, as real ones are.
MAX_SESSIONS_PER_USER = 2_000_000


@dataclass
class ServerConfig:
    """Environment of one server process (the service or the floor: the same for both)."""

    redis_url: str | None = None
    ttl_seconds: float = 3600.0
    heartbeat_interval: float = 30.0
    ping_timeout: float = 20.0
    extra_env: dict[str, str] = field(default_factory=dict)
    #: When true, the session TTL, heartbeat (ping) interval and ping timeout are left
    #: to the service's own defaults (the three fields above are not passed).
    service_defaults: bool = False

    def env(self, port: int) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PRESENCE_", "REDIS_", "SESSION_", "HEARTBEAT_"))
        }
        if not self.service_defaults:
            env.update(
                {
                    "SESSION_TTL_HOURS": repr(self.ttl_seconds / 3600),
                    "HEARTBEAT_INTERVAL": repr(self.heartbeat_interval),
                    "PRESENCE_PING_TIMEOUT": repr(self.ping_timeout),
                }
            )
        env.update(
            {
                "PORT": str(port),
                "HOST": "127.0.0.1",
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

    def __init__(
        self, kind: str, config: ServerConfig, port: int | None = None, cpu: str = SERVER_CPU
    ) -> None:
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
        #: The CPUs it runs on (``taskset -c``): the server CPU unless told otherwise.
        self.cpu = cpu
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
            pinned(self.command(), self.cpu),
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
