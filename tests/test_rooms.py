"""The pure presence core (presence.rooms) and the memory presence store, without I/O.

The state machine drives random sequences of open, close, hide, show, idle, join,
leave, update and crash over several sessions of several users held by two processes,
with the clock moving and graces running out, and checks after every step that each
watcher's view (its sync, then every diff applied in order) equals the store's members,
that the members and statuses follow the rules, and that nobody is left behind.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from presence import events
from presence.rooms import (
    Diff,
    GapError,
    Leave,
    Member,
    RoomPage,
    Tab,
    View,
    coalesce,
    is_room,
    user_status,
)
from presence.stores.presence_memory import MemoryPresenceStore

from .conftest import Clock

GRACE = 5.0
USERS = ("ann", "bob", "cy")
SESSIONS = {f"{user}-{n}": user for user in USERS for n in range(2)}
ROOMS = ("lobby", "dev")
HOLDERS = ("p1", "p2")


def _m(user: str, **fields: object) -> Member:
    values: dict[str, object] = {"status": "online", "sessions": 1, "meta": None, "since": 1.0}
    values.update(fields)
    return Member(user, **values)  # type: ignore[arg-type]


# -- pure functions ---------------------------------------------------------------------


def test_a_join_and_a_leave_inside_a_window_cancel():
    """A user absent before the window and absent after it is in no part of the diff."""
    assert coalesce({"ann": None}, {"ann": None}, {"ann": ("closed", 2.0)}) == ((), (), ())


def test_repeated_updates_keep_the_last():
    """A member changed several times in a window is one update with its last state; one
    changed and changed back is nothing."""
    before = _m("ann")
    after = _m("ann", status="away", meta={"n": 3})
    assert coalesce({"ann": before}, {"ann": after}, {}) == ((), (after,), ())
    assert coalesce({"ann": before}, {"ann": before}, {}) == ((), (), ())


def test_a_leave_carries_its_reason_and_last_seen():
    """A member gone by the end of the window leaves with why and when."""
    assert coalesce({"ann": _m("ann")}, {"ann": None}, {"ann": ("node_down", 7.0)}) == (
        (),
        (),
        (Leave("ann", "node_down", 7.0),),
    )


def test_status_is_online_if_any_tab_is_away_if_all_are():
    """Online while any tab is online, away while every tab is away, offline with none."""
    assert user_status([Tab("a", "away"), Tab("b", "online")]) == "online"
    assert user_status([Tab("a", "away"), Tab("b", "away")]) == "away"
    assert user_status([]) == "offline"


def test_a_view_refuses_a_gap_and_ignores_what_its_sync_had():
    """A diff that does not follow the view's seq raises GapError and changes nothing;
    one already in the sync is ignored."""
    view = View("lobby")
    view.sync(RoomPage("lobby", 5, 1, (_m("ann"),)))
    view.apply(Diff("lobby", 5, (), (), (Leave("ann", "left", 1.0),), 0))
    assert set(view.members) == {"ann"}
    with pytest.raises(GapError):
        view.apply(Diff("lobby", 7, (_m("bob"),), (), (), 2))
    assert set(view.members) == {"ann"} and view.seq == 5
    view.apply(Diff("lobby", 6, (_m("bob"),), (), (), 2))
    assert set(view.members) == {"ann", "bob"} and view.seq == 6


@pytest.mark.parametrize("name", ["", "a" * 129, "a b", "{x}", "room/1", "é", None, 7])
def test_bad_room_names_are_refused(name):
    """A room is 1-128 characters of [A-Za-z0-9_.:@-]."""
    assert not is_room(name)


def test_a_diff_survives_the_wire():
    """encode_diff and decode_diff are inverse, metas and reasons included."""
    diff = Diff(
        "lobby",
        9,
        (_m("ann", meta={"nick": "A", "tags": []}, since=1.5),),
        (_m("bob", status="away", sessions=2, since=2.25),),
        (Leave("cy", "timeout", 3.125),),
        2,
    )
    assert events.decode_diff(events.encode_diff(diff)) == diff


# -- the state machine ------------------------------------------------------------------


@dataclass
class _Session:
    user: str
    holder: str | None = None
    gen: int = 0
    state: str = "online"
    rooms: dict[str, tuple[object, float]] = field(default_factory=dict)  # meta, meta_at
    leaving: float | None = None  # the whole tab
    reason: str = "closed"
    room_leaving: dict[str, float] = field(default_factory=dict)


class PresenceMachine(RuleBasedStateMachine):
    """A model of the rules beside the memory store, compared after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock(1_000.0)
        self.published: list[tuple[str, str]] = []
        self.store = MemoryPresenceStore(
            lambda room, raw: self.published.append((room, raw)), clock=self.clock
        )
        self.model: dict[str, _Session] = {}
        self.pending: list[tuple[float, str, float]] = []  # due, sid, since
        self.since: dict[tuple[str, str], float] = {}  # (room, user) -> since
        # (room, user) -> the reason and last_seen their leave must carry
        self.leaves: dict[tuple[str, str], tuple[str, float]] = {}
        self.views = {room: View(room) for room in ROOMS}
        for room in ROOMS:
            self.views[room].sync(self.run(self.store.room(room)))

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.loop.close()

    # -- rules --------------------------------------------------------------------------

    @rule(sid=st.sampled_from(sorted(SESSIONS)), holder=st.sampled_from(HOLDERS))
    def open(self, sid, holder):
        """A socket opens (or reopens inside the grace) on one of the processes."""
        session = self.model.setdefault(sid, _Session(SESSIONS[sid]))
        session.gen, _ = self.run(self.store.hold(session.user, sid, holder=holder, state="online"))
        session.holder, session.state, session.leaving = holder, "online", None

    @rule(sid=st.sampled_from(sorted(SESSIONS)), reason=st.sampled_from(["closed", "timeout"]))
    def close(self, sid, reason):
        """A socket closes: the tab leaves after the grace unless it comes back."""
        session = self.model.get(sid)
        if session is None or session.holder is None or session.leaving is not None:
            return
        since = self.run(
            self.store.release(session.user, sid, reason, holder=session.holder, gen=session.gen)
        )
        assert since == self.clock.now
        session.leaving, session.reason = since, reason
        self.pending.append((since + GRACE, sid, since))

    @rule(sid=st.sampled_from(sorted(SESSIONS)), state=st.sampled_from(["online", "away"]))
    def visibility(self, sid, state):
        """A tab is hidden, shown, goes idle or comes back."""
        session = self.model.get(sid)
        if session is None or session.holder is None or session.leaving is not None:
            return
        self.run(self.store.set_state(session.user, sid, state, holder=session.holder))
        session.state = state

    @rule(
        sid=st.sampled_from(sorted(SESSIONS)),
        room=st.sampled_from(ROOMS),
        meta=st.one_of(st.none(), st.integers(0, 3), st.just({"nick": "x"}), st.just([])),
    )
    def join(self, sid, room, meta):
        """A held tab joins a room (or sets its meta there)."""
        session = self.model.get(sid)
        if session is None or session.holder is None or session.leaving is not None:
            return
        result, _ = self.run(self.store.join(session.user, sid, room, meta, max_rooms=20))
        assert result == (
            "updated" if room in session.rooms and room not in session.room_leaving else "joined"
        )
        session.rooms[room] = (meta, self.clock.now)
        session.room_leaving.pop(room, None)

    @rule(sid=st.sampled_from(sorted(SESSIONS)), room=st.sampled_from(ROOMS))
    def leave(self, sid, room):
        """A tab leaves a room: gone after the grace unless it joins again."""
        session = self.model.get(sid)
        if session is None or room not in session.rooms or room in session.room_leaving:
            return
        left = self.run(self.store.leave(session.user, sid, room, "left"))
        assert left is not None
        session.room_leaving[room] = left[0]
        self.pending.append((left[0] + GRACE, sid, left[0]))

    @rule(holder=st.sampled_from(HOLDERS))
    def crash(self, holder):
        """A process dies and is reaped: its tabs go at once."""
        self.run(self.store.reap(holder))
        for sid in [s for s, session in self.model.items() if session.holder == holder]:
            session = self.model[sid]
            why = (session.reason, session.leaving) if session.leaving else ("node_down", None)
            self._removing(sid, list(session.rooms), *why)
            del self.model[sid]
        # The process comes back under a new lease; its old holder name is done with.

    @rule(seconds=st.sampled_from([0.5, 2.0, 5.0, 6.0]))
    def time_passes(self, seconds):
        """The clock moves; graces that ran out are applied."""
        self.clock.advance(seconds)
        due = [p for p in self.pending if p[0] <= self.clock.now]
        self.pending = [p for p in self.pending if p[0] > self.clock.now]
        for _, sid, since in sorted(due):
            user = SESSIONS[sid]
            self.run(self.store.depart(user, sid, since=since))
            session = self.model.get(sid)
            if session is None:
                continue
            if session.leaving is not None and session.leaving <= since:
                self._removing(sid, list(session.rooms), session.reason, session.leaving)
                del self.model[sid]
                continue
            for room, left in list(session.room_leaving.items()):
                if left <= since:
                    self._removing(sid, [room], "left", left)
                    del session.room_leaving[room]
                    del session.rooms[room]

    def _removing(self, sid: str, rooms: list[str], reason: str, when: float | None) -> None:
        """Notes the leave that removing ``sid`` from ``rooms`` must announce, for each
        room where it was its user's last session."""
        user = SESSIONS[sid]
        for room in rooms:
            others = [
                s
                for other, s in self.model.items()
                if other != sid and s.user == user and room in s.rooms
            ]
            if not others:
                self.leaves[(room, user)] = (reason, self.clock.now if when is None else when)

    # -- checks -------------------------------------------------------------------------

    def expected(self, room: str) -> dict[str, tuple[str, int, object]]:
        by_user: dict[str, list[_Session]] = {}
        for session in self.model.values():
            by_user.setdefault(session.user, []).append(session)
        members = {}
        for user, sessions in by_user.items():
            status = "online" if any(s.state == "online" for s in sessions) else "away"
            here = [s for s in sessions if room in s.rooms]
            if here:
                meta = max((s.rooms[room] for s in here), key=lambda pair: pair[1])[0]
                members[user] = (status, len(here), meta)
        return members

    @invariant()
    def every_view_equals_the_store_and_the_rules(self):
        """Flushed, every room's diffs bring its watcher's view to the store's members,
        which are what the rules say (count, meta, status across all tabs)."""
        for room in ROOMS:
            self.run(self.store.flush(room))
        for room, raw in self.published:
            diff = events.decode_diff(raw)
            for leave in diff.leaves:
                assert (leave.reason, leave.last_seen) == self.leaves.pop((room, leave.user))
            self.views[room].apply(diff)
        self.published.clear()
        for room in ROOMS:
            page = self.run(self.store.room(room))
            view = self.views[room]
            assert view.seq == page.seq
            assert view.members == {m.user: m for m in page.members}
            assert view.count == page.count == len(page.members)
            got = {m.user: (m.status, m.sessions, m.meta) for m in page.members}
            assert got == self.expected(room)

    @invariant()
    def statuses_follow_the_rules(self):
        """A user is online while a tab of theirs is, away while all are away, offline
        without a tab."""
        for user in USERS:
            sessions = [s for s in self.model.values() if s.user == user]
            want = (
                "offline"
                if not sessions
                else "online"
                if any(s.state == "online" for s in sessions)
                else "away"
            )
            assert self.run(self.store.user(user)).status == want

    @precondition(lambda self: True)
    @rule()
    def everyone_leaves(self):
        """Every tab closes and every grace runs out: nobody is left behind."""
        for sid, session in list(self.model.items()):
            if session.holder is not None and session.leaving is None:
                self.close(sid, "closed")
        self.time_passes(GRACE + 1)
        self.time_passes(GRACE + 1)
        assert not self.model
        for room in ROOMS:
            self.run(self.store.flush(room))
            assert self.run(self.store.room(room)).count == 0


TestPresenceMachine = PresenceMachine.TestCase
TestPresenceMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
