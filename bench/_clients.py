"""The load: sessions and their tokens, loopback source addresses, and the load
processes (``bench._load``) pinned to the load CPU, driven by JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import selectors
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from ._procs import LOAD_CPU, PYTHON, REPO, WORK, pinned
from ._servers import JWT_SECRET, MAX_SESSIONS_PER_USER


def token(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 24 * 3600}, JWT_SECRET, "HS256")


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
