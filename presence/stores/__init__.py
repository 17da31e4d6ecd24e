"""Session stores: the :class:`SessionStore` contract and its backends.

Pick one from a URL with :func:`store_from_settings`, or pass one to
:func:`presence.app.create_app` directly.
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS

from .base import UNSET, Announce, SessionRef, SessionStore
from .fallback import FallbackStore
from .memory import MemoryStore
from .redis import RedisStore

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "UNSET",
    "Announce",
    "FallbackStore",
    "MemoryStore",
    "RedisStore",
    "SessionRef",
    "SessionStore",
    "check_url",
    "store_from_settings",
]

_SCHEMES = {"memory", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster"}

# The query options a Redis URL may carry: those redis-py's parse_url converts and
# hands to the connection (or the pool), and its string-valued ones. Any other name
# would reach a constructor as an unexpected keyword, at the first connection.
_OPTIONS = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_read_size",
        "health_check_interval",
        "max_connections",
        "protocol",
        "client_name",
        "lib_name",
        "lib_version",
        "username",
        "password",
    }
)
# Options of the pool and of plain connections that RedisCluster does not take.
_NOT_CLUSTER = frozenset({"timeout", "retry_on_timeout"})
_TCP = frozenset({"socket_keepalive"})
_TLS = frozenset(
    {
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
    # Newer redis-py releases parse more (ssl_include_verify_flags, ...).
    | {name for name in URL_QUERY_ARGUMENT_PARSERS if name.startswith("ssl_")}
)
_TLS_NOT_CLUSTER = frozenset({"ssl_ca_path", "ssl_password"})
_FILES = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}
_NUMBERS = {"socket_timeout", "socket_connect_timeout", "health_check_interval", "timeout"}
_COUNTS = {"socket_read_size", "max_connections"}
_FLAGS = {"socket_keepalive", "retry_on_timeout", "ssl_check_hostname"}
# redis-py's own words for false; anything else it takes for true.
_FALSE = {"0", "F", "FALSE", "N", "NO"}
_TRUE = {"1", "T", "TRUE", "Y", "YES"}
_WHOLE = re.compile(r"\d+")


def check_url(url: str) -> str:
    """Returns the scheme of a store URL.

    Raises:
        ValueError: the URL is not ``memory://``, ``redis://``, ``rediss://``,
            ``unix://``, or ``redis+cluster://`` / ``rediss+cluster://`` (a node of a
            Redis Cluster), or it is one that redis-py would take otherwise than meant
            or fail on at the first connection: no host (or socket path), a port that
            is not a number from 1 to 65535, a database that is not a whole number (in
            the path or ``?db=``; only 0 on a cluster), an unknown query option, or a
            bad option value. The message names the part at fault, never the password.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported store URL scheme {scheme or '(none)'!r}; "
            "use redis://, rediss://, unix://, redis+cluster:// or memory://"
        )
    if scheme == "memory":
        return scheme
    cluster = scheme.endswith("+cluster")
    base = scheme.removesuffix("+cluster")
    db = None
    if base == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path, as in unix:///run/redis.sock")
    else:
        if not parts.hostname:
            raise ValueError(f"the URL has no host; give one, as in {base}://localhost:6379/0")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError(
                f"the port {_port_text(parts.netloc)!r} is not a number from 1 to 65535"
            )
        path = parts.path.strip("/")
        if path:
            if not _WHOLE.fullmatch(path):
                raise ValueError(
                    f"the database {path!r} (the URL's path) must be a whole number, "
                    f"as in {base}://localhost:6379/0"
                )
            db = int(path)
    allowed = _OPTIONS | (set() if base == "unix" else _TCP)
    if base == "rediss":
        allowed |= _TLS
    if cluster:
        allowed -= _NOT_CLUSTER
    else:
        allowed |= _NOT_CLUSTER | (_TLS_NOT_CLUSTER if base == "rediss" else set())
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in allowed:
            if name.startswith("ssl_") and base != "rediss":
                raise ValueError(f"the option {name!r} is for TLS, which takes rediss://")
            raise ValueError(f"unknown option {name!r} in the URL's query string")
        _check_option(name, value)
        if name == "db":
            db = int(value)
    if cluster and db not in (None, 0):
        raise ValueError("a Redis Cluster has database 0 only")
    return scheme


def _check_option(name: str, value: str) -> None:
    # Values of known types are shown; a user name, a password, a file path may be private.
    if name == "db" and not _WHOLE.fullmatch(value):
        raise ValueError(f"the database ?db={value!r} must be a whole number")
    if name in _NUMBERS:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"the option {name}={value!r} must be a number of seconds above 0")
    if name in _COUNTS and not (_WHOLE.fullmatch(value) and int(value) > 0):
        raise ValueError(f"the option {name}={value!r} must be a whole number above 0")
    if name in _FLAGS and value.upper() not in _FALSE | _TRUE:
        raise ValueError(f"the option {name}={value!r} must be true or false")
    if name == "protocol" and value not in ("2", "3"):
        raise ValueError(f"the option protocol={value!r} must be 2 or 3")
    if name == "ssl_cert_reqs" and value not in ("none", "optional", "required"):
        raise ValueError(f"the option ssl_cert_reqs={value!r} must be none, optional or required")
    if name in _FILES and not os.path.isfile(value):
        raise ValueError(f"the option {name} names no file that can be read")
    if name == "ssl_ca_path" and not os.path.isdir(value):
        raise ValueError("the option ssl_ca_path names no directory")
    if name == "ssl_min_version" and not _WHOLE.fullmatch(value):
        raise ValueError(f"the option ssl_min_version={value!r} must be a whole number")


def _port_text(netloc: str) -> str:
    """The port as written, without the user name and password before it."""
    address = netloc.rpartition("@")[2]
    if address.startswith("["):
        return address.partition("]")[2].removeprefix(":")
    return address.rpartition(":")[2] if ":" in address else ""


def store_from_settings(settings: Settings) -> SessionStore:
    """Builds the store the settings ask for.

    No ``REDIS_URL`` (or ``memory://``): a :class:`MemoryStore`. A Redis URL: a
    :class:`FallbackStore` over Redis that serves from memory while Redis is away.
    """
    # A socket's session is renewed every refresh interval by its process's refresher:
    # not renewed for three, it is no longer held open (a crashed process, say).
    held_open_window = 3 * settings.refresh_interval
    memory = MemoryStore(
        ttl=settings.session_ttl,
        max_lifetime=settings.max_lifetime,
        max_sessions_per_user=settings.max_sessions_per_user,
        held_open_window=held_open_window,
        max_sessions=settings.fallback_max_sessions,
    )
    if settings.redis_url is None or check_url(settings.redis_url) == "memory":
        return memory
    url, cluster = settings.redis_url, check_url(settings.redis_url).endswith("+cluster")
    if cluster:
        url = url.replace("+cluster://", "://", 1)
    redis = RedisStore(
        url,
        cluster=cluster,
        ttl=settings.session_ttl,
        max_lifetime=settings.max_lifetime,
        max_sessions_per_user=settings.max_sessions_per_user,
        held_open_window=held_open_window,
        prefix=settings.key_prefix,
        timeout=settings.redis_timeout,
    )
    return FallbackStore(redis, memory)
