"""Processes and ``/proc``: paths, pinning to a CPU, a process's RSS and CPU time read
from outside, the kernel's TCP counters, the machine and the code measured, and whether
the machine was quiet while a benchmark ran.

Processes are measured from ``/proc`` rather than from inside, so the service and its
floor are read the same way and nothing in them needs to cooperate.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._stats import summary

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
PYTHON = sys.executable

# The server gets CPU 0 to itself; load clients, redis-server, wrk and this orchestrator
# share CPU 1. On a machine with one CPU nothing is pinned.
SERVER_CPU = "0"
LOAD_CPU = "1"

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


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
