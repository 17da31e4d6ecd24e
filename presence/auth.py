"""Who is asking, and from where.

Identity is a JWT (HS256) whose ``sub`` is the user. It arrives as
``Authorization: Bearer``, as the ``presence_token`` cookie, or, for the WebSocket
only, as a ``token`` query parameter. Without ``PRESENCE_JWT_SECRET`` the server is in
development mode: it signs anonymous tokens itself and hands each browser one in an
HttpOnly, SameSite=Lax cookie.

Origins: a request authenticated by cookie is one a browser may send on another site's
behalf (CSRF, cross-site WebSocket hijacking), so it must come from an allowed origin.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

import jwt
from jwt.types import Options
from starlette.requests import cookie_parser

from .exceptions import RateLimited
from .limits import KeyedLimiter
from .settings import Settings

COOKIE_NAME = "presence_token"
QUERY_PARAM = "token"
_COOKIE_NAME_BYTES = COOKIE_NAME.encode()
_ALGORITHM = "HS256"
_DEV_ISSUER = "presence-dev"
# Anonymous identities last a year; the session TTL, not the cookie, bounds sessions.
_DEV_TOKEN_SECONDS = 365 * 24 * 3600
_MAX_SUB_LENGTH = 256
_LEEWAY = 5
# Verified tokens are remembered so a client's every request does not pay for HMAC and
# JSON decoding again; an entry lives until the token's expiry and at most this long.
_VERIFIED_SECONDS = 60.0
_VERIFIED_MAX = 16384


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user and how the credential came.

    Attributes:
        rooms: the rooms the user may join and watch, from the token's ``rooms`` claim
            (exact names, or prefixes ending in ``*``); None when every room is open
            (development mode, ``PRESENCE_OPEN_ROOMS``).
    """

    user: str
    via: Literal["bearer", "cookie", "query"]
    rooms: tuple[str, ...] | None = None

    def may_enter(self, room: str) -> bool:
        """True when the user may join and watch ``room``."""
        if self.rooms is None:
            return True
        for allowed in self.rooms:
            if allowed.endswith("*") and room.startswith(allowed[:-1]):
                return True
            if room == allowed:
                return True
        return False

    @property
    def ambient(self) -> bool:
        """True when a browser attaches the credential by itself (a cookie), so the
        request's origin must be checked."""
        return self.via == "cookie"


class Authenticator:
    """Verifies tokens, and in development mode mints anonymous ones.

    Args:
        settings: uses ``jwt_secret``, or in development mode ``dev_secret`` (a random
            key for this process when unset).
    """

    def __init__(self, settings: Settings) -> None:
        self.dev_mode = settings.dev_mode
        self._key = settings.jwt_secret or settings.dev_secret or secrets.token_urlsafe(32)
        self._verified: dict[str, tuple[str, tuple[str, ...] | None, float]] = {}
        self._open_rooms = settings.rooms_open
        # Every anonymous identity may become sessions in the store, each kept a TTL:
        # one address minting without bound (931 a second were seen) fills Redis.
        per_minute = settings.anonymous_per_minute
        self._minted = KeyedLimiter(per_minute / 60, per_minute)
        # A token without an expiry is a credential that never dies once it leaks:
        # refused unless the operator says otherwise. Development-mode tokens are ours
        # and always carry one. An audience or issuer, when set, must match.
        required = ["sub"]
        if settings.jwt_require_exp:
            required.append("exp")
        self._audience = None if self.dev_mode else settings.jwt_audience
        self._issuer = None if self.dev_mode else settings.jwt_issuer
        if self._audience is not None:
            required.append("aud")
        if self._issuer is not None:
            required.append("iss")
        self._options: Options = {"require": required}
        if self._audience is None:
            # PyJWT refuses every token that has an "aud" when no audience is expected;
            # with none configured, an audience claim is not ours to judge.
            self._options["verify_aud"] = False

    def use_key(self, key: str) -> None:
        """Development mode: signs and verifies anonymous identities with ``key`` from
        now (the key every process and restart shares: see presence.asgi.services)."""
        self._key = key
        self._verified.clear()

    def identify(
        self,
        authorization: str | None,
        cookie: Callable[[], str | None] | None = None,
        query_token: str | None = None,
    ) -> Identity | None:
        """Returns the identity a request proves, or None.

        The first credential present is the one judged, in this order: a bearer token,
        the query token, the cookie.

        Args:
            authorization: the request's ``Authorization`` header (its first).
            cookie: reads the ``presence_token`` cookie (see :func:`cookie_token`); called
                only when no token came another way, so most requests never parse their
                cookies.
            query_token: the ``token`` query parameter (see :func:`query_token`), passed
                only for the WebSocket handshake, where a browser cannot set headers;
                elsewhere a token in a URL would end up in logs and histories.
        """
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token:
                return self._verify(token.strip(), "bearer")
        if query_token:
            return self._verify(query_token, "query")
        if cookie is not None:
            value = cookie()
            if value:
                return self._verify(value, "cookie")
        return None

    def mint_anonymous(self, address: str) -> tuple[Identity, str]:
        """Development mode: a new anonymous user and the token to set as cookie.

        Args:
            address: the client's address; each may be given at most
                ``PRESENCE_ANONYMOUS_PER_MINUTE`` new identities a minute.

        Raises:
            RateLimited: this address has had its share for now.
        """
        wait = self._minted.allow(address, time.monotonic())
        if wait:
            raise RateLimited(
                "too many new anonymous identities from this address; try again later",
                retry_after=wait,
            )
        user = "anon:" + secrets.token_urlsafe(12)
        now = int(time.time())
        claims = {"sub": user, "iss": _DEV_ISSUER, "iat": now, "exp": now + _DEV_TOKEN_SECONDS}
        return Identity(user, "cookie"), jwt.encode(claims, self._key, algorithm=_ALGORITHM)

    def cookie(self, token: str, *, secure: bool) -> str:
        """The Set-Cookie value for a development-mode token."""
        parts = [
            f"{COOKIE_NAME}={token}",
            "Path=/",
            f"Max-Age={_DEV_TOKEN_SECONDS}",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if secure:
            parts.append("Secure")
        return "; ".join(parts)

    def _verify(self, token: str, via: Literal["bearer", "cookie", "query"]) -> Identity | None:
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None and cached[2] > now:
            return Identity(cached[0], via, cached[1])
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],
                options=self._options,
                audience=self._audience,
                issuer=self._issuer,
                leeway=_LEEWAY,
            )
        except jwt.PyJWTError:
            return None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= _MAX_SUB_LENGTH or not _encodable(sub):
            return None
        valid_until = now + _VERIFIED_SECONDS
        expiry = claims.get("exp")
        if isinstance(expiry, int | float):
            valid_until = min(valid_until, expiry + _LEEWAY)
        rooms = None if self._open_rooms else _rooms_claim(claims.get("rooms"))
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = (sub, rooms, valid_until)
        return Identity(sub, via, rooms)


def _rooms_claim(claim: object) -> tuple[str, ...]:
    """The rooms a ``rooms`` claim allows: its strings (exact names, or prefixes ending
    in ``*``); a claim of any other shape allows none."""
    if not isinstance(claim, list):
        return ()
    return tuple(item for item in claim if isinstance(item, str) and item)


def _encodable(text: str) -> bool:
    # JSON lets a token carry an unpaired surrogate, which no Redis command can send.
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class OriginPolicy:
    """Decides whether a request's Origin may act with ambient credentials.

    Args:
        allowed: exact origins (``https://chat.example.com``) allowed besides the
            server's own, which is judged against the request's own scheme and Host.
    """

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = frozenset(allowed)

    def allows(self, origin: str | None, *, scheme: str, host: str | None) -> bool:
        """True when ``origin`` is allowed; a missing or ``null`` origin never is."""
        if not origin or origin == "null":
            return False
        origin = origin.lower().rstrip("/")
        if origin in self.allowed:
            return True
        # The server's own origin always passes: allowed origins are in addition to it
        # (a list that replaced it broke the server's own /chat with a 403).
        if not host:
            return False
        # Compared whole, never by prefix or suffix: https://app.example.com.evil.com
        # must not pass for https://app.example.com.
        http_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
        return origin == f"{http_scheme}://{host.lower()}"

    def allows_http(
        self, origin: str | None, sec_fetch_site: str | None, *, scheme: str, host: str | None
    ) -> bool:
        """The CSRF rule for a state-changing HTTP request authenticated by cookie:
        an allowed Origin, or, when the browser sent none, ``Sec-Fetch-Site: same-origin``.

        Each header is the request's first of that name."""
        if origin is None:
            return sec_fetch_site == "same-origin"
        return self.allows(origin, scheme=scheme, host=host)


def first_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """A request's headers read once, in one pass: the first value of each name, what
    Starlette's ``Headers.get`` answers, without its scan of the list per lookup. Names
    are lower case, as ASGI servers send them."""
    return dict(reversed(raw if isinstance(raw, list) else list(raw)))


def header(headers: Mapping[bytes, bytes], name: bytes) -> str | None:
    """One value of :func:`first_headers`, decoded as Starlette does (Latin-1)."""
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


def cookie_token(raw: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The ``presence_token`` cookie, read as Starlette's ``request.cookies`` reads it:
    every ``Cookie`` header parsed in order, the last value of the name winning. A
    header that does not hold the name at all cannot set it, so it is not parsed."""
    token = None
    for name, value in raw:
        if name == b"cookie" and _COOKIE_NAME_BYTES in value:
            token = cookie_parser(value.decode("latin-1")).get(COOKIE_NAME, token)
    return token


def query_token(query_string: bytes) -> str | None:
    """The ``token`` query parameter as Starlette's ``query_params`` reads it (the last
    one wins), without keeping the parsed query anywhere."""
    token = None
    if query_string:
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if name == QUERY_PARAM:
                token = value
    return token
