"""Presence: keeps browser chat sessions alive over WebSocket ping frames and knows who
is online."""

from __future__ import annotations

from .asgi import create_app
from .exceptions import (
    ConfigError,
    NotFound,
    PresenceError,
    StoreUnavailable,
    TooManySessions,
)
from .sessions import Session
from .settings import Settings
from .stores import FallbackStore, MemoryStore, RedisStore, SessionStore

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FallbackStore",
    "MemoryStore",
    "NotFound",
    "PresenceError",
    "RedisStore",
    "Session",
    "SessionStore",
    "Settings",
    "StoreUnavailable",
    "TooManySessions",
    "__version__",
    "create_app",
]
