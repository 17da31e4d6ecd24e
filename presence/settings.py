"""Typed, frozen settings built once from the environment at start-up.

Nothing else in the package reads ``os.environ``: the CLI and the app factory call
:meth:`Settings.from_env` and pass the object down.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .exceptions import ConfigError


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service can be configured with.

    Times are seconds (floats) so tests can run with TTLs of a few seconds.
    """

    redis_url: str | None = None
    session_ttl: float = 24 * 3600.0
    heartbeat_interval: float = 30.0
    ping_timeout: float = 20.0
    inactive_threshold: float = 3600.0
    max_lifetime: float = 0.0
    host: str = "127.0.0.1"
    port: int = 8000
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_require_exp: bool = True
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    dev_secret: str | None = field(default=None, repr=False)
    dev_secret_file: str | None = None
    allowed_origins: tuple[str, ...] = ()
    max_sessions_per_user: int = 50
    max_sockets_per_user: int = 20
    anonymous_per_minute: int = 60
    max_cleanup_ids: int = 100
    max_body_bytes: int = 64 * 1024
    max_data_bytes: int = 1024
    ws_max_message_bytes: int = 64 * 1024
    ws_messages_per_second: float = 10.0
    ws_message_burst: int = 40
    ws_max_unsent_bytes: int = 1024 * 1024
    max_header_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    fallback_max_sessions: int = 100_000
    redis_timeout: float = 0.25
    key_prefix: str = "presence"
    cookie_secure: bool | None = None
    log_level: str = "info"
    max_rooms_per_session: int = 20
    offline_grace: float = 5.0
    diff_window: float = 0.05
    room_list_limit: int = 1000
    open_rooms: bool = False
    max_meta_bytes: int = 1024
    admin_token: str | None = field(default=None, repr=False)

    @property
    def dev_mode(self) -> bool:
        """True when no JWT secret is set and anonymous identities are handed out."""
        return self.jwt_secret is None

    @property
    def rooms_open(self) -> bool:
        """True when every room may be joined and watched by anyone: development mode,
        or PRESENCE_OPEN_ROOMS; otherwise a token's ``rooms`` claim says which."""
        return self.dev_mode or self.open_rooms

    @property
    def refresh_interval(self) -> float:
        """How often the per-process refresher renews open sockets' sessions.

        At most a third of the TTL, so two missed ticks still leave a session alive.
        """
        return min(self.heartbeat_interval, self.session_ttl / 3)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: object) -> Settings:
        """Builds settings from environment variables.

        Args:
            environ: usually ``os.environ``.
            **overrides: values that win over the environment (the CLI's flags).

        Raises:
            ConfigError: a variable has a value that cannot be used; the message names it.
        """
        values: dict[str, object] = {}
        env = _Env(environ)
        values["redis_url"] = env.text("REDIS_URL")
        ttl_hours = env.number("SESSION_TTL_HOURS", minimum=0.0)
        if ttl_hours is not None:
            values["session_ttl"] = ttl_hours * 3600.0
        for var, name in [
            ("HEARTBEAT_INTERVAL", "heartbeat_interval"),
            ("PRESENCE_PING_TIMEOUT", "ping_timeout"),
            ("INACTIVE_THRESHOLD", "inactive_threshold"),
            ("PRESENCE_REDIS_TIMEOUT", "redis_timeout"),
            ("PRESENCE_HEADER_TIMEOUT", "header_timeout"),
        ]:
            value = env.number(var, minimum=0.0)
            if value is not None:
                values[name] = value
        max_hours = env.number("PRESENCE_MAX_LIFETIME_HOURS", minimum=0.0, allow_zero=True)
        if max_hours is not None:
            values["max_lifetime"] = max_hours * 3600.0
        rate = env.number("PRESENCE_WS_MESSAGES_PER_SECOND", minimum=0.0)
        if rate is not None:
            values["ws_messages_per_second"] = rate
        for var, name in [
            ("PORT", "port"),
            ("PRESENCE_MAX_SESSIONS_PER_USER", "max_sessions_per_user"),
            ("PRESENCE_MAX_CLEANUP_IDS", "max_cleanup_ids"),
            ("PRESENCE_FALLBACK_MAX_SESSIONS", "fallback_max_sessions"),
            ("PRESENCE_MAX_SOCKETS_PER_USER", "max_sockets_per_user"),
            ("PRESENCE_ANONYMOUS_PER_MINUTE", "anonymous_per_minute"),
            ("PRESENCE_MAX_HEADER_BYTES", "max_header_bytes"),
            ("PRESENCE_WS_MAX_UNSENT_BYTES", "ws_max_unsent_bytes"),
        ]:
            number = env.whole(var)
            if number is not None:
                values[name] = number
        host = env.text("HOST")
        if host is not None:
            values["host"] = host
        values["jwt_secret"] = env.text("PRESENCE_JWT_SECRET")
        values["dev_secret"] = env.text("PRESENCE_DEV_SECRET")
        values["dev_secret_file"] = env.text("PRESENCE_DEV_SECRET_FILE")
        values["admin_token"] = env.text("PRESENCE_ADMIN_TOKEN")
        require_exp = env.text("PRESENCE_JWT_REQUIRE_EXP")
        if require_exp is not None:
            values["jwt_require_exp"] = _parse_bool("PRESENCE_JWT_REQUIRE_EXP", require_exp)
        values["jwt_audience"] = env.text("PRESENCE_JWT_AUDIENCE")
        values["jwt_issuer"] = env.text("PRESENCE_JWT_ISSUER")
        origins = env.text("PRESENCE_ALLOWED_ORIGINS")
        if origins is not None:
            values["allowed_origins"] = _parse_origins(origins)
        grace = env.number("PRESENCE_OFFLINE_GRACE", minimum=0.0, allow_zero=True)
        if grace is not None:
            values["offline_grace"] = grace
        window = env.number("PRESENCE_DIFF_WINDOW_MS", minimum=0.0, allow_zero=True)
        if window is not None:
            values["diff_window"] = window / 1000
        for var, name in [
            ("PRESENCE_MAX_ROOMS_PER_SESSION", "max_rooms_per_session"),
            ("PRESENCE_ROOM_LIST_LIMIT", "room_list_limit"),
            ("PRESENCE_MAX_META_BYTES", "max_meta_bytes"),
        ]:
            number = env.whole(var)
            if number is not None:
                values[name] = number
        open_rooms = env.text("PRESENCE_OPEN_ROOMS")
        if open_rooms is not None:
            values["open_rooms"] = _parse_bool("PRESENCE_OPEN_ROOMS", open_rooms)
        prefix = env.text("PRESENCE_KEY_PREFIX")
        if prefix is not None:
            values["key_prefix"] = prefix
        secure = env.text("PRESENCE_COOKIE_SECURE")
        if secure is not None:
            values["cookie_secure"] = _parse_bool("PRESENCE_COOKIE_SECURE", secure)
        level = env.text("LOG_LEVEL")
        if level is not None:
            values["log_level"] = level.lower()
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def replace(self, **changes: object) -> Settings:
        """Returns a copy with some fields changed, validated again."""
        settings = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raises :class:`ConfigError` for a combination of values that cannot work."""
        if self.redis_url is not None:
            from .stores import check_url

            try:
                check_url(self.redis_url)
            except ValueError as exc:
                raise ConfigError("REDIS_URL", str(exc)) from None
        if self.session_ttl <= 0:
            raise ConfigError("SESSION_TTL_HOURS", "must be greater than 0")
        if self.heartbeat_interval <= 0:
            raise ConfigError("HEARTBEAT_INTERVAL", "must be greater than 0")
        if self.heartbeat_interval >= self.session_ttl:
            raise ConfigError(
                "HEARTBEAT_INTERVAL",
                f"must be shorter than the session TTL ({self.session_ttl:g} s)",
            )
        if self.inactive_threshold <= self.refresh_interval:
            # Open sockets' sessions are seen once per refresh; a shorter threshold would
            # let `inactive` cleanup delete sessions whose sockets are open.
            raise ConfigError(
                "INACTIVE_THRESHOLD",
                f"must be longer than the refresh interval ({self.refresh_interval:g} s, "
                "the shorter of HEARTBEAT_INTERVAL and a third of the TTL)",
            )
        if self.ping_timeout <= 0:
            raise ConfigError("PRESENCE_PING_TIMEOUT", "must be greater than 0")
        if self.jwt_secret is not None and len(self.jwt_secret) < 32:
            raise ConfigError("PRESENCE_JWT_SECRET", "must be at least 32 characters for HS256")
        if self.admin_token is not None and len(self.admin_token) < 16:
            # A bearer that guards every user's presence: not something one can guess.
            raise ConfigError("PRESENCE_ADMIN_TOKEN", "must be at least 16 characters")
        if not 0 < self.port < 65536 and self.port != 0:
            raise ConfigError("PORT", "must be between 0 and 65535")
        if self.max_sessions_per_user < 1:
            raise ConfigError("PRESENCE_MAX_SESSIONS_PER_USER", "must be at least 1")
        if self.max_sockets_per_user < 1:
            raise ConfigError("PRESENCE_MAX_SOCKETS_PER_USER", "must be at least 1")
        if self.anonymous_per_minute < 1:
            raise ConfigError("PRESENCE_ANONYMOUS_PER_MINUTE", "must be at least 1")
        if self.max_header_bytes < 1024:
            # A browser's request line and headers (cookies included) need a few KiB.
            raise ConfigError("PRESENCE_MAX_HEADER_BYTES", "must be at least 1024")
        if self.header_timeout <= 0:
            raise ConfigError("PRESENCE_HEADER_TIMEOUT", "must be greater than 0")
        if self.ws_max_unsent_bytes < self.ws_max_message_bytes:
            # A socket must be able to hold at least one message of the largest size.
            raise ConfigError(
                "PRESENCE_WS_MAX_UNSENT_BYTES",
                f"must be at least the largest message ({self.ws_max_message_bytes} bytes)",
            )
        if self.max_rooms_per_session < 1:
            raise ConfigError("PRESENCE_MAX_ROOMS_PER_SESSION", "must be at least 1")
        if self.room_list_limit < 1:
            raise ConfigError("PRESENCE_ROOM_LIST_LIMIT", "must be at least 1")
        if self.max_meta_bytes < 2:
            raise ConfigError("PRESENCE_MAX_META_BYTES", "must be at least 2")
        if self.offline_grace < 0:
            raise ConfigError("PRESENCE_OFFLINE_GRACE", "must be 0 or more seconds")
        if self.diff_window < 0 or self.diff_window > 10:
            raise ConfigError("PRESENCE_DIFF_WINDOW_MS", "must be between 0 and 10000")
        if self.max_cleanup_ids < 1:
            raise ConfigError("PRESENCE_MAX_CLEANUP_IDS", "must be at least 1")
        if self.fallback_max_sessions < 1:
            raise ConfigError("PRESENCE_FALLBACK_MAX_SESSIONS", "must be at least 1")
        if not self.key_prefix or any(c in self.key_prefix for c in "{} "):
            raise ConfigError("PRESENCE_KEY_PREFIX", "must be non-empty, without braces or spaces")
        if self.log_level not in {"critical", "error", "warning", "info", "debug"}:
            raise ConfigError("LOG_LEVEL", "must be one of critical, error, warning, info, debug")


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def number(self, name: str, *, minimum: float, allow_zero: bool = False) -> float | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, f"must be a number, got {raw!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not allow_zero):
            raise ConfigError(name, f"must be a finite number greater than {minimum:g}")
        return value

    def whole(self, name: str) -> int | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(name, f"must be a whole number, got {raw!r}") from None


def _parse_origins(raw: str) -> tuple[str, ...]:
    origins = []
    for item in raw.split(","):
        origin = item.strip().rstrip("/").lower()
        if not origin:
            continue
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme not in {"http", "https"} or not rest or "/" in rest:
            raise ConfigError(
                "PRESENCE_ALLOWED_ORIGINS",
                f"{item.strip()!r} is not an origin like https://chat.example.com",
            )
        origins.append(origin)
    return tuple(origins)


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, f"must be true or false, got {raw!r}")
