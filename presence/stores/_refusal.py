"""Telling "Redis refuses us" from "Redis is away".

redis-py raises a wrong password (``AuthenticationError``) and a failed TLS handshake
as ``ConnectionError``, the class of a dropped connection, and a command that an ACL
forbids inside a script as a plain ``ResponseError``. Taken for an outage, a refusal
sent the service to serve from memory forever, with ``/readyz`` ready; taken for a bug,
a 500. Neither passes by itself: both are configuration errors, to be named.

What is a refusal is read from the whole chain of an exception (``__cause__``, else
``__context__``): redis-py wraps the ``ssl`` module's errors, and a cluster client
wraps a node's errors, in errors of its own.

Two mismatches do not show as an error of their own: a TLS client on a plaintext port
waits for a handshake that never comes (a timeout), and a plaintext client on a TLS
port, or one without the client certificate the server asks for, is reset. At start-up,
:func:`diagnose` looks at such a port once with a PING of its own, plaintext and over
TLS (verifying nothing: only the protocol spoken is in question), to tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

from redis.exceptions import (
    AskError,
    AuthenticationError,
    MovedError,
    NoPermissionError,
    ReadOnlyError,
    ResponseError,
)

# How Redis words an ACL refusal: NOPERM to a command sent by the client; inside a
# script, "The user executing the script can't ..." (7.0) or "ACL failure in script"
# (7.2 and later).
_ACL_REFUSAL = re.compile(r"NOPERM|no permissions|user executing the script can't|ACL failure")

# Handshake failures that mean "not TLS there" or "TLS, but not with these settings",
# as opposed to a connection cut in the middle (SSLEOFError, SSLZeroReturnError), which
# an outage causes too.
_TLS_MISMATCHES = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "UNKNOWN_PROTOCOL",
        "HTTP_REQUEST",
        "PACKET_LENGTH_TOO_LONG",
        "UNSUPPORTED_PROTOCOL",
        "NO_PROTOCOLS_AVAILABLE",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
    }
)
# The server refused this client's certificate, or wanted one.
_CLIENT_CERTIFICATE = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_UNKNOWN_CA",
    }
)


def refusal(exc: BaseException) -> str | None:
    """Why Redis refuses this service, as a sentence; None when ``exc`` is no refusal
    (Redis away, or a bug)."""
    for error in _chain(exc):
        if isinstance(error, AuthenticationError):
            return _password(str(error))
        if isinstance(error, NoPermissionError) or (
            isinstance(error, ResponseError) and _ACL_REFUSAL.search(str(error))
        ):
            return f"Redis's ACL refuses a command the service needs: {error}"
        if isinstance(error, ssl.SSLCertVerificationError):
            detail = error.verify_message or str(error)
            if "mismatch" in detail:
                return f"Redis's TLS certificate is not valid for the host in REDIS_URL: {detail}"
            return (
                f"Redis's TLS certificate is not trusted: {detail}; name the CA that "
                "signed it with ?ssl_ca_certs="
            )
        if isinstance(error, ssl.SSLError):
            reason = error.reason or ""
            if reason in _CLIENT_CERTIFICATE:
                return (
                    f"Redis wants a client certificate, or refused the one given: {reason}; "
                    "give one with ?ssl_certfile=...&ssl_keyfile=..."
                )
            if reason in _TLS_MISMATCHES:
                return (
                    f"the TLS handshake with Redis failed: {reason}; a plaintext port "
                    "takes redis://, not rediss://"
                )
    return None


def answered(exc: BaseException) -> str:
    """What an error that Redis answered with at start-up means for the configuration
    (Redis answers, so it is not away; the service cannot work with it as it is)."""
    text = str(exc)
    if isinstance(exc, AskError | MovedError) or "Cluster mode is not enabled" in text:
        return (
            f"Redis answered {type(exc).__name__} {text!r}: a node of a Redis Cluster is "
            "named by redis+cluster://, anything else by redis://"
        )
    if isinstance(exc, ReadOnlyError):
        return "Redis there is a read-only replica; name the primary"
    if "DB index is out of range" in text:
        return "Redis has no database of the number in REDIS_URL"
    return f"Redis answered with an error: {text}"


def _password(message: str) -> str:
    # NOAUTH, in the words of AUTH and of HELLO (which redis-py sends for RESP3).
    if "Authentication required" in message or "already authenticated" in message:
        return "Redis requires a password and REDIS_URL gives none"
    if "without any password configured" in message or "no password is set" in message:
        return "REDIS_URL gives a password but Redis has none set for this user"
    return f"Redis refused the user name or password in REDIS_URL: {message}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def where(url: str) -> str:
    """The server a URL names, for messages: never its user name or password."""
    parts = urlsplit(url)
    if parts.scheme.startswith("unix"):
        return parts.path
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or 6379}"


async def diagnose(url: str, failure: BaseException, wait: float) -> str | None:
    """Why a first contact that looked like an outage is a misconfiguration, when the
    port tells; None when it does not (Redis may simply be away).

    Args:
        url: ``REDIS_URL`` (``+cluster`` taken off).
        failure: what the first contact raised; a refused connection (nothing listens)
            is an outage, and nothing is looked at.
        wait: seconds each look may take.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or any(
        isinstance(error, ConnectionRefusedError) for error in _chain(failure)
    ):
        return None
    host, port = parts.hostname or "localhost", parts.port or 6379
    if parts.scheme == "redis":
        answer = await _ping(host, port, wait, tls=True)
        if isinstance(answer, bytes) or (
            isinstance(answer, ssl.SSLError) and answer.reason in _CLIENT_CERTIFICATE
        ):
            return "Redis speaks TLS there: use rediss:// rather than redis://"
        return None
    answer = await _ping(host, port, wait, tls=False)
    if isinstance(answer, bytes) and answer[:1] in (b"+", b"-"):
        return "Redis speaks plaintext there, not TLS: use redis:// rather than rediss://"
    answer = await _ping(host, port, wait, tls=True)
    if isinstance(answer, ssl.SSLError) and answer.reason in _CLIENT_CERTIFICATE:
        return (
            f"Redis asks for a client certificate: {answer.reason}; give one with "
            "?ssl_certfile=...&ssl_keyfile=..."
        )
    if answer == b"":
        # The alert that says why is often lost to the reset that follows it.
        return (
            "Redis closes TLS connections right after the handshake, as it does when it "
            "asks for a client certificate: give one with ?ssl_certfile=...&ssl_keyfile=..."
        )
    return None


async def _ping(host: str, port: int, wait: float, *, tls: bool) -> bytes | ssl.SSLError | None:
    """Sends PING and returns the first bytes of the answer (empty when the connection
    was closed or reset once made, over TLS once the handshake was done), the TLS error
    that came instead, or None when no connection (or handshake) was made."""
    context = None
    if tls:
        # Only the protocol spoken is in question here, not whom we speak to.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except ssl.SSLError as exc:
        return exc
    except OSError:  # includes TimeoutError
        return None
    try:
        async with asyncio.timeout(wait):
            writer.write(b"PING\r\n")
            await writer.drain()
            return await reader.read(64)
    except ssl.SSLError as exc:
        return exc
    except OSError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
