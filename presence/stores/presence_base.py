"""The contract every presence store keeps.

A **tab** is one session's presence: held by one process at a time (the one holding its
socket, or the one that took its latest REST heartbeat), with a state (online or away)
and the rooms it joined. A tab whose hold ends (the socket closed, the heartbeats
stopped, the session ended) is **leaving**: it still counts, with its last state, until
:meth:`PresenceStore.depart` removes it once the grace has passed with no new hold. A
room that a tab leaves is leaving the same way. So a refresh or a blip inside the grace
changes no member at all.

Each change recomputes the members it touches (see :mod:`presence.rooms`) and returns
the rooms whose members changed; :meth:`PresenceStore.flush` then turns a room's changes
since its last flush into one numbered diff and publishes it on the bus, atomically, so
diffs of a room are published in ``seq`` order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

from ..models import JSON, Diff, Reason, RoomPage, TabState, UserPresence

#: What a join did: ``joined`` (or re-joined inside the grace), ``updated`` (already in
#: the room: its meta was replaced), ``full`` (the tab is in its maximum of rooms),
#: ``no_tab`` (the session is not held anywhere: hold it first).
JoinResult = Literal["joined", "updated", "full", "no_tab"]


@runtime_checkable
class PresenceStore(Protocol):
    """Tabs, rooms and members, with leases for the processes that hold tabs.

    Every method is atomic. Times come from the store's own clock. Methods that change
    members return the rooms they changed (to be flushed after the diff window).
    """

    #: "memory", "redis" or "redis+fallback".
    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def hold(
        self, user: str, session_id: str, *, holder: str, state: TabState
    ) -> tuple[int, list[str]]:
        """Makes the tab present and held by ``holder`` with ``state``, ending any
        grace it was in (its rooms are kept). Returns the hold's generation, which
        :meth:`release` checks so that a late timer of an older hold does nothing, and
        the rooms changed (the user's status in them, if it changed)."""

    async def set_state(
        self, user: str, session_id: str, state: TabState, *, holder: str
    ) -> list[str]:
        """The tab's state (visible and active, or hidden or idle), if ``holder``
        holds it; returns the rooms changed."""

    async def release(
        self, user: str, session_id: str, reason: Reason, *, holder: str, gen: int
    ) -> float | None:
        """The hold ``gen`` of ``holder`` ended for ``reason``: the tab is leaving from
        now. Returns when it started leaving, or None when the tab is held by another
        hold now (nothing changed)."""

    async def depart(self, user: str, session_id: str, *, since: float) -> list[str]:
        """The grace is over for what started leaving at or before ``since``: the tab,
        if it is leaving since then (and not held again), is removed with all its
        memberships; otherwise only the rooms it left since then are. Returns the rooms
        changed."""

    async def join(
        self,
        user: str,
        session_id: str,
        room: str,
        meta: JSON,
        *,
        max_rooms: int,
    ) -> tuple[JoinResult, list[str]]:
        """The tab joins ``room`` with ``meta`` (or, already in it, sets its meta)."""

    async def update(self, user: str, session_id: str, room: str, meta: JSON) -> list[str] | None:
        """Sets the tab's meta in ``room``; None when the tab is not in it."""

    async def leave(
        self, user: str, session_id: str, room: str, reason: Reason
    ) -> tuple[float, list[str]] | None:
        """The tab leaves ``room``: leaving from now (returned), removed by
        :meth:`depart` once the grace is over. None when it was not in the room."""

    async def reap(
        self,
        holder: str,
        *,
        if_lapsed: bool = False,
        progress: Callable[[list[str]], None] | None = None,
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """Every tab that ``holder`` held (its process died) is removed at once, with
        reason ``node_down`` and its last renewal as last seen; its lease is forgotten.
        Idempotent. Returns the rooms changed and the (user, session id) of the tabs
        removed (their sessions are to be marked disconnected).

        The holder is fenced first, atomically with its lease: from then on its
        :meth:`renew` says it was reaped. With ``if_lapsed`` (another process reaping
        it), a holder whose lease is not lapsed any more (it renewed since it was found
        lapsed: it was stalled or cut off, not dead) is left alone and nothing changes.

        ``progress``, if given, is called with the rooms changed by each step of a reap
        that takes several (a store that reaps in batches), as they change, so that
        their diffs can go out while the reap goes on; the rooms returned are all of
        them, told or not.
        """

    async def flush(self, room: str) -> Diff | None:
        """The room's changes since its last flush as one diff with the next ``seq``,
        published on the room's channel in the same step; None when nothing changed."""

    async def room(self, room: str, *, cursor: str | None = None, limit: int = 1000) -> RoomPage:
        """A page of the room's members (by user), as of its current ``seq``."""

    async def rooms(self, limit: int) -> list[tuple[str, int]]:
        """The rooms with members and how many, most populous first, at most ``limit``
        (as of their last flush)."""

    async def user(self, user: str) -> UserPresence:
        """The user's presence (status ``offline`` and no rooms when absent)."""

    async def tab_rooms(self, user: str, session_id: str) -> list[str]:
        """The rooms the tab is in (leaving ones not counted)."""

    async def renew(self, holder: str, ttl: float) -> bool:
        """Renews ``holder``'s lease for ``ttl`` seconds; False when it lapsed and was
        reaped meanwhile (the process must hold its tabs again under a new name)."""

    async def lapsed(self) -> list[tuple[str, float]]:
        """Holders whose lease lapsed and that are not reaped yet, with their last
        renewal (POSIX seconds)."""
