"""Exceptions raised by Presence: what went wrong, in the service's own terms.

None of them knows about HTTP or WebSocket close codes: :mod:`presence.errors` maps
each one, in one table, to what the edges answer (a status, a code, ``Retry-After``,
a close code), for REST, the socket handshake and in-band errors alike.

The tree::

    PresenceError
    ├── ConfigError               a setting has a bad value (names the variable)
    ├── InvalidRequest            the request itself is wrong
    │   ├── MalformedJSON         not JSON, or JSON that no answer could carry
    │   ├── PayloadTooLarge       a body over its limit
    │   ├── UnsupportedMediaType  a body that is not JSON or text
    │   ├── InvalidBody           well-formed, but a field is missing, unknown or bad
    │   ├── InvalidMessage        a socket message that is not an object or has a bad field
    │   ├── UnknownMessageType    a socket message of a type the server does not know
    │   └── InvalidRoom           not a room name
    ├── Unauthorized              no valid identity
    ├── Forbidden                 origin or CSRF check failed
    │   └── RoomForbidden         the token's rooms claim does not allow the room
    ├── NotFound                  no such session for this user
    │   ├── AdminDisabled         the admin page is off (no PRESENCE_ADMIN_TOKEN)
    │   └── DeadLetterNotFound    no such dead letter to replay
    ├── NotInRoom                 the session is not in that room
    ├── WebhooksNotConfigured     a webhook action without webhooks configured
    ├── LimitExceeded             a bound on what one client may hold or do
    │   ├── TooManySessions       the user's live sessions
    │   ├── TooManySockets        the user's open sockets
    │   ├── TooManyRooms          the rooms one session is in or watches
    │   └── RateLimited           too many requests or messages in a while
    └── StoreError                the store cannot do it now
        ├── StoreUnavailable      Redis did not answer in time
        ├── StoreBusy             nothing is known lost, but no answer now: try again
        ├── StoreFull             the in-memory fallback is at its cap
        └── StoreMisconfigured    Redis answers but refuses this service
"""

from __future__ import annotations


class PresenceError(Exception):
    """Base class of every exception Presence raises on purpose.

    Attributes:
        message: a sentence for humans naming the problem.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


class InvalidRequest(PresenceError):
    """The request (or socket message) is malformed, too large or fails validation."""


class MalformedJSON(InvalidRequest):
    """The body or message is not JSON, or is JSON that no answer could carry back
    (NaN, Infinity, unpaired surrogates, nesting too deep)."""


class PayloadTooLarge(InvalidRequest):
    """The body is larger than its limit."""


class UnsupportedMediaType(InvalidRequest):
    """The body's media type is neither JSON nor text."""


class InvalidBody(InvalidRequest):
    """The body is JSON, but not a valid request: a field missing, unknown or bad."""


class InvalidMessage(InvalidRequest):
    """A socket message that is not a JSON object, or has a bad field."""


class UnknownMessageType(InvalidRequest):
    """A socket message of a type the server does not know."""


class InvalidRoom(InvalidRequest):
    """Not a room name (1-128 characters of ``[A-Za-z0-9_.:@-]``)."""


class Unauthorized(PresenceError):
    """The request carries no valid identity."""


class Forbidden(PresenceError):
    """The request's origin is not allowed."""


class RoomForbidden(Forbidden):
    """The token's ``rooms`` claim does not allow this room."""


class NotFound(PresenceError):
    """No session with that id exists for this user (whether or not another user has one)."""


class NotInRoom(PresenceError):
    """The session is not in that room (to update or leave)."""


class LimitExceeded(PresenceError):
    """A bound on what one client may hold or do is reached."""


class TooManySessions(LimitExceeded):
    """The user already holds the maximum number of live sessions, every one held open."""


class TooManySockets(LimitExceeded):
    """The user already holds the maximum number of open sockets on this process."""


class TooManyRooms(LimitExceeded):
    """The session is in (or watches) its maximum of rooms."""


class RateLimited(LimitExceeded):
    """Too many requests or messages in a short while.

    Attributes:
        retry_after: seconds until the next one would be allowed.
    """

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(PresenceError):
    """The store cannot do this now."""


class StoreUnavailable(StoreError):
    """The backing store could not be reached within its timeout."""


class StoreBusy(StoreError):
    """The store cannot answer this request now, though nothing is known to be lost: a
    Redis call outlived its bound while Redis itself answers (this process is busy), or
    Redis is away and the fallback cannot tell whether the session exists."""


class StoreFull(StoreError):
    """The in-memory fallback is at its size cap while Redis is unavailable."""


class StoreMisconfigured(StoreError):
    """Redis answers but refuses this service: a password it does not take, an ACL
    without a permission the service needs, a TLS certificate it cannot trust. Not an
    outage, so nothing is served from memory: a configuration error found at run time
    (at start-up the same causes are a :class:`ConfigError` naming ``REDIS_URL``).

    The message is the same for every cause; the cause goes to the log and ``/readyz``,
    never to clients.
    """

    def __init__(
        self,
        message: str = "the session store refuses this server (a configuration error); "
        "try again later",
    ) -> None:
        super().__init__(message)


class AdminDisabled(NotFound):
    """The admin page and socket are off: ``PRESENCE_ADMIN_TOKEN`` is not set."""


class DeadLetterNotFound(NotFound):
    """No dead letter with that id (replayed already, or never one)."""


class WebhooksNotConfigured(PresenceError):
    """A webhook action (a replay) while no webhook is configured."""
