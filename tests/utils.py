"""Shared test helpers: a time unit, a redis-server the tests own, and real servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import redis.asyncio as aioredis
import uvicorn

from presence.asgi.app import create_app
from presence.cli import uvicorn_options
from presence.settings import Settings
from presence.stores import SessionStore

# Every timeout in the tests is a multiple of this unit, so a slow machine can scale
# them all at once: PRESENCE_TEST_TIMEOUT_FACTOR=3 scripts/test.
UNIT = 0.1 * float(os.environ.get("PRESENCE_TEST_TIMEOUT_FACTOR", "1"))

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"
REPO = Path(__file__).resolve().parent.parent


def token(user: str, *, secret: str = JWT_SECRET, expires_in: float = 3600) -> str:
    """A JWT for ``user`` signed with the test secret."""
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + expires_in}, secret, "HS256")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """A redis-server process on a free port in a temporary directory, owned by the tests.

    Faults are caused for real: :meth:`pause` is SIGSTOP, :meth:`kill` is SIGKILL.
    """

    def __init__(self, *, appendonly: bool = False) -> None:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.appendonly = appendonly
        self.dir = Path(tempfile.mkdtemp(prefix="presence-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.dir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 100 * UNIT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=UNIT) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(UNIT / 2)
        raise RuntimeError("redis-server did not start")

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


async def hold_redis(url: str, seconds: float) -> None:
    """Keeps Redis busy for ``seconds`` with a script that spins (as a slow command or a
    huge cleanup would): it answers nothing else meanwhile, then everything."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.eval(
            "local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] "
            "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - s > tonumber(ARGV[1])",
            0,
            round(seconds * 1e6),
        )
    finally:
        await client.aclose()


def make_settings(**changes: object) -> Settings:
    """Settings for a test server: JWT mode, short timers."""
    values: dict[str, object] = {
        "jwt_secret": JWT_SECRET,
        "heartbeat_interval": 10.0,
        "session_ttl": 60.0,
        "port": 0,
    }
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


class _Local:
    """Something listening on 127.0.0.1 at ``self.port``."""

    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


class RunningServer(_Local):
    """A uvicorn server in this event loop, on an ephemeral port."""

    def __init__(self, server: uvicorn.Server, port: int, app: object) -> None:
        self.server = server
        self.port = port
        self.app = app

    @property
    def services(self):  # type: ignore[no-untyped-def]
        return self.app.state.services  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def serve(
    settings: Settings, store: SessionStore | None = None, **uvicorn_config: Any
) -> AsyncIterator[RunningServer]:
    """Runs the app under real uvicorn with the production uvicorn options (and
    ``uvicorn_config``'s, such as ``root_path``), port 0."""
    app = create_app(settings, store)
    options = {**uvicorn_options(settings), **uvicorn_config}
    options["log_config"] = None
    config = uvicorn.Config(app, host="127.0.0.1", port=0, **options)
    server = uvicorn.Server(config)
    # IPPROTO_TCP named, as uvicorn's own bind does: asyncio sets TCP_NODELAY only on
    # sockets whose proto says TCP, and without it every response after the first on a
    # connection waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped during start-up")
            await asyncio.sleep(UNIT / 10)
        yield RunningServer(server, port, app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=100 * UNIT)
        sock.close()


class ServerProcess(_Local):
    """``python -m presence serve`` in a child process, for kill and restart tests.

    ``preexec_fn`` runs in the child before it starts (e.g. to lower its ``ulimit -n``).
    """

    def __init__(self, env: dict[str, str], preexec_fn: Callable[[], None] | None = None) -> None:
        self.env = {**os.environ, **env}
        self.preexec_fn = preexec_fn
        self.port = free_port()
        self.env["PORT"] = str(self.port)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="presence-server-", suffix=".log")[1])
        #: Where the process runs: the checkout, unless a test runs it elsewhere.
        self.cwd = REPO

    def start(self, *args: str) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "presence", "serve", *args],
                env=self.env,
                cwd=self.cwd,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=self.preexec_fn,
            )
        deadline = time.monotonic() + 150 * UNIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=UNIT):
                    return
            except OSError:
                time.sleep(UNIT / 2)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=100 * UNIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@contextlib.contextmanager
def server_process(
    env: dict[str, str], *args: str, preexec_fn: Callable[[], None] | None = None
) -> Iterator[ServerProcess]:
    process = ServerProcess(env, preexec_fn)
    process.start(*args)
    try:
        yield process
    finally:
        process.stop()


class RedisCluster:
    """A three-primary Redis Cluster of redis-server processes on free ports."""

    def __init__(self, size: int = 3) -> None:
        self.nodes = [RedisServer() for _ in range(size)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> None:
        for node in self.nodes:
            node.extra_args = [
                "--cluster-enabled", "yes",
                # The bus port defaults to port + 10000, which a free port can push past
                # 65535 or onto a taken one: name a free one.
                "--cluster-port", str(free_port()),
                "--cluster-config-file", str(node.dir / "nodes.conf"),
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{node.port}" for node in self.nodes],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=300 * UNIT,
        )
        deadline = time.monotonic() + 300 * UNIT
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    ["redis-cli", "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                for node in self.nodes
            ]
            if all("cluster_state:ok" in state for state in states):
                return
            time.sleep(UNIT)
        raise RuntimeError("the cluster did not become ready")

    def flush(self) -> None:
        for node in self.nodes:
            subprocess.run(
                ["redis-cli", "-p", str(node.port), "flushall"], capture_output=True, check=True
            )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


async def listen_ended(store, callback) -> None:
    """Calls ``callback(user, session_id, reason)`` for every session end ``store``
    announces, as the app hears them: a memory store's through its ``announce``, a Redis
    store's (or a fallback's primary's) on the ended channel, through a real bus whose
    subscription is confirmed before this returns. The bus closes with the store."""
    from presence import events, keys
    from presence.bus import EventBus, RedisBackend
    from presence.stores import FallbackStore, MemoryStore

    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task] = set()

    def announce(user: str, session_id: str, reason: str) -> None:
        task = loop.create_task(callback(user, session_id, reason))
        pending.add(task)
        task.add_done_callback(pending.discard)

    if isinstance(store, MemoryStore):
        store.announce = announce
        return
    redis = store.primary if isinstance(store, FallbackStore) else store
    if isinstance(store, FallbackStore):
        store.fallback.announce = announce
    bus = EventBus(RedisBackend(redis.client, cluster=redis.cluster, timeout=100 * UNIT))
    await bus.open()

    async def heard(data: str) -> None:
        ended = events.decode_ended(data)
        if ended.user:
            await callback(ended.user, ended.session_id, ended.reason)

    await bus.listen(keys.ended_channel(redis.prefix), heard)
    close = store.close

    async def close_with_bus() -> None:
        await bus.close()
        await close()

    store.close = close_with_bus
