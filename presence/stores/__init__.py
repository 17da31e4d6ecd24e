"""Session stores: the :class:`SessionStore` contract and its backends.

Pick one from a URL with :func:`store_from_settings`, or pass one to
:func:`presence.app.create_app` directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .base import UNSET, EndedCallback, SessionRef, SessionStore
from .fallback import FallbackStore
from .memory import MemoryStore
from .redis import RedisStore

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "UNSET",
    "EndedCallback",
    "FallbackStore",
    "MemoryStore",
    "RedisStore",
    "SessionRef",
    "SessionStore",
    "check_url",
    "store_from_settings",
]

_SCHEMES = {"memory", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster"}


def check_url(url: str) -> str:
    """Returns the scheme of a store URL.

    Raises:
        ValueError: the URL is not ``memory://``, ``redis://``, ``rediss://``,
            ``unix://``, or ``redis+cluster://`` / ``rediss+cluster://`` (a node of a
            Redis Cluster).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported store URL scheme {scheme or '(none)'!r}; "
            "use redis://, rediss://, unix://, redis+cluster:// or memory://"
        )
    return scheme


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
