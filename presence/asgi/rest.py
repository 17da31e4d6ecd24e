"""The REST endpoints under ``/api/v1/chat``.

Every handler resolves the caller's identity first; sessions are always looked up as
(user, id), so another user's session is indistinguishable from a missing one.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from ..auth import Identity, cookie_token, first_headers, header
from ..exceptions import (
    Forbidden,
    InvalidBody,
    MalformedJSON,
    NotFound,
    NotInRoom,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from ..sessions import JSON, STATES, is_session_id
from ..stores.base import UNSET

if TYPE_CHECKING:
    from .services import Services

CLEANUP_TYPES = ("all", "inactive", "specific")
# Ids named in a cleanup are strings of at most this many characters; longer ones are
# refused, well-formed ones the caller does not hold are ignored.
MAX_CLEANUP_ID_LENGTH = 64
_JSON_TYPES = {"application/json", "text/plain", ""}
_STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}

_HEARTBEAT_STATES = tuple(sorted(STATES - {"disconnected"}))
_CREATE_FIELDS = frozenset({"data"})
_HEARTBEAT_FIELDS = frozenset({"data", "state"})
_CLEANUP_FIELDS = frozenset({"type", "session_ids", "session_id"})
_JOIN_FIELDS = frozenset({"meta"})

Handler = Callable[[Request], Awaitable[Response]]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def identify(
    request: Request,
    headers: Mapping[bytes, bytes] | None = None,
    services: Services | None = None,
    *,
    mint: bool = False,
) -> Identity:
    """The caller's identity, checked for origin when a browser sent it by itself.

    Args:
        headers: the request's :func:`~presence.auth.first_headers`, when the caller
            has them already; each header is read once per request.
        services: the app's, when the caller has them already.
        mint: in development mode, give a caller without identity a new anonymous one
            (its cookie is set on the response by :func:`respond`).

    Raises:
        Unauthorized: no valid identity.
        Forbidden: a cookie-authenticated state-changing request from a foreign origin.
    """
    scope = request.scope
    if headers is None:
        headers = first_headers(scope["headers"])
    if services is None:
        services = _services(request)
    authenticator = services.authenticator
    # The cookies are parsed only when no bearer token came.
    identity = authenticator.identify(
        header(headers, b"authorization"),
        functools.partial(cookie_token, scope["headers"]),
    )
    if identity is None and mint and authenticator.dev_mode:
        identity, token = authenticator.mint_anonymous(client_address(scope))
        request.state.new_token = token
    if identity is None:
        raise Unauthorized("a valid bearer token or identity cookie is required")
    if (
        identity.ambient
        and request.method in _STATE_CHANGING
        and not services.origins.allows_http(
            header(headers, b"origin"),
            header(headers, b"sec-fetch-site"),
            # What request.url.scheme answers, without building the URL.
            scheme=scope.get("scheme", "http"),
            host=header(headers, b"host"),
        )
    ):
        raise Forbidden("origin not allowed for a cookie-authenticated request")
    return identity


def client_address(scope: Scope) -> str:
    """The client's address as the server saw it (from X-Forwarded-For behind a
    trusted proxy, as uvicorn is told)."""
    client = scope.get("client")
    return str(client[0]) if client else "-"


def respond(request: Request, response: Response) -> Response:
    """Adds the development-mode identity cookie if this request minted one."""
    token = getattr(request.state, "new_token", None)
    if token is not None:
        services = _services(request)
        secure = services.settings.cookie_secure
        if secure is None:
            secure = request.url.scheme == "https"
        response.headers.append("set-cookie", services.authenticator.cookie(token, secure=secure))
    return response


async def read_json(
    request: Request,
    headers: Mapping[bytes, bytes] | None = None,
    services: Services | None = None,
) -> dict[str, JSON]:
    """Reads a JSON object body of at most ``max_body_bytes``; an empty body is ``{}``.

    ``text/plain`` is accepted because ``navigator.sendBeacon`` sends strings that way
    (and it keeps a cross-origin beacon a simple request, without a preflight).

    Args:
        headers: the request's :func:`~presence.auth.first_headers`, if at hand.
        services: the app's, if at hand.

    Raises:
        PayloadTooLarge: over the limit.
        UnsupportedMediaType: neither JSON nor text.
        MalformedJSON: not JSON, or NaN, Infinity, unpaired surrogates, nesting too deep.
        InvalidBody: JSON, but not an object.
    """
    if headers is None:
        headers = first_headers(request.scope["headers"])
    if services is None:
        services = _services(request)
    limit = services.settings.max_body_bytes
    content_type = header(headers, b"content-type") or ""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type not in _JSON_TYPES:
        raise UnsupportedMediaType(
            f"unsupported content type {media_type!r}; send application/json or text/plain"
        )
    declared = header(headers, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    if not body.strip():
        return {}
    try:
        value = parse_json(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedJSON(f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidBody("the body must be a JSON object")
    return value


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds {limit} bytes")


class _Unsure(Exception):
    """The quick parse met a value that only the full check can judge."""


def _unsure_constant(name: str) -> float:
    raise _Unsure(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise _Unsure(text)
    return value


_QUICK_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_unsure_constant)
# Bodies with at most this many "[" and "{" are nested at most this deep: far from
# the recursion limit, in the parser here and in every encoder the value meets later.
_QUICK_MAX_OPENINGS = 64


def parse_json(body: bytes | bytearray) -> JSON:
    """Parses a request body, refusing JSON that no response could carry back.

    Python's parser takes NaN, Infinity, numbers too large for a float (which become
    infinity) and unpaired surrogates (``"\\ud800"``), none of which a response can
    encode, and nesting too deep for the parser raises RecursionError, not ValueError.
    The refusal is the encoder's own: the value is encoded again, as a response would.

    That costs as much again as the parse, so most bodies skip it. Without a backslash
    or a byte beyond ASCII, no string can hold a surrogate (an escape needs a
    backslash, a raw one non-ASCII bytes, in UTF-8, -16 and -32 alike); with few
    brackets, nothing is nested deep; NaN, Infinity and overflowing numbers are caught
    by the parser's hooks, which send such a body down the full path. So the result,
    and every error and its message, are those of the full path.

    Raises:
        ValueError: malformed or unsendable JSON.
        RecursionError: nested too deep.
    """
    if (
        body.isascii()
        and b"\\" not in body
        and body.count(b"[") + body.count(b"{") <= _QUICK_MAX_OPENINGS
    ):
        try:
            # What json.loads does with bytes, with hooks on the decoder.
            return _QUICK_DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
        except _Unsure:
            pass
    value = json.loads(body)
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    return value


class _JSONResponse(JSONResponse):
    """Starlette's JSONResponse, byte for byte, from one encoder made once rather than
    one made by ``json.dumps`` for every response (its options are not the defaults)."""

    def render(self, content: Any) -> bytes:
        return _ENCODER.encode(content).encode("utf-8")


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def _invalid(message: str) -> InvalidBody:
    return InvalidBody(message)


def _check_fields(body: dict[str, JSON], allowed: frozenset[str]) -> None:
    if body.keys() <= allowed:
        return
    unknown = sorted(body.keys() - allowed)
    raise _invalid(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


async def create_session(request: Request) -> Response:
    services = _services(request)
    headers = first_headers(request.scope["headers"])
    identity = identify(request, headers, services, mint=True)
    body = await read_json(request, headers, services)
    _check_fields(body, _CREATE_FIELDS)
    session = await services.sessions.create(identity.user, body.get("data", UNSET))
    response = _JSONResponse(session.to_json(services.settings.heartbeat_interval), status_code=201)
    response.headers["location"] = f"{request.url.path.rstrip('/')}/{session.id}"
    return respond(request, response)


async def list_sessions(request: Request) -> Response:
    identity = identify(request)
    services = _services(request)
    interval = services.settings.heartbeat_interval
    sessions = await services.sessions.list_sessions(identity.user)
    return _JSONResponse({"sessions": [s.to_json(interval) for s in sessions]})


async def get_session(request: Request) -> Response:
    identity = identify(request)
    services = _services(request)
    session = await services.sessions.get(identity.user, request.path_params["session_id"])
    return _JSONResponse(session.to_json(services.settings.heartbeat_interval))


async def delete_session(request: Request) -> Response:
    identity = identify(request)
    await _services(request).sessions.delete(identity.user, request.path_params["session_id"])
    return Response(status_code=204)


async def heartbeat(request: Request) -> Response:
    services = _services(request)
    headers = first_headers(request.scope["headers"])
    identity = identify(request, headers, services)
    session_id: str = request.path_params["session_id"]
    if not is_session_id(session_id):  # before the body: nothing of it is read then
        raise NotFound("no such session")
    body = await read_json(request, headers, services)
    _check_fields(body, _HEARTBEAT_FIELDS)
    state = body.get("state", "active")
    # A tuple, not a set: `in` on a set hashes, and a list or object sent as the state
    # is unhashable (TypeError, a 500).
    if state not in _HEARTBEAT_STATES:
        raise _invalid('state must be "active" or "away"')
    session = await services.sessions.heartbeat(
        identity.user, session_id, state=state, data=body.get("data", UNSET)
    )
    await services.rooms.rest_heartbeat(session)
    return _JSONResponse(session.to_json(services.settings.heartbeat_interval))


async def cleanup(request: Request) -> Response:
    services = _services(request)
    headers = first_headers(request.scope["headers"])
    identity = identify(request, headers, services)
    body = await read_json(request, headers, services)
    _check_fields(body, _CLEANUP_FIELDS)
    kind = body.get("type")
    if kind not in CLEANUP_TYPES:
        raise _invalid(f"type must be one of {', '.join(CLEANUP_TYPES)}; got {kind!r}")
    ids: Any = body.get("session_ids")
    if kind == "specific":
        if not isinstance(ids, list) or not ids:
            raise _invalid("session_ids must be a non-empty list for type specific")
        if not all(isinstance(i, str) and len(i) <= MAX_CLEANUP_ID_LENGTH for i in ids):
            raise _invalid(
                f"session_ids must be strings of at most {MAX_CLEANUP_ID_LENGTH} characters"
            )
    elif ids not in (None, []):
        raise _invalid(f"session_ids is only for type specific, not {kind}")
    # The page of this session is unloading (the beacon on pagehide says which): its
    # rooms are left, announced after the grace unless the page comes back.
    unloading = body.get("session_id")
    if "session_id" in body and (kind != "inactive" or not isinstance(unloading, str)):
        raise _invalid("session_id names the unloading session, a string, for type inactive only")
    deleted = await services.sessions.cleanup(identity.user, kind, ids or ())
    if unloading is not None and is_session_id(unloading) and unloading not in deleted:
        await services.rooms.unloading(identity.user, unloading)
    return _JSONResponse({"deleted": len(deleted), "session_ids": deleted})


async def join_room(request: Request) -> Response:
    services = _services(request)
    headers = first_headers(request.scope["headers"])
    identity = identify(request, headers, services)
    rooms = services.rooms
    room = rooms.check_room(identity, request.path_params["room"])
    body = await read_json(request, headers, services)
    _check_fields(body, _JOIN_FIELDS)
    session = await services.sessions.get(identity.user, request.path_params["session_id"])
    result = await rooms.rest_join(identity, session, room, body.get("meta"))
    return _JSONResponse({"room": room, "result": result})


async def leave_room(request: Request) -> Response:
    services = _services(request)
    identity = identify(request)
    room = services.rooms.check_room(identity, request.path_params["room"])
    session = await services.sessions.get(identity.user, request.path_params["session_id"])
    if not await services.rooms.rest_leave(identity, session.id, room):
        raise NotInRoom(f"this session is not in the room {room!r}")
    return Response(status_code=204)


async def room_members(request: Request) -> Response:
    services = _services(request)
    identity = identify(request)
    room = services.rooms.check_room(identity, request.path_params["room"])
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and len(cursor) > 256:
        raise _invalid("cursor is not one this server gave")
    page = await services.rooms.page(room, cursor)
    return _JSONResponse(
        {
            "room": page.room,
            "seq": page.seq,
            "count": page.count,
            "members": [m.to_json() for m in page.members],
            "next": page.next,
            **({"partial": True} if page.partial else {}),
        }
    )


async def list_rooms(request: Request) -> Response:
    services = _services(request)
    identity = identify(request)
    rooms = await services.rooms.list_rooms(identity)
    return _JSONResponse({"rooms": [{"room": room, "count": count} for room, count in rooms]})


async def user_presence(request: Request) -> Response:
    services = _services(request)
    identity = identify(request)
    user: str = request.path_params["user"]
    if user != identity.user:
        raise Forbidden("a user's presence is theirs to read")
    return _JSONResponse((await services.rooms.user(user)).to_json())


def routes(prefix: str) -> list[BaseRoute]:
    """The API's HTTP routes under ``prefix`` (``/api/v1/chat``), each with its full path.

    They stand beside the app's other routes rather than under a ``Mount``: a Mount
    matches every request twice (its prefix, then its routes) and builds a child scope
    for it, about a twentieth of a heartbeat's time. The socket,
    ``/sessions/{session_id}/ws``, is routed by the app itself (see
    :func:`presence.app.create_app`). The heartbeat comes first: it is the route most
    requests take, and no other route matches its paths.
    """
    return [
        _route(f"{prefix}/sessions/{{session_id}}/heartbeat", post=heartbeat),
        _route(f"{prefix}/sessions", get=list_sessions, post=create_session),
        _route(f"{prefix}/sessions/cleanup", post=cleanup),
        _route(f"{prefix}/sessions/{{session_id}}", get=get_session, delete=delete_session),
        _route(
            f"{prefix}/sessions/{{session_id}}/rooms/{{room}}", post=join_room, delete=leave_room
        ),
    ]


def presence_routes(prefix: str) -> list[BaseRoute]:
    """The presence API's routes under ``prefix`` (``/api/v1/presence``)."""
    return [
        _route(f"{prefix}/rooms", get=list_rooms),
        _route(f"{prefix}/rooms/{{room}}", get=room_members),
        _route(f"{prefix}/users/{{user}}", get=user_presence),
    ]


def _route(path: str, **handlers: Handler) -> Route:
    # One Route per path, its methods dispatched by an HTTPEndpoint, which answers any
    # other method with 405 and an Allow header naming all of the path's methods. With a
    # Route per method, Allow named only the first Route's method, and GET
    # /sessions/cleanup fell through to /sessions/{session_id} as a session "cleanup".
    methods = {method: staticmethod(handler) for method, handler in handlers.items()}
    name = "_".join(handler.__name__ for handler in handlers.values())
    return Route(path, type(name, (_Endpoint,), methods), name=name)


class _Endpoint(HTTPEndpoint):
    """An HTTPEndpoint that works out once per class what Starlette's works out on every
    request: the methods allowed (Starlette's own reckoning, so HEAD goes with GET and
    the 405's Allow header is the same) and each one's handler, all coroutine
    functions."""

    _allowed: ClassVar[list[str]] = []
    _handlers: ClassVar[dict[str, Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        probe = HTTPEndpoint.__new__(cls)
        HTTPEndpoint.__init__(probe, {"type": "http"}, _unused_receive, _unused_send)
        cls._allowed = probe._allowed_methods
        head = "head" if hasattr(cls, "head") else "get"
        cls._handlers = {
            method: getattr(cls, head if method == "HEAD" else method.lower())
            for method in cls._allowed
        }

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.scope = scope
        self.receive = receive
        self.send = send
        self._allowed_methods = self._allowed

    async def dispatch(self) -> None:
        request = Request(self.scope, receive=self.receive, send=self.send)
        handler = self._handlers.get(request.method)
        if handler is None:
            response = await self.method_not_allowed(request)
        else:
            response = await handler(request)
        await response(self.scope, self.receive, self.send)


async def _unused_receive() -> Message:  # pragma: no cover - for the probe alone
    raise RuntimeError("not a request")


async def _unused_send(message: Message) -> None:  # pragma: no cover - for the probe alone
    raise RuntimeError("not a request")
