"""Typed, frozen settings built once from the environment at start-up.

Nothing else in the package reads ``os.environ``: the CLI and the app factory call
:meth:`Settings.from_env` and pass the object down.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
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
    ws_protocol: str = "presence"
    max_header_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    fallback_max_sessions: int = 100_000
    redis_timeout: float = 0.25
    key_prefix: str = "presence"
    cookie_secure: bool | None = None
    log_level: str = "info"
    log_format: str = "plain"
    metrics_token: str | None = field(default=None, repr=False)
    readyz_degraded_status: int = 200
    metrics_dir: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    max_rooms_per_session: int = 20
    offline_grace: float = 5.0
    restart_grace: float = 30.0
    diff_window: float = 0.05
    room_list_limit: int = 1000
    open_rooms: bool = False
    max_meta_bytes: int = 1024
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_retry: float = 24 * 3600.0

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
        """Builds settings from environment variables (the ones :data:`VARIABLES` lists).

        Args:
            environ: usually ``os.environ``.
            **overrides: values that win over the environment (the CLI's flags).

        Raises:
            ConfigError: a variable has a value that cannot be used; the message names it.
        """
        values: dict[str, object] = {}
        env = _Env(environ)
        for variable in VARIABLES:
            raw = env.text(variable.name)
            if raw is not None:
                values[variable.field] = variable.parse(variable.name, raw)
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
        if self.ws_protocol not in WS_PROTOCOLS:
            raise ConfigError("PRESENCE_WS_PROTOCOL", f"must be one of {', '.join(WS_PROTOCOLS)}")
        if self.max_rooms_per_session < 1:
            raise ConfigError("PRESENCE_MAX_ROOMS_PER_SESSION", "must be at least 1")
        if self.room_list_limit < 1:
            raise ConfigError("PRESENCE_ROOM_LIST_LIMIT", "must be at least 1")
        if self.max_meta_bytes < 2:
            raise ConfigError("PRESENCE_MAX_META_BYTES", "must be at least 2")
        if self.offline_grace < 0:
            raise ConfigError("PRESENCE_OFFLINE_GRACE", "must be 0 or more seconds")
        if not 0 <= self.restart_grace <= 3600:
            raise ConfigError("PRESENCE_RESTART_GRACE", "must be between 0 and 3600 seconds")
        if self.diff_window < 0 or self.diff_window > 10:
            raise ConfigError("PRESENCE_DIFF_WINDOW_MS", "must be between 0 and 10000")
        if self.max_cleanup_ids < 1:
            raise ConfigError("PRESENCE_MAX_CLEANUP_IDS", "must be at least 1")
        if self.fallback_max_sessions < 1:
            raise ConfigError("PRESENCE_FALLBACK_MAX_SESSIONS", "must be at least 1")
        if not self.key_prefix or any(c in self.key_prefix for c in "{} "):
            raise ConfigError("PRESENCE_KEY_PREFIX", "must be non-empty, without braces or spaces")
        if self.webhook_urls:
            if self.webhook_secret is None:
                raise ConfigError(
                    "PRESENCE_WEBHOOK_SECRET",
                    "must be set with PRESENCE_WEBHOOK_URL: every webhook is signed with it",
                )
            if len(self.webhook_secret) < 16:
                raise ConfigError("PRESENCE_WEBHOOK_SECRET", "must be at least 16 characters")
        if self.webhook_retry <= 0:
            raise ConfigError("PRESENCE_WEBHOOK_RETRY_HOURS", "must be greater than 0")
        if self.log_level not in {"critical", "error", "warning", "info", "debug"}:
            raise ConfigError("LOG_LEVEL", "must be one of critical, error, warning, info, debug")
        if self.log_format not in {"plain", "json"}:
            raise ConfigError("LOG_FORMAT", "must be plain or json")
        if self.metrics_token is not None and len(self.metrics_token) < 16:
            # A short token can be guessed; a scrape config holds a long one as easily.
            raise ConfigError("PRESENCE_METRICS_TOKEN", "must be at least 16 characters")
        if self.admin_token is not None and len(self.admin_token) < 16:
            # A bearer that guards every user's presence: not something one can guess.
            raise ConfigError("PRESENCE_ADMIN_TOKEN", "must be at least 16 characters")
        if self.readyz_degraded_status not in (200, 503):
            raise ConfigError("PRESENCE_READYZ_DEGRADED_STATUS", "must be 200 or 503")


#: The WebSocket protocols a server may run on (``PRESENCE_WS_PROTOCOL``):
#: ``presence.wsproto``'s, or uvicorn's stock sans-I/O one, which lacks its limits on
#: control and continuation frames and on unsent bytes (see the README).
WS_PROTOCOLS = ("presence", "websockets-sansio")


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()


#: Parses one variable's value (stripped, never empty): ``(name, raw) -> value``.
Parser = Callable[[str, str], object]


def _number(*, scale: float = 1.0, allow_zero: bool = False) -> Parser:
    """A finite number above 0 (or 0 too), multiplied by ``scale`` (hours to seconds)."""

    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, f"must be a number, got {raw!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(name, "must be a finite number greater than 0")
        return value * scale

    return parse


def _whole(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, f"must be a whole number, got {raw!r}") from None


def _text(name: str, raw: str) -> str:
    return raw


def _lower(name: str, raw: str) -> str:
    return raw.lower()


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: the setting it fills, how its value is read, and what
    ``presence --help`` and the README say of it.

    Attributes:
        name: the variable.
        field: the :class:`Settings` field it sets.
        parse: reads its (stripped, non-empty) value; raises :class:`ConfigError`.
        meaning: one line on what it does.
        default: the default as the variable would spell it; None: the field's
            default, in the variable's unit (``scale`` per unit of the field).
        scale: how many of the field's units one of the variable's is (3600 for hours
            read into seconds).
    """

    name: str
    field: str
    parse: Parser
    meaning: str
    default: str | None = None
    scale: float = 1.0

    def shown_default(self) -> str:
        """The default, as ``--help`` shows it."""
        if self.default is not None:
            return self.default
        value = next(f for f in dataclasses.fields(Settings) if f.name == self.field).default
        if value is None or value == ():
            return "unset"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return f"{value / self.scale:g}"
        return str(value)


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


def _webhook_urls(name: str, raw: str) -> tuple[str, ...]:
    from .webhooks import check_urls

    return check_urls(raw)


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, f"must be true or false, got {raw!r}")


#: Every environment variable the service reads, in the order the README's
#: configuration table gives them. ``Settings.from_env`` reads these and no others, and
#: ``presence --help`` lists them with their defaults.
VARIABLES: tuple[Variable, ...] = (
    Variable(
        "REDIS_URL",
        "redis_url",
        _text,
        "redis://, rediss://, unix:// or redis+cluster:// URL; unset: memory",
    ),
    Variable(
        "SESSION_TTL_HOURS",
        "session_ttl",
        _number(scale=3600),
        "sliding session TTL in hours",
        scale=3600,
    ),
    Variable(
        "HEARTBEAT_INTERVAL",
        "heartbeat_interval",
        _number(),
        "seconds between REST heartbeats and WebSocket pings",
    ),
    Variable(
        "INACTIVE_THRESHOLD",
        "inactive_threshold",
        _number(),
        "seconds unseen before `inactive` cleanup deletes a session",
    ),
    Variable(
        "PRESENCE_PING_TIMEOUT",
        "ping_timeout",
        _number(),
        "seconds a client may take to answer a ping",
    ),
    Variable("PORT", "port", _whole, "port `presence serve` listens on (--port wins)"),
    Variable("HOST", "host", _text, "address `presence serve` binds (--host wins)"),
    Variable(
        "PRESENCE_JWT_SECRET",
        "jwt_secret",
        _text,
        "HS256 key (>= 32 characters); unset: development mode",
    ),
    Variable(
        "PRESENCE_ALLOWED_ORIGINS",
        "allowed_origins",
        lambda n, r: _parse_origins(r),
        "comma-separated origins allowed besides the server's own",
    ),
    Variable(
        "PRESENCE_MAX_LIFETIME_HOURS",
        "max_lifetime",
        _number(scale=3600, allow_zero=True),
        "absolute session lifetime in hours; 0: none",
        scale=3600,
    ),
    Variable(
        "PRESENCE_MAX_SESSIONS_PER_USER", "max_sessions_per_user", _whole, "live sessions per user"
    ),
    Variable(
        "PRESENCE_MAX_CLEANUP_IDS", "max_cleanup_ids", _whole, "ids in one `specific` cleanup"
    ),
    Variable(
        "PRESENCE_FALLBACK_MAX_SESSIONS",
        "fallback_max_sessions",
        _whole,
        "sessions the in-memory fallback holds at most",
    ),
    Variable(
        "PRESENCE_REDIS_TIMEOUT",
        "redis_timeout",
        _number(),
        "seconds; a Redis call's bound is twice this",
    ),
    Variable(
        "PRESENCE_WS_MESSAGES_PER_SECOND",
        "ws_messages_per_second",
        _number(),
        "client messages a socket may send per second",
    ),
    Variable(
        "PRESENCE_WS_MAX_UNSENT_BYTES",
        "ws_max_unsent_bytes",
        _whole,
        "bytes held unsent for one socket before it is dropped",
    ),
    Variable(
        "PRESENCE_WS_PROTOCOL",
        "ws_protocol",
        _lower,
        "presence, or websockets-sansio: uvicorn's stock protocol, without some limits",
    ),
    Variable(
        "PRESENCE_MAX_SOCKETS_PER_USER",
        "max_sockets_per_user",
        _whole,
        "open sockets per user on one process",
    ),
    Variable(
        "PRESENCE_ANONYMOUS_PER_MINUTE",
        "anonymous_per_minute",
        _whole,
        "development mode: new anonymous identities per address a minute",
    ),
    Variable(
        "PRESENCE_MAX_HEADER_BYTES",
        "max_header_bytes",
        _whole,
        "bytes of a request's line and headers",
    ),
    Variable(
        "PRESENCE_HEADER_TIMEOUT",
        "header_timeout",
        _number(),
        "seconds a request's line and headers may take",
    ),
    Variable(
        "PRESENCE_JWT_REQUIRE_EXP", "jwt_require_exp", _parse_bool, "refuse tokens without `exp`"
    ),
    Variable("PRESENCE_JWT_AUDIENCE", "jwt_audience", _text, "the `aud` a token must carry"),
    Variable("PRESENCE_JWT_ISSUER", "jwt_issuer", _text, "the `iss` a token must carry"),
    Variable(
        "PRESENCE_OPEN_ROOMS",
        "open_rooms",
        _parse_bool,
        "every room may be joined and watched by anyone",
    ),
    Variable(
        "PRESENCE_MAX_ROOMS_PER_SESSION",
        "max_rooms_per_session",
        _whole,
        "rooms a session may be in or watch at once",
    ),
    Variable(
        "PRESENCE_MAX_META_BYTES", "max_meta_bytes", _whole, "bytes of a member's meta, encoded"
    ),
    Variable(
        "PRESENCE_OFFLINE_GRACE",
        "offline_grace",
        _number(allow_zero=True),
        "seconds a departing session still counts",
    ),
    Variable(
        "PRESENCE_RESTART_GRACE",
        "restart_grace",
        _number(allow_zero=True),
        "seconds a stopped process's sessions still count, for their sockets to come back "
        "(0: they leave as closed after the offline grace)",
    ),
    Variable(
        "PRESENCE_DIFF_WINDOW_MS",
        "diff_window",
        _number(scale=0.001, allow_zero=True),
        "milliseconds over which a room's changes make one diff",
        scale=0.001,
    ),
    Variable(
        "PRESENCE_ROOM_LIST_LIMIT",
        "room_list_limit",
        _whole,
        "members in a sync or a page; changes in a diff",
    ),
    Variable(
        "PRESENCE_DEV_SECRET",
        "dev_secret",
        _text,
        "development mode: the key of anonymous identity cookies",
        default="shared",
    ),
    Variable(
        "PRESENCE_DEV_SECRET_FILE",
        "dev_secret_file",
        _text,
        "development mode: a file holding that key",
    ),
    Variable(
        "PRESENCE_COOKIE_SECURE",
        "cookie_secure",
        _parse_bool,
        "force the cookies' Secure attribute",
        default="by scheme",
    ),
    Variable(
        "PRESENCE_ADMIN_TOKEN",
        "admin_token",
        _text,
        "turns on /admin: the token (16 characters or more) as a bearer or to sign in",
    ),
    Variable("PRESENCE_KEY_PREFIX", "key_prefix", _text, "prefix of every Redis key"),
    Variable(
        "PRESENCE_METRICS_TOKEN",
        "metrics_token",
        _text,
        "bearer token GET /metrics requires; unset: open",
    ),
    Variable(
        "PRESENCE_READYZ_DEGRADED_STATUS",
        "readyz_degraded_status",
        _whole,
        "status of /readyz while degraded: 200 or 503",
    ),
    Variable(
        "PROMETHEUS_MULTIPROC_DIR",
        "metrics_dir",
        _text,
        "prometheus-client's multiprocess folder; `--workers N` makes one when unset",
    ),
    Variable(
        "PRESENCE_WEBHOOK_URL",
        "webhook_urls",
        _webhook_urls,
        "URLs (comma-separated) that presence events are POSTed to, signed",
    ),
    Variable(
        "PRESENCE_WEBHOOK_SECRET",
        "webhook_secret",
        _text,
        "the key of the webhooks' Presence-Signature (16 characters or more)",
    ),
    Variable(
        "PRESENCE_WEBHOOK_RETRY_HOURS",
        "webhook_retry",
        _number(scale=3600.0),
        "hours a webhook is retried before it goes to the dead letters",
        scale=3600.0,
    ),
    Variable("LOG_LEVEL", "log_level", _lower, "debug, info, warning, error or critical"),
    Variable(
        "LOG_FORMAT", "log_format", _lower, "plain (a line of text) or json (an object a line)"
    ),
)
