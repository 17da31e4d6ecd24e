"""The API described as an OpenAPI 3.1 document, served at ``/openapi.json``.

The document is data built from the running :class:`~presence.settings.Settings`, so
the limits it states (body size, ids per cleanup, data size, sessions per user) are the
ones the server enforces, and the security it declares follows the mode: in development
mode creating a session needs no credential because the server mints one.

The WebSocket endpoint is listed too, as the ``GET`` that opens it: OpenAPI has no
words for the frames that follow, so its description names the protocol
(:mod:`presence.protocol`).
"""

from __future__ import annotations

from typing import Any

from ..auth import COOKIE_NAME, QUERY_PARAM
from ..sessions import SESSION_ID_PATTERN, STATES, TRANSPORTS
from ..settings import Settings
from ..wsproto import MAX_FRAGMENTS
from .rest import MAX_CLEANUP_ID_LENGTH

OpenAPI = dict[str, Any]

_BASE = "/api/v1/chat"
_PRESENCE = "/api/v1/presence"
# Every error code the server answers with, by the status it comes with.
_ERRORS: dict[int, tuple[str, tuple[str, ...]]] = {
    400: ("The body is not valid JSON.", ("malformed_json",)),
    401: ("No valid bearer token or identity cookie.", ("unauthorized",)),
    403: (
        "A cookie-authenticated request from an origin that is not allowed (CSRF), a room "
        "the token's `rooms` claim does not allow, or another user's presence.",
        ("forbidden", "room_forbidden"),
    ),
    404: (
        "No such session for this caller, or the session is not in that room.",
        ("session_not_found", "not_found", "not_in_room", "admin_disabled"),
    ),
    413: ("The body exceeds the size limit.", ("payload_too_large",)),
    415: (
        "The body is neither application/json nor text/plain.",
        ("unsupported_media_type",),
    ),
    422: (
        "The body is JSON but not a valid request, or the room's name is not one.",
        ("invalid_body", "invalid_room"),
    ),
    429: (
        "The caller holds the maximum number of sessions (each open in a socket), of "
        "rooms for the session, or of sockets; or, in development mode, this address had "
        "its new identities for the minute (Retry-After says when to try again).",
        ("too_many_sessions", "too_many_rooms", "too_many_sockets", "rate_limited"),
    ),
    503: (
        "Redis is unavailable and the in-memory fallback is full or cannot answer, or "
        "Redis refuses this server (a configuration error).",
        ("store_full", "store_unavailable", "store_misconfigured"),
    ),
}


def document(settings: Settings) -> OpenAPI:
    """The OpenAPI 3.1 document for a server running with ``settings``."""
    from .. import __version__  # The package imports the app, which imports this module.

    id_param = {
        "name": "session_id",
        "in": "path",
        "required": True,
        "description": "A session id as the server minted it (128 random bits, base64url).",
        "schema": {"$ref": "#/components/schemas/SessionId"},
    }
    room_param = {
        "name": "room",
        "in": "path",
        "required": True,
        "description": "A room's name.",
        "schema": {"$ref": "#/components/schemas/Room"},
    }
    create_security: list[dict[str, list[str]]] = _security()
    if settings.dev_mode:
        # In development mode the server hands a caller without identity a new one.
        create_security = [*create_security, {}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Presence",
            "version": __version__,
            "summary": "Keeps browser chat sessions alive and knows who is online.",
            "description": (
                "Every session belongs to the caller's user; another user's session "
                "answers exactly like a missing one (404). Requests authenticated by the "
                f"`{COOKIE_NAME}` cookie that change state must come from an allowed "
                "Origin (or carry `Sec-Fetch-Site: same-origin`); bearer tokens need no "
                "origin. Request bodies are JSON objects sent as `application/json` or as "
                "`text/plain` (what `navigator.sendBeacon` sends), of at most "
                f"{settings.max_body_bytes} bytes; an empty body is `{{}}`. A request whose "
                f"line and headers exceed {settings.max_header_bytes} bytes is answered 431 "
                f"and one whose headers take longer than {settings.header_timeout:g} s, 408, "
                "on any path. Rooms (presence): a session joins a room to be present in it; "
                "a member is a user, aggregated over their sessions there, with one status "
                "across tabs and devices. In JWT mode the token's `rooms` claim lists the "
                "rooms the user may join and watch (exact names, or prefixes ending in `*`)"
                + ("; every room is open here." if settings.rooms_open else ".")
            ),
        },
        "paths": {
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is up.",
                    "security": [],
                    "responses": {"200": _json("Always.", "Health")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Which store serves, and what is wrong in words.",
                    "security": [],
                    "responses": {
                        "200": _json(
                            "Ready; or degraded, unless PRESENCE_READYZ_DEGRADED_STATUS is 503.",
                            "Readiness",
                        ),
                        "503": _json(
                            "Degraded, with PRESENCE_READYZ_DEGRADED_STATUS=503.", "Readiness"
                        ),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Every metric family in the Prometheus text format.",
                    "security": [{"metricsToken": []}] if settings.metrics_token else [],
                    "responses": {
                        "200": {
                            "description": "The Prometheus text exposition format 0.0.4.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **(_errors(401) if settings.metrics_token else {}),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            f"{_BASE}/sessions": {
                "post": {
                    "operationId": "createSession",
                    "summary": "Creates a session with a server-minted id.",
                    "security": create_security,
                    "requestBody": _body("CreateSession"),
                    "responses": {
                        "201": {
                            **_json("The new session.", "Session"),
                            "links": _session_links(),
                            "headers": {
                                "Location": {
                                    "description": "The new session's URL.",
                                    "required": True,
                                    "schema": {"type": "string"},
                                }
                            },
                        },
                        **_errors(400, 401, 403, 413, 415, 422, 429, 503),
                    },
                },
                "get": {
                    "operationId": "listSessions",
                    "summary": "The caller's live sessions, most recently seen first.",
                    "security": _security(),
                    "responses": {
                        "200": _json("The caller's sessions.", "SessionList"),
                        **_errors(401),
                    },
                },
            },
            f"{_BASE}/sessions/cleanup": {
                "post": {
                    "operationId": "cleanupSessions",
                    "summary": "Deletes all, inactive or the named sessions of the caller.",
                    "description": (
                        "`inactive` deletes the sessions not seen for "
                        f"{settings.inactive_threshold:g} seconds. Ids the caller does not "
                        "hold are ignored. Every deleted session's sockets are closed with "
                        '`{"type": "ended", "reason": "cleanup"}`, wherever they are held.'
                    ),
                    "security": _security(),
                    "requestBody": _body("Cleanup", required=True),
                    "responses": {
                        "200": _json("What was deleted.", "CleanupResult"),
                        **_errors(400, 401, 403, 413, 415, 422),
                    },
                }
            },
            f"{_BASE}/sessions/{{session_id}}": {
                "parameters": [id_param],
                "get": {
                    "operationId": "getSession",
                    "summary": "One session of the caller.",
                    "security": _security(),
                    "responses": {
                        "200": _json("The session.", "Session"),
                        **_errors(401, 404),
                    },
                },
                "delete": {
                    "operationId": "deleteSession",
                    "summary": "Deletes a session and closes its sockets (reason `deleted`).",
                    "security": _security(),
                    "responses": {
                        "204": {"description": "Deleted."},
                        **_errors(401, 403, 404),
                    },
                },
            },
            f"{_BASE}/sessions/{{session_id}}/heartbeat": {
                "parameters": [id_param],
                "post": {
                    "operationId": "heartbeat",
                    "summary": "Keeps a session alive over HTTP (when no socket is open).",
                    "description": (
                        f"Extends the session by its TTL ({settings.session_ttl:g} s)"
                        + (
                            f", never past its maximum lifetime ({settings.max_lifetime:g} s "
                            "after creation)"
                            if settings.max_lifetime > 0
                            else ""
                        )
                        + ". A session that is gone stays gone: 404, create a new one."
                    ),
                    "security": _security(),
                    "requestBody": _body("Heartbeat"),
                    "responses": {
                        "200": _json("The session as it is now.", "Session"),
                        **_errors(400, 401, 403, 404, 413, 415, 422),
                    },
                },
            },
            f"{_BASE}/sessions/{{session_id}}/rooms/{{room}}": {
                "parameters": [id_param, room_param],
                "post": {
                    "operationId": "joinRoom",
                    "summary": "The session (over REST, no socket) joins a room.",
                    "description": (
                        "Present while its heartbeats come within "
                        f"{2 * settings.heartbeat_interval:g} s (twice HEARTBEAT_INTERVAL); "
                        "once they stop it leaves with reason `timeout`. Joining a room the "
                        "session is in sets its meta. A session may be in at most "
                        f"{settings.max_rooms_per_session} rooms."
                    ),
                    "security": _security(),
                    "requestBody": _body("JoinRoom"),
                    "responses": {
                        "200": _json("Joined, or the meta set.", "JoinResult"),
                        **_errors(400, 401, 403, 404, 413, 415, 422, 429, 503),
                    },
                },
                "delete": {
                    "operationId": "leaveRoom",
                    "summary": "The session leaves a room (announced as `left` after the grace).",
                    "security": _security(),
                    "responses": {
                        "204": {"description": "Left."},
                        **_errors(401, 403, 404, 422, 503),
                    },
                },
            },
            f"{_PRESENCE}/rooms": {
                "get": {
                    "operationId": "listRooms",
                    "summary": "The rooms the caller may watch that have members, and how many.",
                    "description": "Most populous first, at most 100.",
                    "security": _security(),
                    "responses": {
                        "200": _json("The rooms.", "RoomList"),
                        **_errors(401, 503),
                    },
                },
            },
            f"{_PRESENCE}/rooms/{{room}}": {
                "parameters": [room_param],
                "get": {
                    "operationId": "roomMembers",
                    "summary": "A room's members, a page at a time, by user.",
                    "description": (
                        f"At most {settings.room_list_limit} members a page; `next` is the "
                        "cursor of the next page (null on the last). `seq` is the room's, "
                        "as the diffs its watchers get number it."
                    ),
                    "security": _security(),
                    "parameters": [
                        {
                            "name": "cursor",
                            "in": "query",
                            "required": False,
                            "description": "The `next` of the previous page.",
                            "schema": {"type": "string", "maxLength": 256},
                        }
                    ],
                    "responses": {
                        "200": _json("A page of members.", "RoomPage"),
                        **_errors(401, 403, 422, 503),
                    },
                },
            },
            f"{_PRESENCE}/users/{{user}}": {
                "parameters": [
                    {
                        "name": "user",
                        "in": "path",
                        "required": True,
                        "description": "The caller's own user (a token's `sub`).",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                    }
                ],
                "get": {
                    "operationId": "userPresence",
                    "summary": "The caller's presence: status, sessions, last seen, rooms.",
                    "security": _security(),
                    "responses": {
                        "200": _json("The caller's presence.", "UserPresence"),
                        **_errors(401, 403, 503),
                    },
                },
            },
            f"{_BASE}/sessions/{{session_id}}/ws": {
                "parameters": [id_param],
                "get": {
                    "operationId": "openSocket",
                    "summary": "Opens the session's WebSocket.",
                    "description": (
                        "A WebSocket handshake. Identity, Origin and the session are checked "
                        "before it is accepted; a refusal is an HTTP response with the error "
                        "body. Browsers authenticate by the cookie (the Origin must then be "
                        f"allowed) or by the `{QUERY_PARAM}` query parameter. Once open, the "
                        "server pings every "
                        f"{settings.heartbeat_interval:g} s and sends JSON messages with a "
                        "`type`: `snapshot` on connect and after each change, `ended` with a "
                        "`reason` before it closes because the session is gone, `error` for a "
                        "message it cannot use. The client may send "
                        '`{"type": "visibility", "state": "visible" | "hidden"}`. Messages '
                        f"over {settings.ws_max_message_bytes} bytes close the socket with "
                        f"1009, more than {settings.ws_messages_per_second:g} a second "
                        f"(bursts of {settings.ws_message_burst}) with 1008; ping, pong and "
                        "continuation frames count against the same rate, apart from "
                        f"messages (1008), and a message in more than {MAX_FRAGMENTS} frames "
                        "closes with 1009. A client that leaves more than "
                        f"{settings.ws_max_unsent_bytes} bytes unread, or none read for "
                        f"{settings.ping_timeout:g} s while more waits, is dropped. "
                        "Per-message compression is not offered."
                    ),
                    "security": [*_security(), {"queryToken": []}],
                    "responses": {
                        "101": {"description": "Switching protocols: the socket is open."},
                        **_errors(401, 403, 404, 503),
                    },
                },
            },
            **_admin_paths(settings),
        },
        "components": {
            "securitySchemes": {
                **_admin_security(settings),
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "PRESENCE_METRICS_TOKEN, for /metrics only.",
                },
                "cookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": COOKIE_NAME,
                    "description": "The identity cookie (a JWT); writes need an allowed Origin.",
                },
                "queryToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": QUERY_PARAM,
                    "description": "A JWT, for the WebSocket handshake only.",
                },
            },
            "schemas": _schemas(settings),
        },
    }


def _schemas(settings: Settings) -> dict[str, Any]:
    data: dict[str, Any] = {
        "description": (
            "Any JSON value the client wants kept with the session, at most "
            f"{settings.max_data_bytes} bytes once encoded compactly."
        ),
        "x-max-encoded-bytes": settings.max_data_bytes,
    }
    timestamp = {"type": "string", "format": "date-time"}
    no_ids = {
        "description": "Only for type `specific`.",
        "anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}],
    }
    return {
        "SessionId": {"type": "string", "pattern": f"^{SESSION_ID_PATTERN.pattern}$"},
        "Session": {
            "type": "object",
            "required": [
                "id",
                "created_at",
                "last_seen",
                "expires_at",
                "transport",
                "state",
                "data",
                "heartbeat_interval",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"$ref": "#/components/schemas/SessionId"},
                "created_at": timestamp,
                "last_seen": timestamp,
                "expires_at": {
                    **timestamp,
                    "description": "last_seen + TTL, capped by the maximum lifetime.",
                },
                "transport": {"enum": sorted(TRANSPORTS)},
                "state": {"enum": sorted(STATES)},
                "data": data,
                "heartbeat_interval": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": (
                        "The server's HEARTBEAT_INTERVAL in seconds: a client keeping the "
                        "session alive over REST beats at least this often."
                    ),
                },
            },
        },
        "SessionList": {
            "type": "object",
            "required": ["sessions"],
            "additionalProperties": False,
            "properties": {
                "sessions": {
                    "type": "array",
                    "maxItems": settings.max_sessions_per_user,
                    "items": {"$ref": "#/components/schemas/Session"},
                }
            },
        },
        "CreateSession": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"data": data},
        },
        "Heartbeat": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "state": {"enum": sorted(STATES - {"disconnected"}), "default": "active"},
                "data": {**data, "description": data["description"] + " Replaces the old."},
            },
        },
        "Cleanup": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["type", "session_ids"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"const": "specific"},
                        "session_ids": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": settings.max_cleanup_ids,
                            "items": {"type": "string", "maxLength": MAX_CLEANUP_ID_LENGTH},
                        },
                    },
                },
                {
                    "type": "object",
                    "required": ["type"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"const": "all"},
                        "session_ids": no_ids,
                    },
                },
                {
                    "type": "object",
                    "required": ["type"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"const": "inactive"},
                        "session_ids": no_ids,
                        "session_id": {
                            "type": "string",
                            "description": (
                                "The session whose page is unloading (the beacon on "
                                "pagehide): its rooms are left, announced after the grace "
                                "unless it comes back."
                            ),
                        },
                    },
                },
            ]
        },
        "Room": {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,128}$"},
        "Member": {
            "type": "object",
            "required": ["user", "status", "sessions", "meta", "since"],
            "additionalProperties": False,
            "properties": {
                "user": {"type": "string"},
                "status": {"enum": ["online", "away", "offline"]},
                "sessions": {"type": "integer", "minimum": 1},
                "meta": {"description": "The meta most recently set by any of the sessions."},
                "since": timestamp,
            },
        },
        "RoomPage": {
            "type": "object",
            "required": ["room", "seq", "count", "members", "next"],
            "additionalProperties": False,
            "properties": {
                "room": {"$ref": "#/components/schemas/Room"},
                "seq": {"type": "integer"},
                "count": {"type": "integer", "minimum": 0},
                "members": {
                    "type": "array",
                    "maxItems": settings.room_list_limit,
                    "items": {"$ref": "#/components/schemas/Member"},
                },
                "next": {"type": ["string", "null"]},
                "partial": {
                    "const": True,
                    "description": "Redis is away: only this server's members.",
                },
            },
        },
        "RoomList": {
            "type": "object",
            "required": ["rooms"],
            "additionalProperties": False,
            "properties": {
                "rooms": {
                    "type": "array",
                    "maxItems": 100,
                    "items": {
                        "type": "object",
                        "required": ["room", "count"],
                        "additionalProperties": False,
                        "properties": {
                            "room": {"$ref": "#/components/schemas/Room"},
                            "count": {"type": "integer", "minimum": 1},
                        },
                    },
                }
            },
        },
        "AdminLogin": {
            "type": "object",
            "required": ["token"],
            "additionalProperties": False,
            "properties": {"token": {"type": "string", "description": "PRESENCE_ADMIN_TOKEN."}},
        },
        "UserPresence": {
            "type": "object",
            "required": ["user", "status", "sessions", "last_seen", "rooms"],
            "additionalProperties": False,
            "properties": {
                "user": {"type": "string"},
                "status": {"enum": ["online", "away", "offline"]},
                "sessions": {"type": "integer", "minimum": 0},
                "last_seen": {"anyOf": [timestamp, {"type": "null"}]},
                "rooms": {"type": "array", "items": {"$ref": "#/components/schemas/Room"}},
            },
        },
        "JoinRoom": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "meta": {
                    "type": ["object", "null"],
                    "description": (
                        "A JSON object the client wants its member to show, at most "
                        f"{settings.max_meta_bytes} bytes once encoded."
                    ),
                    "x-max-encoded-bytes": settings.max_meta_bytes,
                }
            },
        },
        "JoinResult": {
            "type": "object",
            "required": ["room", "result"],
            "additionalProperties": False,
            "properties": {
                "room": {"$ref": "#/components/schemas/Room"},
                "result": {"enum": ["joined", "updated"]},
            },
        },
        "CleanupResult": {
            "type": "object",
            "required": ["deleted", "session_ids"],
            "additionalProperties": False,
            "properties": {
                "deleted": {"type": "integer", "minimum": 0},
                "session_ids": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/SessionId"},
                },
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "store", "degraded", "sockets"],
            "properties": {
                "status": {"enum": ["ready", "degraded"]},
                "store": {"enum": ["memory", "redis"]},
                "degraded": {"type": "boolean"},
                "sockets": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Sockets open (or opening) on this process.",
                },
                "pending_writes": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Writes made during a Redis outage not yet written back.",
                },
                "sessions": {"type": "integer", "minimum": 0},
                "error": {"type": "string", "description": "Why Redis refuses the service."},
                "unreachable_since": {
                    "type": "string",
                    "format": "date-time",
                    "description": "While Redis is away: since when.",
                },
                "problem": {
                    "type": "string",
                    "description": "What is wrong, in a sentence; absent when nothing is.",
                },
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string", "minLength": 1},
                    },
                }
            },
        },
    }


def _session_links() -> dict[str, Any]:
    # What a client does next with the id it was given (and what a stateful tester follows).
    session_id = {"session_id": "$response.body#/id"}
    return {
        name: {"operationId": name, "parameters": session_id}
        for name in ("getSession", "heartbeat", "deleteSession")
    }


def _admin_paths(settings: Settings) -> dict[str, Any]:
    """The admin page's API, documented when it is on (PRESENCE_ADMIN_TOKEN set); off,
    each of these paths answers 404 ``admin_disabled``."""
    if settings.admin_token is None:
        return {}
    admin: list[dict[str, list[str]]] = [{"adminToken": []}, {"adminCookie": []}]
    return {
        "/api/v1/admin/login": {
            "post": {
                "operationId": "adminLogin",
                "summary": "Signs in to the admin page: sets the admin cookie.",
                "description": (
                    'Takes `{"token": PRESENCE_ADMIN_TOKEN}` and answers 204 with the '
                    "`presence_admin` cookie (HttpOnly, SameSite=Strict, Secure over https), "
                    "a signed credential for 12 hours. Five attempts an address, then one "
                    "every 12 s (429 with Retry-After)."
                ),
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/AdminLogin"}}
                    },
                },
                "responses": {
                    "204": {"description": "Signed in: the cookie is set."},
                    **_errors(400, 401, 403, 413, 415, 422, 429),
                },
            }
        },
        "/api/v1/admin/logout": {
            "post": {
                "operationId": "adminLogout",
                "summary": "Signs out of the admin page: clears the admin cookie.",
                "security": admin,
                "responses": {
                    "204": {"description": "The cookie is cleared."},
                    **_errors(403),
                },
            }
        },
        "/api/v1/admin/ws": {
            "get": {
                "operationId": "openAdminSocket",
                "summary": "Opens the admin socket: the admin page's live view.",
                "description": (
                    "A WebSocket handshake, refused (401) without the admin token as a "
                    "bearer or the admin cookie, and (403) from an origin not allowed. "
                    "Server to admin: `admin.snapshot`, `admin.status` (every 2 s), "
                    "`admin.room`, `admin.event`, `admin.replayed`, `error`; admin to "
                    "server: `admin.refresh`, `admin.replay` with an `id`."
                ),
                "security": admin,
                "responses": {
                    "101": {"description": "Switching protocols: the socket is open."},
                    **_errors(401, 403),
                },
            }
        },
    }


def _admin_security(settings: Settings) -> dict[str, Any]:
    if settings.admin_token is None:
        return {}
    return {
        "adminToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "PRESENCE_ADMIN_TOKEN itself, for scripts.",
        },
        "adminCookie": {
            "type": "apiKey",
            "in": "cookie",
            "name": "presence_admin",
            "description": "The admin credential a login sets (never a user's identity).",
        },
    }


def _security() -> list[dict[str, list[str]]]:
    return [{"bearer": []}, {"cookie": []}]


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _body(schema: str, *, required: bool = False) -> dict[str, Any]:
    ref = {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    return {
        "required": required,
        "description": "A JSON object; `text/plain` is read as JSON too (sendBeacon).",
        "content": {"application/json": ref, "text/plain": ref},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    responses = {}
    for status in statuses:
        description, codes = _ERRORS[status]
        responses[str(status)] = {
            "description": description,
            "content": {
                "application/json": {
                    "schema": {
                        "allOf": [
                            {"$ref": "#/components/schemas/Error"},
                            {
                                "properties": {
                                    "error": {"properties": {"code": {"enum": list(codes)}}}
                                }
                            },
                        ]
                    }
                }
            },
        }
    return responses
