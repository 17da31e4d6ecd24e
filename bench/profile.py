"""Profiles that explain the figures: where the server's CPU goes while sockets idle and
under REST heartbeats (py-spy, sampling the running process from outside), and what
each open socket allocates (tracemalloc, in a server process of its own).

Not part of the default run; ``scripts/bench profile`` runs it and the report shows it.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import _clients, _procs, _redis, _servers
from .rest import _script, _wrk


@dataclass(frozen=True)
class Sizes:
    sockets: int = 15_000
    ping_interval: float = 5.0
    window: float = 20.0
    rest_seconds: float = 10.0
    traced_sockets: int = 3_000
    top: int = 15
    # Sample idle stacks too. The quick run's server holds a few sockets for a second
    # and is idle nearly all of it; without this, py-spy (which by default leaves idle
    # samples out) can come back with no stack at all, and the tests would check nothing.
    idle: bool = False
    # Under bench/.work/; the quick run keeps its own, so the tests leave the full
    # run's raw stacks alone.
    folder: str = "profiles"


FULL = Sizes()
QUICK = Sizes(
    sockets=20,
    ping_interval=0.5,
    window=1.0,
    rest_seconds=1.0,
    traced_sockets=20,
    idle=True,
    folder="profiles-quick",
)


def run(sizes: Sizes = FULL) -> dict[str, Any]:
    result: dict[str, Any] = {"sizes": asdict(sizes)}
    for kind in ("service", "floor"):
        _procs.log(f"profile: idle {kind}")
        result[f"idle_{kind}"] = _idle(kind, sizes)
    _procs.log("profile: rest service")
    result["rest_service"] = _rest(sizes)
    for kind in ("service", "floor"):
        _procs.log(f"profile: memory per socket, {kind}")
        result[f"memory_{kind}"] = _memory(kind, sizes)
    return result


def _py_spy() -> str:
    path = shutil.which("py-spy") or str(Path(_procs.PYTHON).parent / "py-spy")
    if not Path(path).exists():
        raise RuntimeError("py-spy is not installed (scripts/bench installs it)")
    return path


def _record(pid: int, seconds: float, name: str, sizes: Sizes) -> dict[str, Any]:
    out = _procs.WORK / sizes.folder / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            _py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
            "--rate", "200", "--format", "raw", "--function", "--nonblocking",
            *(["--idle"] if sizes.idle else []), "--output", str(out),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return _aggregate(out)


def _aggregate(path: Path, top: int = 15) -> dict[str, Any]:
    """Own and inclusive samples per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return {
        "samples": total,
        "raw": str(path.relative_to(_procs.REPO)),
        "own": [(name, count / total) for name, count in own.most_common(top)] if total else [],
        "inclusive": (
            [(name, count / total) for name, count in inclusive.most_common(top * 2)]
            if total
            else []
        ),
    }


def _short(frame: str) -> str:
    # "tick (presence/connections.py)" from "tick (/work/.../presence/connections.py:97)".
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").split(":")[0]
    for marker in ("site-packages/", "/presence/", "/bench/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker in ("/presence/", "/bench/"):
                where = marker.strip("/") + "/" + where
            break
    return f"{name} ({where})"


def _idle(kind: str, sizes: Sizes) -> dict[str, Any]:
    with _redis.RedisServer("profile") as redis_server:
        config = _servers.ServerConfig(
            redis_url=redis_server.url if kind == "service" else None,
            heartbeat_interval=sizes.ping_interval,
        )
        owners = _clients.users_for(sizes.sockets, 5, "p")
        if kind == "service":
            clients = _clients.create_sessions(redis_server.url, owners, ttl=config.ttl_seconds)
        else:
            clients = [_clients.Client(user, f"{i:022d}") for i, user in enumerate(owners)]
        with _servers.Server(kind, config) as server, _clients.Loader(f"profile-{kind}") as loader:
            tokens = _clients.tokens_for(clients)
            loader.request(
                {
                    "cmd": "open",
                    "clients": [c.spec(server.port, tokens) for c in clients],
                    "addresses": _clients.ADDRESSES.take(sizes.sockets),
                    "concurrency": 64,
                }
            )
            time.sleep(2 * sizes.ping_interval)
            cpu_before = server.cpu_seconds()
            profile = _record(server.pid, sizes.window, f"idle-{kind}", sizes)
            profile["cpu_s"] = server.cpu_seconds() - cpu_before
            profile["gc_pauses_ms"] = server.gc_pauses_ms()
            profile["sockets"] = sizes.sockets
            return profile


def _rest(sizes: Sizes) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (scripts/bench installs it)")
    with _redis.RedisServer("profile-rest") as redis_server:
        config = _servers.ServerConfig(redis_url=redis_server.url)
        clients = _clients.create_sessions(
            redis_server.url, _clients.users_for(200, 5, "q"), ttl=3600.0
        )
        script = _script(clients, _clients.tokens_for(clients))
        with _servers.Server("service", config) as server:
            load = threading.Thread(
                target=_wrk, args=(wrk, server.port, script, 64, sizes.rest_seconds + 2)
            )
            load.start()
            time.sleep(1)
            profile = _record(server.pid, sizes.rest_seconds, "rest-service", sizes)
            load.join()
            return profile


def _memory(kind: str, sizes: Sizes) -> dict[str, Any]:
    """Runs ``bench._trace`` (the server in-process under tracemalloc) pinned to the
    server CPU, and returns what it found."""
    with _redis.RedisServer("trace") as redis_server:
        out = _procs.WORK / sizes.folder / f"memory-{kind}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        # Under tracemalloc every call is slower; a longer Redis timeout keeps the store
        # from falling back to memory (which would refuse the sessions it never saw).
        config = _servers.ServerConfig(
            redis_url=redis_server.url if kind == "service" else None,
            extra_env={"PRESENCE_REDIS_TIMEOUT": "5"},
        )
        port = _procs.free_port()
        cmd = [
            _procs.PYTHON, "-m", "bench._trace", kind,
            "--port", str(port),
            "--sockets", str(sizes.traced_sockets),
            "--out", str(out),
        ]  # fmt: skip
        subprocess.run(
            _procs.pinned(cmd, _procs.SERVER_CPU), env=config.env(port), cwd=_procs.REPO, check=True
        )
        import json

        traced: dict[str, Any] = json.loads(out.read_text())
        return traced
