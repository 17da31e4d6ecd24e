"""Settings from the environment, and the CLI's answer to a bad value."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from presence.cli import NoDelayHttpToolsProtocol, no_delay, uvicorn_options
from presence.exceptions import ConfigError
from presence.settings import Settings

from .utils import make_settings


def test_defaults_follow_the_spec():
    """With nothing set: 24 h TTL, 30 s heartbeat, 1 h inactive threshold, memory store."""
    settings = Settings.from_env({})
    assert settings.session_ttl == 24 * 3600
    assert settings.heartbeat_interval == 30
    assert settings.inactive_threshold == 3600
    assert settings.redis_url is None
    assert settings.dev_mode


def test_values_are_read_and_converted():
    """Every documented variable is read; SESSION_TTL_HOURS may be a fraction."""
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://localhost:6380/1",
            "SESSION_TTL_HOURS": "0.001",
            "HEARTBEAT_INTERVAL": "1.5",
            "INACTIVE_THRESHOLD": "60",
            "PORT": "9000",
            "PRESENCE_JWT_SECRET": "s" * 32,
            "PRESENCE_ALLOWED_ORIGINS": "https://a.example.com, http://localhost:3000/",
            "PRESENCE_MAX_LIFETIME_HOURS": "12",
        }
    )
    assert settings.session_ttl == pytest.approx(3.6)
    assert settings.heartbeat_interval == 1.5
    assert settings.inactive_threshold == 60
    assert settings.port == 9000
    assert not settings.dev_mode
    assert settings.allowed_origins == ("https://a.example.com", "http://localhost:3000")
    assert settings.max_lifetime == 12 * 3600
    assert settings.refresh_interval == pytest.approx(1.2)


def test_the_restart_grace_defaults_to_30_s_and_0_turns_it_off():
    assert Settings().restart_grace == 30
    assert Settings.from_env({"PRESENCE_RESTART_GRACE": "0"}).restart_grace == 0
    assert Settings.from_env({"PRESENCE_RESTART_GRACE": "90.5"}).restart_grace == 90.5


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SESSION_TTL_HOURS": "soon"}, "SESSION_TTL_HOURS"),
        ({"SESSION_TTL_HOURS": "-1"}, "SESSION_TTL_HOURS"),
        ({"SESSION_TTL_HOURS": "nan"}, "SESSION_TTL_HOURS"),
        ({"HEARTBEAT_INTERVAL": "0"}, "HEARTBEAT_INTERVAL"),
        ({"HEARTBEAT_INTERVAL": "100000"}, "HEARTBEAT_INTERVAL"),
        ({"INACTIVE_THRESHOLD": "x"}, "INACTIVE_THRESHOLD"),
        ({"INACTIVE_THRESHOLD": "30"}, "INACTIVE_THRESHOLD"),
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"PRESENCE_JWT_SECRET": "short"}, "PRESENCE_JWT_SECRET"),
        ({"PRESENCE_ALLOWED_ORIGINS": "example.com"}, "PRESENCE_ALLOWED_ORIGINS"),
        ({"PRESENCE_ALLOWED_ORIGINS": "https://a.com/path"}, "PRESENCE_ALLOWED_ORIGINS"),
        ({"PRESENCE_COOKIE_SECURE": "maybe"}, "PRESENCE_COOKIE_SECURE"),
        ({"PRESENCE_RESTART_GRACE": "soon"}, "PRESENCE_RESTART_GRACE"),
        ({"PRESENCE_RESTART_GRACE": "-1"}, "PRESENCE_RESTART_GRACE"),
        ({"PRESENCE_RESTART_GRACE": "nan"}, "PRESENCE_RESTART_GRACE"),
        ({"PRESENCE_RESTART_GRACE": "3601"}, "PRESENCE_RESTART_GRACE"),
        ({"PRESENCE_RESTART_GRACE": "1e400"}, "PRESENCE_RESTART_GRACE"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    """A bad value raises ConfigError naming the variable."""
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert error.value.variable == variable
    assert str(error.value).startswith(variable)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://:s3cret@localhost:notaport/0", "port 'notaport'"),
        ("redis://localhost:0", "port '0'"),
        ("redis://localhost:70000", "port '70000'"),
        ("redis://localhost/abc", "database 'abc'"),
        ("redis://localhost/1/2", "database '1/2'"),
        ("redis://localhost?db=abc", "database ?db='abc'"),
        ("redis://:s3cret@:6379/0", "no host"),
        ("redis:///0", "no host"),
        ("unix://", "socket's path"),
        ("redis://localhost?socket_timeot=1", "unknown option 'socket_timeot'"),
        ("unix:///run/redis.sock?socket_keepalive=1", "unknown option 'socket_keepalive'"),
        ("redis://localhost?ssl_ca_certs=/etc/ca.pem", "for TLS, which takes rediss://"),
        ("redis://localhost?socket_timeout=soon", "socket_timeout='soon'"),
        ("redis://localhost?socket_keepalive=maybe", "socket_keepalive='maybe'"),
        ("redis://localhost?protocol=4", "protocol='4'"),
        ("rediss://localhost?ssl_cert_reqs=always", "ssl_cert_reqs='always'"),
        ("rediss://localhost?ssl_ca_certs=/no/such/ca.pem", "ssl_ca_certs names no file"),
        ("redis+cluster://localhost:7000/1", "database 0 only"),
        ("redis+cluster://localhost:7000?timeout=1", "unknown option 'timeout'"),
    ],
)
def test_redis_urls_that_redis_py_would_misread_are_refused(url, problem):
    """A REDIS_URL that redis-py would fail on at the first connection, or read
    otherwise than meant (a db of "abc" as db 0), is refused by the settings with the
    part at fault named, and never the password."""
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"REDIS_URL": url})
    assert error.value.variable == "REDIS_URL"
    assert problem in error.value.reason
    assert "s3cret" not in str(error.value)


def test_redis_urls_that_redis_py_takes_are_accepted(tmp_path):
    """Every form redis-py reads as meant is accepted: TLS with its ssl_* options, a
    unix socket with a db, a cluster node, IPv6, credentials and pool options."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    for url in [
        "redis://localhost",
        "redis://localhost:6380/1",
        "redis://localhost:6379/",
        "redis://user:p%40ss@redis.internal:6379/0?socket_timeout=1.5&client_name=presence",
        "redis://localhost?db=3&password=x&health_check_interval=30&socket_keepalive=true",
        "redis://[::1]:6379/0",
        f"rediss://redis.internal:6380/0?ssl_ca_certs={ca}&ssl_check_hostname=false",
        "rediss://redis.internal?ssl_cert_reqs=none",
        "unix:///run/redis.sock?db=2",
        "redis+cluster://node-1:7000/0",
        f"rediss+cluster://node-1:7000?ssl_ca_certs={ca}",
        "memory://",
    ]:
        settings = Settings.from_env({"REDIS_URL": url})
        assert settings.redis_url == url


def test_cli_stops_on_a_bad_redis_url_with_a_message_not_a_traceback():
    """`presence serve` with a REDIS_URL whose port is no number exits 2 with one line
    naming REDIS_URL and the port, before binding (it used to start and fail in the
    lifespan with redis-py's traceback)."""
    result = subprocess.run(
        [sys.executable, "-m", "presence", "serve"],
        env={"REDIS_URL": "redis://localhost:notaport/0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr and "notaport" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_are_frozen():
    """Settings cannot be changed after start-up."""
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_cli_stops_on_a_bad_value_with_a_message():
    """`presence serve` with a bad variable exits 2 and names it, before binding."""
    result = subprocess.run(
        [sys.executable, "-m", "presence", "serve"],
        env={"SESSION_TTL_HOURS": "soon", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "SESSION_TTL_HOURS" in result.stderr


def test_cli_version():
    """`presence --version` prints the version."""
    result = subprocess.run(
        [sys.executable, "-m", "presence", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.startswith("presence ")


def test_every_connection_gets_tcp_nodelay_even_from_a_proto_0_listener():
    """uvicorn's bind for --workers makes its socket with proto 0, so asyncio sets no
    TCP_NODELAY on the connections; the server's HTTP protocol sets it itself."""
    assert issubclass(uvicorn_options(make_settings())["http"].func, NoDelayHttpToolsProtocol)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0

                class Transport:
                    def get_extra_info(self, name: str) -> object:
                        return accepted if name == "socket" else None

                no_delay(Transport())
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_start_up_freezes_its_objects_and_sets_the_collectors_thresholds():
    """Once the app has started, what start-up made is out of the collector's reach and
    the thresholds are the service's own, in a process of its own (as uvicorn runs it)."""
    script = (
        "import asyncio, gc, json\n"
        "from presence._gc import THRESHOLDS as GC_THRESHOLDS\n"
        "from presence.asgi.app import create_app\n"
        "from presence.settings import Settings\n"
        "async def main():\n"
        "    app = create_app(Settings())\n"
        "    async with app.router.lifespan_context(app):\n"
        "        print(json.dumps([gc.get_threshold(), GC_THRESHOLDS, gc.get_freeze_count()]))\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "REDIS_URL"},
    )
    thresholds, wanted, frozen = json.loads(result.stdout.strip().splitlines()[-1])
    assert thresholds == list(wanted) and wanted[0] > 700  # not CPython's default
    assert frozen > 10_000  # modules, classes and functions of the whole stack
