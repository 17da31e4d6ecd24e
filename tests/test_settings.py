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
    ],
)
def test_bad_values_name_the_variable(env, variable):
    """A bad value raises ConfigError naming the variable."""
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert error.value.variable == variable
    assert str(error.value).startswith(variable)


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
        "from presence.app import GC_THRESHOLDS, create_app\n"
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
