"""A redis-server of the benchmark's own, and what it says about the work it did: the
round trips clients made (the slowlog) and the commands it ran (``INFO commandstats``)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from typing import Any

import redis

from ._procs import LOAD_CPU, WORK, free_port, pinned


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
