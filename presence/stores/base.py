"""The contract every session store keeps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ..sessions import JSON, UNSET, Session, State, Transport

#: Called with (user, session_id, reason), without awaiting, for each session a memory
#: store ends: it hands the end to the bus (see presence.asgi.services).
Announce = Callable[[str, str, str], None]

#: A reference to a session: (user, session_id).
SessionRef = tuple[str, str]

__all__ = ["UNSET", "Announce", "SessionRef", "SessionStore"]


@runtime_checkable
class SessionStore(Protocol):
    """Stores sessions per user, with a sliding TTL.

    Every method acts on one user's sessions only: a session id is meaningless without
    its user, so another user's id is simply "not found". Each method is atomic.
    Times are POSIX seconds; ``now`` comes from the store's clock.
    """

    #: "memory", "redis", or "redis+fallback".
    name: str

    async def open(self) -> None:
        """Connects and prepares; called once from the app's lifespan."""

    async def close(self) -> None:
        """Releases connections and background tasks."""

    async def status(self) -> dict[str, JSON]:
        """What serves now, for ``/readyz``: at least ``{"store": ..., "degraded": bool}``."""

    async def create(self, user: str, session_id: str, *, data: JSON = None) -> Session:
        """Creates a session with ``last_seen = now`` and a full TTL.

        Raises:
            TooManySessions: the user holds the maximum number of live sessions.
            StoreFull: the fallback store is at its size cap.
        """

    async def get(self, user: str, session_id: str) -> Session | None:
        """Returns the live session, or None when it is unknown, deleted or expired."""

    async def list_sessions(self, user: str) -> list[Session]:
        """Returns the user's live sessions, most recently seen first."""

    async def touch(
        self,
        user: str,
        session_id: str,
        *,
        transport: Transport | None = None,
        state: State | None = None,
        data: JSON = UNSET,
        unseen_for: float | None = None,
    ) -> Session | None:
        """A heartbeat: ``last_seen = now``, TTL extended, fields updated when given.

        Returns None, and creates nothing, when the session is unknown, deleted or expired.
        ``unseen_for``: applies only to a session not seen for at least that many seconds
        (by the store's clock); one seen since is returned as it is, untouched. A reaper
        marks a dead process's sessions so, and passes over those a live socket took
        again meanwhile.
        """

    async def delete(self, user: str, session_ids: Sequence[str], reason: str) -> list[str]:
        """Deletes those of the ids that the user holds; returns the ids deleted.

        Each deletion is announced on the bus's ended channel with ``reason`` (by the
        Redis scripts; by a memory store through its ``announce``).
        """

    async def delete_all(self, user: str, reason: str) -> list[str]:
        """Deletes all of the user's sessions; returns the ids deleted."""

    async def delete_inactive(self, user: str, inactive_for: float, reason: str) -> list[str]:
        """Deletes the user's sessions not seen for more than ``inactive_for`` seconds,
        measured by the store's own clock."""

    async def delete_seen_before(self, user: str, cutoff: float, reason: str) -> list[str]:
        """Deletes the user's sessions whose ``last_seen`` is before ``cutoff`` (POSIX s).

        The write-back of a cleanup made during an outage: sessions kept alive after it
        (newer writes) survive."""

    async def refresh(self, refs: Sequence[SessionRef]) -> list[SessionRef]:
        """Keeps many sessions alive at once (``last_seen = now``, TTL extended) in one
        round trip, for the sockets a process holds open. Returns the refs that no
        longer exist; they are not recreated."""

    async def on_ended(self, user: str, session_id: str, reason: str) -> None:
        """A session ended somewhere (heard on the bus): a store that keeps copies of
        sessions forgets it."""
