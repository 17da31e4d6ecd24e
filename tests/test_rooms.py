"""The pure presence core (presence.rooms): members, statuses, diffs and views.

The state machine over every presence store is in tests/test_presence_store.py.
"""

from __future__ import annotations

import pytest

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


def _m(user: str, **fields: object) -> Member:
    values: dict[str, object] = {"status": "online", "sessions": 1, "meta": None, "since": 1.0}
    values.update(fields)
    return Member(user, **values)  # type: ignore[arg-type]


# -- pure functions ---------------------------------------------------------------------


def test_a_join_and_a_leave_inside_a_window_is_a_leave():
    """A user who joined and left inside the window is told as a leave with its reason:
    a watcher that synced inside the window holds them (its page was read then)."""
    assert coalesce({"ann": None}, {"ann": None}, {"ann": ("closed", 2.0)}) == (
        (),
        (),
        (Leave("ann", "closed", 2.0),),
    )


def test_repeated_updates_keep_the_last():
    """A member changed several times in a window is one update with its last state; one
    changed and changed back is nothing (a status that flickered is no diff)."""
    before = _m("ann")
    after = _m("ann", status="away", meta={"n": 3})
    assert coalesce({"ann": before}, {"ann": after}, {}) == ((), (after,), ())
    assert coalesce({"ann": before}, {"ann": before}, {}) == ((), (), ())


def test_a_view_synced_inside_a_window_ends_where_one_synced_before_it_does():
    """Whatever a window did to a user but undo a change, a view synced before it and one
    synced in the middle of it end alike once its diff is applied. (An undone change is
    no diff: a view synced in between keeps the state between until the next change.)"""
    ann, away = _m("ann"), _m("ann", status="away")
    # (published at the window's start, the middle, the end) for one user.
    for start, middle, end in [
        (None, ann, None),  # joined and left
        (None, ann, away),  # joined and changed
        (ann, None, None),  # left
    ]:
        joins, updates, leaves = coalesce({"ann": start}, {"ann": end}, {"ann": ("left", 1.0)})
        diff = Diff("r", 2, joins, updates, leaves, 0 if end is None else 1)
        early, late = View("r"), View("r")
        early.sync(RoomPage("r", 1, 0 if start is None else 1, () if start is None else (start,)))
        late.sync(RoomPage("r", 1, 0 if middle is None else 1, () if middle is None else (middle,)))
        early.apply(diff)
        late.apply(diff)
        assert early.members == late.members == ({} if end is None else {"ann": end})


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
