"""Exceptions raised by Presence.

The tree::

    PresenceError
    ├── ConfigError               a setting has a bad value (names the variable)
    ├── ApiError                  an HTTP request is refused (status, code, message)
    │   ├── BadRequest            400/413/415/422: the request itself is wrong
    │   ├── Unauthorized          401: no valid identity
    │   ├── Forbidden             403: origin or CSRF check failed
    │   ├── NotFound              404: no such session for this user
    │   ├── TooManySessions       429: per-user session cap reached
    │   ├── StoreFull             503: the fallback store is at its cap
    │   ├── StoreBusy             503: this request cannot be answered now; retry
    │   └── StoreMisconfigured    503: Redis answers but refuses this service
    └── StoreUnavailable          the store cannot be reached right now

``ApiError`` subclasses become ``{"error": {"code": ..., "message": ...}}`` responses.
"""

from __future__ import annotations


class PresenceError(Exception):
    """Base class of every exception Presence raises on purpose."""


class ConfigError(PresenceError):
    """A configuration value cannot be used.

    Attributes:
        variable: the environment variable at fault.
        reason: what is wrong with it.
    """

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


class ApiError(PresenceError):
    """A request that is answered with an error response.

    Attributes:
        status: the HTTP status code.
        code: a stable, machine-readable error code.
        message: a sentence for humans naming the problem.
    """

    status = 400
    code = "bad_request"
    #: Seconds for a ``Retry-After`` header, for errors that pass.
    retry_after: int | None = None

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    """The request is malformed, too large or fails validation."""


class Unauthorized(ApiError):
    """The request carries no valid identity."""

    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    """The request's origin is not allowed."""

    status = 403
    code = "forbidden"


class NotFound(ApiError):
    """No session with that id exists for this user (whether or not another user has one)."""

    status = 404
    code = "session_not_found"


class TooManySessions(ApiError):
    """The user already holds the maximum number of sessions."""

    status = 429
    code = "too_many_sessions"


class StoreFull(ApiError):
    """The in-memory fallback is at its size cap while Redis is unavailable."""

    status = 503
    code = "store_full"
    retry_after = 5


class StoreBusy(ApiError):
    """The store cannot answer this request now, though nothing is known to be lost: a
    Redis call outlived its bound while Redis itself answers (this process is busy), or
    Redis is away and the fallback cannot tell whether the session exists."""

    status = 503
    code = "store_unavailable"
    retry_after = 1


class StoreMisconfigured(ApiError):
    """Redis answers but refuses this service: a password it does not take, an ACL
    without a permission the service needs, a TLS certificate it cannot trust. Not an
    outage, so nothing is served from memory: a configuration error found at run time
    (at start-up the same causes are a :class:`ConfigError` naming ``REDIS_URL``).

    The message is the same for every cause; the cause goes to the log and ``/readyz``,
    never to clients.
    """

    status = 503
    code = "store_misconfigured"
    retry_after = 5

    def __init__(
        self,
        message: str = "the session store refuses this server (a configuration error); "
        "try again later",
    ) -> None:
        super().__init__(message)


class StoreUnavailable(PresenceError):
    """The backing store could not be reached within its timeout."""
