"""The REST endpoints under ``/api/v1/chat``.

Every handler resolves the caller's identity first; sessions are always looked up as
(user, id), so another user's session is indistinguishable from a missing one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from .auth import Identity
from .exceptions import BadRequest, Forbidden, NotFound, Unauthorized
from .sessions import JSON, STATES, is_session_id
from .sockets import session_socket
from .stores.base import UNSET

if TYPE_CHECKING:
    from .app import Services

CLEANUP_TYPES = ("all", "inactive", "specific")
# Ids named in a cleanup are strings of at most this many characters; longer ones are
# refused, well-formed ones the caller does not hold are ignored.
MAX_CLEANUP_ID_LENGTH = 64
_JSON_TYPES = {"application/json", "text/plain", ""}
_STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}

_HEARTBEAT_STATES = tuple(sorted(STATES - {"disconnected"}))

Handler = Callable[[Request], Awaitable[Response]]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def identify(request: Request, *, mint: bool = False) -> Identity:
    """The caller's identity, checked for origin when a browser sent it by itself.

    Args:
        mint: in development mode, give a caller without identity a new anonymous one
            (its cookie is set on the response by :func:`respond`).

    Raises:
        Unauthorized: no valid identity.
        Forbidden: a cookie-authenticated state-changing request from a foreign origin.
    """
    services = _services(request)
    identity = services.authenticator.identify(request.headers, request.cookies)
    if identity is None and mint and services.authenticator.dev_mode:
        identity, token = services.authenticator.mint_anonymous()
        request.state.new_token = token
    if identity is None:
        raise Unauthorized("a valid bearer token or identity cookie is required")
    if (
        identity.ambient
        and request.method in _STATE_CHANGING
        and not services.origins.allows_http(request.headers, scheme=request.url.scheme)
    ):
        raise Forbidden("origin not allowed for a cookie-authenticated request")
    return identity


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


async def read_json(request: Request) -> dict[str, JSON]:
    """Reads a JSON object body of at most ``max_body_bytes``; an empty body is ``{}``.

    ``text/plain`` is accepted because ``navigator.sendBeacon`` sends strings that way
    (and it keeps a cross-origin beacon a simple request, without a preflight).

    Raises:
        BadRequest: 413 too large, 415 wrong media type, 400 malformed JSON (also
            NaN, Infinity, unpaired surrogates, nesting too deep), 422 not an object.
    """
    limit = _services(request).settings.max_body_bytes
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in _JSON_TYPES:
        raise BadRequest(
            f"unsupported content type {media_type!r}; send application/json or text/plain",
            code="unsupported_media_type",
            status=415,
        )
    declared = request.headers.get("content-length")
    too_large = BadRequest(
        f"request body exceeds {limit} bytes", code="payload_too_large", status=413
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
        # What is kept must be sendable back: Python's parser takes NaN, Infinity and
        # unpaired surrogates ("\ud800"), which no response can encode, and nesting too
        # deep for the parser raises RecursionError, not ValueError.
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON: {exc}", code="malformed_json") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_body", status=422)
    return value


def _invalid(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_body", status=422)


def _check_fields(body: dict[str, JSON], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _invalid(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def _data(request: Request, body: dict[str, JSON]) -> JSON:
    data = body.get("data", UNSET)
    if data is UNSET:
        return UNSET
    limit = _services(request).settings.max_data_bytes
    size = len(json.dumps(data, separators=(",", ":")).encode())
    if size > limit:
        raise _invalid(f"data is {size} bytes once encoded; the limit is {limit}")
    return data


def _session_id(request: Request) -> str:
    session_id: str = request.path_params["session_id"]
    if not is_session_id(session_id):
        raise NotFound("no such session")
    return session_id


async def create_session(request: Request) -> Response:
    identity = identify(request, mint=True)
    body = await read_json(request)
    _check_fields(body, {"data"})
    data = _data(request, body)
    services = _services(request)
    session = await services.store.create(
        identity.user, services.new_session_id(), data=None if data is UNSET else data
    )
    response = JSONResponse(session.to_json(), status_code=201)
    response.headers["location"] = f"{request.url.path.rstrip('/')}/{session.id}"
    return respond(request, response)


async def list_sessions(request: Request) -> Response:
    identity = identify(request)
    sessions = await _services(request).store.list_sessions(identity.user)
    return JSONResponse({"sessions": [s.to_json() for s in sessions]})


async def get_session(request: Request) -> Response:
    identity = identify(request)
    session = await _services(request).store.get(identity.user, _session_id(request))
    if session is None:
        raise NotFound("no such session")
    return JSONResponse(session.to_json())


async def delete_session(request: Request) -> Response:
    identity = identify(request)
    deleted = await _services(request).store.delete(
        identity.user, [_session_id(request)], "deleted"
    )
    if not deleted:
        raise NotFound("no such session")
    return Response(status_code=204)


async def heartbeat(request: Request) -> Response:
    identity = identify(request)
    session_id = _session_id(request)
    body = await read_json(request)
    _check_fields(body, {"data", "state"})
    state = body.get("state", "active")
    # A tuple, not a set: `in` on a set hashes, and a list or object sent as the state
    # is unhashable (TypeError, a 500).
    if state not in _HEARTBEAT_STATES:
        raise _invalid('state must be "active" or "away"')
    session = await _services(request).store.touch(
        identity.user,
        session_id,
        transport="http",
        state=state,
        data=_data(request, body),
    )
    if session is None:
        raise NotFound("no such session; create a new one")
    return JSONResponse(session.to_json())


async def cleanup(request: Request) -> Response:
    identity = identify(request)
    body = await read_json(request)
    _check_fields(body, {"type", "session_ids"})
    kind = body.get("type")
    if kind not in CLEANUP_TYPES:
        raise _invalid(f"type must be one of {', '.join(CLEANUP_TYPES)}; got {kind!r}")
    services = _services(request)
    ids: Any = body.get("session_ids")
    store = services.store
    if kind == "specific":
        limit = services.settings.max_cleanup_ids
        if not isinstance(ids, list) or not ids:
            raise _invalid("session_ids must be a non-empty list for type specific")
        if len(ids) > limit:
            raise _invalid(f"session_ids has {len(ids)} ids; at most {limit} are allowed")
        if not all(isinstance(i, str) and len(i) <= MAX_CLEANUP_ID_LENGTH for i in ids):
            raise _invalid(
                f"session_ids must be strings of at most {MAX_CLEANUP_ID_LENGTH} characters"
            )
        valid = [i for i in ids if is_session_id(i)]
        deleted = await store.delete(identity.user, valid, "cleanup")
    else:
        if ids not in (None, []):
            raise _invalid(f"session_ids is only for type specific, not {kind}")
        if kind == "all":
            deleted = await store.delete_all(identity.user, "cleanup")
        else:
            deleted = await store.delete_inactive(
                identity.user, services.settings.inactive_threshold, "cleanup"
            )
    return JSONResponse({"deleted": len(deleted), "session_ids": deleted})


def routes() -> list[BaseRoute]:
    """The API's routes, to mount under ``/api/v1/chat``."""
    return [
        _route("/sessions", get=list_sessions, post=create_session),
        _route("/sessions/cleanup", post=cleanup),
        _route("/sessions/{session_id}", get=get_session, delete=delete_session),
        _route("/sessions/{session_id}/heartbeat", post=heartbeat),
        WebSocketRoute("/sessions/{session_id}/ws", session_socket),
    ]


def _route(path: str, **handlers: Handler) -> Route:
    # One Route per path, its methods dispatched by an HTTPEndpoint, which answers any
    # other method with 405 and an Allow header naming all of the path's methods. With a
    # Route per method, Allow named only the first Route's method, and GET
    # /sessions/cleanup fell through to /sessions/{session_id} as a session "cleanup".
    methods = {method: staticmethod(handler) for method, handler in handlers.items()}
    name = "_".join(handler.__name__ for handler in handlers.values())
    return Route(path, type(name, (HTTPEndpoint,), methods), name=name)
