"""The reconnect storm's check of the watchers' views (bench/_fanout_load.py): a view
that is right is found right, and one that missed a leave and a join, though its count
is right, is found wrong. Fed the service's own encodings of syncs and diffs."""

from __future__ import annotations

from bench._fanout_load import Load, Sock
from presence.asgi import protocol
from presence.models import Diff, Leave, Member, RoomPage

ROOM = "storm.0"


def _member(user: str) -> Member:
    return Member(user, "online", 1, None, 1_800_000_000.0)


def _sync(seq: int, users: list[str]) -> bytes:
    page = RoomPage(ROOM, seq, len(users), tuple(_member(u) for u in users), None)
    return protocol.presence_sync(page).encode()


def _diff(seq: int, joins: list[str], leaves: list[str], count: int, limit: int = 100) -> bytes:
    diff = Diff(
        ROOM,
        seq,
        tuple(_member(u) for u in joins),
        (),
        tuple(Leave(u, "node_down", 1_800_000_000.0) for u in leaves),
        count,
    )
    return protocol.presence_diff(diff, limit).encode()


def _watcher() -> tuple[Load, Sock]:
    load = Load()
    sock = Sock({"rooms": [ROOM]})
    load.socks.append(sock)
    return load, sock


def test_a_view_that_is_right_is_found_right():
    load, sock = _watcher()
    load._heard_leaves(sock, _sync(3, ["a", "b"]), 0.0)
    load._heard_leaves(sock, _diff(4, [], ["b"], 1), 0.0)
    load._heard_leaves(sock, _diff(5, ["b", "c"], [], 3), 0.0)
    report = load.views_wrong({"members": {ROOM: ["a", "b", "c"]}})
    assert report["views"] == 1 and report["wrong"] == 0 and report["missing"] == 0


def test_a_view_that_missed_changes_is_found_wrong_though_its_count_is_right():
    load, sock = _watcher()
    load._heard_leaves(sock, _sync(3, ["a", "b"]), 0.0)
    load._heard_leaves(sock, _diff(4, ["c"], ["b"], 2), 0.0)  # b was to stay
    report = load.views_wrong({"members": {ROOM: ["a", "b"]}})
    assert report["wrong"] == 1
    assert report["examples"][0][3:] == [["b"], ["c"]]


def test_a_gap_leaves_the_view_wrong_until_the_next_sync():
    load, sock = _watcher()
    load._heard_leaves(sock, _sync(3, ["a"]), 0.0)
    load._heard_leaves(sock, _diff(5, ["b"], [], 2), 0.0)  # 4 never came
    assert load.views_wrong({"members": {ROOM: ["a", "b"]}})["wrong"] == 1
    load._heard_leaves(sock, _sync(5, ["a", "b"]), 0.0)
    assert load.views_wrong({"members": {ROOM: ["a", "b"]}})["wrong"] == 0


def test_a_truncated_diff_leaves_only_the_count_to_check_and_a_missing_room_is_wrong():
    load, sock = _watcher()
    load._heard_leaves(sock, _sync(3, ["a"]), 0.0)
    load._heard_leaves(sock, _diff(4, ["b", "c"], [], 3, limit=1), 0.0)
    report = load.views_wrong({"members": {ROOM: ["a", "b", "c"]}})
    assert report["wrong"] == 0 and report["unknown"] == 1
    other = Sock({"rooms": [ROOM, "storm.1"]})
    load.socks.append(other)
    load._heard_leaves(other, _sync(3, ["a", "b", "c"]), 0.0)
    assert load.views_wrong({"members": {ROOM: ["a", "b", "c"]}})["missing"] == 1
