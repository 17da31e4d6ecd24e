"""What the edges answer for each exception: one table, for REST, the socket handshake
and in-band socket errors alike.

Every error response is ``{"error": {"code": ..., "message": ...}}`` with its status
(and ``Retry-After`` for errors that pass); a refused handshake is that same response
before the socket is accepted; an in-band error is ``{"type": "error", "code": ...,
"message": ...}``, and when the error ends the socket, its close code comes from here
too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.status import (
    WS_1003_UNSUPPORTED_DATA,
    WS_1007_INVALID_FRAME_PAYLOAD_DATA,
    WS_1008_POLICY_VIOLATION,
    WS_1009_MESSAGE_TOO_BIG,
    WS_1011_INTERNAL_ERROR,
    WS_1013_TRY_AGAIN_LATER,
)

from .. import exceptions as exc
from . import protocol


@dataclass(frozen=True, slots=True)
class Answer:
    """How an exception is answered at the edge.

    Attributes:
        status: the HTTP status of a response or a refused handshake.
        code: the stable, machine-readable error code.
        close_code: the WebSocket close code when the error ends a socket.
        retry_after: seconds for ``Retry-After``; None for errors that do not pass.
        message: a fixed text for humans, where the exception's own would say more
            than a client should hear (the store's internals).
    """

    status: int
    code: str
    close_code: int = WS_1008_POLICY_VIOLATION
    retry_after: int | None = None
    message: str | None = None


_TRY_AGAIN = WS_1013_TRY_AGAIN_LATER

#: Looked up by the exception's class and then its bases, so a subclass is answered as
#: its nearest listed ancestor.
TABLE: dict[type[exc.PresenceError], Answer] = {
    exc.MalformedJSON: Answer(400, "malformed_json", WS_1007_INVALID_FRAME_PAYLOAD_DATA),
    exc.PayloadTooLarge: Answer(413, "payload_too_large", WS_1009_MESSAGE_TOO_BIG),
    exc.UnsupportedMediaType: Answer(415, "unsupported_media_type", WS_1003_UNSUPPORTED_DATA),
    exc.InvalidBody: Answer(422, "invalid_body"),
    exc.InvalidMessage: Answer(422, "bad_message"),
    exc.UnknownMessageType: Answer(422, "unknown_type"),
    exc.InvalidRoom: Answer(422, "invalid_room"),
    exc.InvalidRequest: Answer(400, "bad_request"),
    exc.Unauthorized: Answer(401, "unauthorized"),
    exc.RoomForbidden: Answer(403, "room_forbidden"),
    exc.Forbidden: Answer(403, "forbidden"),
    exc.AdminDisabled: Answer(404, "admin_disabled"),
    exc.DeadLetterNotFound: Answer(404, "dead_letter_not_found"),
    exc.NotFound: Answer(404, "session_not_found"),
    exc.WebhooksNotConfigured: Answer(409, "webhooks_not_configured"),
    exc.NotInRoom: Answer(404, "not_in_room"),
    exc.TooManySessions: Answer(429, "too_many_sessions"),
    exc.LimitExceeded: Answer(429, "limit_exceeded"),
    exc.TooManySockets: Answer(429, "too_many_sockets", retry_after=5),
    exc.TooManyRooms: Answer(429, "too_many_rooms"),
    exc.RateLimited: Answer(429, "rate_limited", retry_after=1),
    exc.StoreFull: Answer(503, "store_full", _TRY_AGAIN, retry_after=5),
    exc.StoreMisconfigured: Answer(503, "store_misconfigured", _TRY_AGAIN, retry_after=5),
    exc.StoreBusy: Answer(503, "store_unavailable", _TRY_AGAIN, retry_after=1),
    exc.StoreUnavailable: Answer(
        503, "store_unavailable", _TRY_AGAIN, retry_after=1, message="session store unavailable"
    ),
    exc.StoreError: Answer(503, "store_unavailable", _TRY_AGAIN, retry_after=1),
    exc.PresenceError: Answer(500, "internal_error", WS_1011_INTERNAL_ERROR),
}

# Starlette's own errors (no route, method not allowed) by status.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def answer(error: exc.PresenceError) -> Answer:
    """The table's entry for ``error``: its class's, or its nearest listed base's."""
    for cls in type(error).__mro__:
        found = TABLE.get(cls)
        if found is not None:
            return found
    return TABLE[exc.PresenceError]  # pragma: no cover - PresenceError is in every MRO


def message_of(error: exc.PresenceError) -> str:
    """The sentence a client is told for ``error``."""
    return answer(error).message or error.message


def retry_after(error: exc.PresenceError) -> int | None:
    """Seconds for ``Retry-After``: the error's own wait when it knows one (a rate
    limit), else the table's."""
    seconds = answer(error).retry_after
    own = getattr(error, "retry_after", None)
    if seconds is not None and isinstance(own, int | float):
        seconds = max(1, math.ceil(own))
    return seconds


def response(error: exc.PresenceError) -> JSONResponse:
    """The HTTP response for ``error`` (REST, and a refused handshake)."""
    found = answer(error)
    wait = retry_after(error)
    return JSONResponse(
        {"error": {"code": found.code, "message": message_of(error)}},
        status_code=found.status,
        headers=None if wait is None else {"retry-after": str(wait)},
    )


def in_band(error: exc.PresenceError, room: str | None = None, session: str | None = None) -> str:
    """The ``error`` message sent over an open socket for ``error`` (about ``room`` and
    ``session``, when the message named them)."""
    return protocol.error(answer(error).code, message_of(error), room, session)


def close_code(error: exc.PresenceError) -> int:
    """The close code of a socket that ``error`` ends."""
    return answer(error).close_code


async def handle_presence_error(request: Request, error: Exception) -> Response:
    """Starlette's exception handler for every :class:`PresenceError`."""
    assert isinstance(error, exc.PresenceError)
    return response(error)


async def handle_http_exception(request: Request, error: Exception) -> Response:
    """Starlette's exception handler for its own errors (no route, wrong method), in
    the same JSON shape."""
    assert isinstance(error, HTTPException)
    code = _HTTP_CODES.get(error.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": error.detail}},
        status_code=error.status_code,
        headers=error.headers,
    )
