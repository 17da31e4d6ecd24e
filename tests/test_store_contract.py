"""The SessionStore contract, run against every backend: memory, fakeredis, redis-server."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from presence.exceptions import TooManySessions
from presence.sessions import new_session_id
from presence.stores import UNSET

from .utils import UNIT, listen_ended

TTL = 20 * UNIT


async def _create(store, user="alice", **kwargs):
    return await store.create(user, new_session_id(), **kwargs)


async def _held(store, user="alice"):
    """A session with a socket open on it, as the socket's handshake leaves it."""
    session = await _create(store, user)
    return await store.touch(user, session.id, transport="websocket", state="active")


async def _listen(store):
    """The (user, id, reason) of every session end the store announces, in order."""
    seen: list[tuple[str, str, str]] = []

    async def on_ended(user: str, sid: str, reason: str) -> None:
        seen.append((user, sid, reason))

    await listen_ended(store, on_ended)
    await asyncio.sleep(2 * UNIT)  # let a pub/sub subscription settle
    return seen


async def _until(predicate):
    async with asyncio.timeout(30 * UNIT):
        while not predicate():  # noqa: ASYNC110 - polls state that has no event
            await asyncio.sleep(UNIT / 10)


async def test_create_then_get_returns_the_same_session(make_store):
    """A created session reads back with its fields, a full TTL and state active."""
    store = await make_store(ttl=60.0)
    created = await _create(store, data={"room": "lobby", "tags": [], "n": 1.5, "é": "ü"})
    got = await store.get("alice", created.id)
    assert got is not None
    assert got.id == created.id and got.user == "alice"
    assert got.data == {"room": "lobby", "tags": [], "n": 1.5, "é": "ü"}
    assert got.transport == "none" and got.state == "active"
    assert got.created_at == pytest.approx(got.last_seen, abs=0.01)
    assert got.expires_at == pytest.approx(got.last_seen + 60.0, abs=1.0)


async def test_data_may_be_any_json_value(make_store):
    """Lists, strings and null round-trip unchanged (no [] → {} conversion)."""
    store = await make_store()
    for data in ([], [1, "two"], "text|with|pipes", None, {"a": {}}):
        session = await _create(store, data=data)
        assert (await store.get("alice", session.id)).data == data


async def test_another_users_session_is_not_found(make_store):
    """A session id is meaningless under another user: get, touch and delete miss."""
    store = await make_store()
    session = await _create(store, "alice")
    assert await store.get("mallory", session.id) is None
    assert await store.touch("mallory", session.id) is None
    assert await store.delete("mallory", [session.id], "deleted") == []
    assert await store.list_sessions("mallory") == []
    assert await store.get("alice", session.id) is not None


async def test_list_holds_only_the_users_sessions_newest_first(make_store):
    """Listing returns the user's live sessions ordered by last_seen, newest first."""
    store = await make_store()
    first = await _create(store)
    await asyncio.sleep(UNIT / 5)
    second = await _create(store)
    await _create(store, "bob")
    await asyncio.sleep(UNIT / 5)
    await store.touch("alice", first.id)
    listed = await store.list_sessions("alice")
    assert [s.id for s in listed] == [first.id, second.id]


async def test_touch_extends_and_updates(make_store):
    """A heartbeat moves last_seen and expires_at forward and sets the given fields."""
    store = await make_store(ttl=60.0)
    session = await _create(store)
    await asyncio.sleep(UNIT)
    touched = await store.touch(
        "alice", session.id, transport="websocket", state="away", data={"x": 1}
    )
    assert touched is not None
    assert touched.last_seen > session.last_seen
    assert touched.expires_at > session.expires_at
    assert (touched.transport, touched.state, touched.data) == ("websocket", "away", {"x": 1})
    again = await store.touch("alice", session.id)
    assert (again.transport, again.state, again.data) == ("websocket", "away", {"x": 1})
    cleared = await store.touch("alice", session.id, data=None)
    assert cleared.data is None
    kept = await store.touch("alice", session.id, data=UNSET)
    assert kept.data is None


async def test_a_touch_for_sessions_unseen_for_a_while_passes_over_one_seen_since(make_store):
    """``unseen_for`` (a reaper's mark): a session seen more recently than that is
    returned as it is, fields and last_seen untouched; one unseen for longer is
    touched as any other. A user's only session and one of several alike."""
    store = await make_store(ttl=60.0)
    for count in (1, 3):
        user = f"reaped-{count}"
        held = [await _held(store, user) for _ in range(count)]
        await asyncio.sleep(2 * UNIT)
        for session in held:
            kept = await store.touch(
                user, session.id, transport="none", state="disconnected", unseen_for=3600.0
            )
            assert kept is not None
            assert (kept.transport, kept.state) == ("websocket", "active")
            assert kept.last_seen == pytest.approx(session.last_seen, abs=0.01)
            got = await store.get(user, session.id)
            assert got is not None and (got.transport, got.state) == ("websocket", "active")
            assert got.last_seen == pytest.approx(session.last_seen, abs=0.01)
            marked = await store.touch(
                user, session.id, transport="none", state="disconnected", unseen_for=UNIT
            )
            assert marked is not None and (marked.transport, marked.state) == (
                "none",
                "disconnected",
            )
            assert marked.last_seen > session.last_seen
        assert await store.touch(user, new_session_id(), unseen_for=UNIT) is None


async def test_touch_never_creates(make_store):
    """Heartbeating an unknown or deleted id answers None and leaves nothing behind."""
    store = await make_store()
    assert await store.touch("alice", new_session_id()) is None
    session = await _create(store)
    assert await store.delete("alice", [session.id], "deleted") == [session.id]
    assert await store.touch("alice", session.id, state="active") is None
    assert await store.get("alice", session.id) is None
    assert await store.list_sessions("alice") == []


async def test_sessions_expire_after_their_ttl(make_store):
    """Without a heartbeat a session is gone once its TTL has passed."""
    store = await make_store(ttl=TTL)
    session = await _create(store)
    await asyncio.sleep(TTL + 3 * UNIT)
    assert await store.get("alice", session.id) is None
    assert await store.touch("alice", session.id) is None
    assert await store.list_sessions("alice") == []


async def test_refreshes_keep_a_session_past_its_ttl_and_show_in_what_is_read(make_store):
    """A refresh is a touch as every read sees it: last_seen moves, the TTL slides, and
    the session outlives several TTLs (the memory store folds a refresh in lazily, when
    the session is read, swept or replaced)."""
    store = await make_store(ttl=TTL)
    session = await _create(store)
    other = await _create(store)
    for _ in range(6):
        await asyncio.sleep(TTL / 2)
        assert await store.refresh([("alice", session.id)]) == []
    read = await store.get("alice", session.id)
    assert read is not None
    assert read.last_seen > session.last_seen + 2 * TTL
    assert read.expires_at == pytest.approx(read.last_seen + TTL, abs=0.05)
    assert [s.id for s in await store.list_sessions("alice")] == [session.id]
    assert await store.get("alice", other.id) is None
    # A touch after refreshes starts from the refreshed session, not the created one.
    touched = await store.touch("alice", session.id, state="away")
    assert touched is not None and touched.last_seen >= read.last_seen
    assert touched.created_at == session.created_at and touched.state == "away"


async def test_refreshes_do_not_outlive_the_absolute_lifetime(make_store):
    """However often it is refreshed, a session ends at created + max lifetime."""
    store = await make_store(ttl=TTL, max_lifetime=2 * TTL)
    session = await _create(store)
    deadline = asyncio.get_running_loop().time() + 2 * TTL
    while asyncio.get_running_loop().time() < deadline - TTL / 4:
        await store.refresh([("alice", session.id)])
        await asyncio.sleep(TTL / 4)
    read = await store.get("alice", session.id)
    assert read is not None
    assert read.expires_at <= session.created_at + 2 * TTL + 0.05
    await asyncio.sleep(TTL / 2 + 3 * UNIT)
    assert await store.refresh([("alice", session.id)]) == [("alice", session.id)]
    assert await store.get("alice", session.id) is None


async def test_heartbeats_keep_a_session_past_its_ttl(make_store):
    """Touching within the TTL keeps the session alive across several TTLs."""
    store = await make_store(ttl=TTL)
    session = await _create(store)
    for _ in range(6):
        await asyncio.sleep(TTL / 2)
        assert await store.touch("alice", session.id) is not None
    assert await store.get("alice", session.id) is not None


async def test_delete_returns_only_what_it_deleted(make_store):
    """Deleting specific ids removes those the user holds and reports exactly them."""
    store = await make_store()
    a, b, c = [await _create(store) for _ in range(3)]
    bobs = await _create(store, "bob")
    deleted = await store.delete("alice", [a.id, b.id, b.id, bobs.id, new_session_id()], "x")
    assert sorted(deleted) == sorted([a.id, b.id])
    assert [s.id for s in await store.list_sessions("alice")] == [c.id]
    assert await store.get("bob", bobs.id) is not None


async def test_delete_all_takes_every_session_of_the_user_only(make_store):
    """Cleanup all deletes the user's sessions and no one else's."""
    store = await make_store()
    ids = {(await _create(store)).id for _ in range(3)}
    bobs = await _create(store, "bob")
    assert set(await store.delete_all("alice", "cleanup")) == ids
    assert await store.list_sessions("alice") == []
    assert await store.delete_all("alice", "cleanup") == []
    assert await store.get("bob", bobs.id) is not None


async def test_delete_inactive_spares_recent_sessions(make_store):
    """Inactive cleanup deletes sessions not seen within the threshold, not fresh ones."""
    store = await make_store()
    old = await _create(store)
    await asyncio.sleep(5 * UNIT)
    fresh = await _create(store)
    deleted = await store.delete_inactive("alice", 3 * UNIT, "cleanup")
    assert deleted == [old.id]
    assert [s.id for s in await store.list_sessions("alice")] == [fresh.id]


async def test_delete_seen_before_spares_later_writes(make_store):
    """Deleting by a cutoff keeps sessions touched after it."""
    store = await make_store()
    old = await _create(store)
    kept = await _create(store)
    await asyncio.sleep(2 * UNIT)
    cutoff = (await store.touch("alice", kept.id)).last_seen - UNIT / 2
    assert await store.delete_seen_before("alice", cutoff, "cleanup") == [old.id]
    assert await store.get("alice", kept.id) is not None


async def test_per_user_cap(make_store):
    """Past max_sessions_per_user, with every session held open, a create is refused;
    other users are unaffected."""
    store = await make_store(max_sessions_per_user=2)
    await _held(store)
    await _held(store)
    with pytest.raises(TooManySessions):
        await _create(store)
    await _create(store, "bob")


async def test_at_the_cap_the_least_recently_seen_session_is_replaced_and_announced(make_store):
    """At the cap, a new session replaces the user's least recently seen session that
    no socket holds open (closed tabs: transport none or http), wherever it is stored,
    and its end is announced as replaced; the others stay."""
    store = await make_store(max_sessions_per_user=3)
    ended = await _listen(store)
    first, second, third = [await _create(store) for _ in range(3)]
    await asyncio.sleep(UNIT / 5)
    await store.touch("alice", second.id, transport="http")
    fourth = await _create(store)
    assert {s.id for s in await store.list_sessions("alice")} == {second.id, third.id, fourth.id}
    assert await store.get("alice", first.id) is None
    await asyncio.sleep(UNIT / 5)
    await store.touch("alice", third.id)
    await store.touch("alice", fourth.id)
    fifth = await _create(store)  # the oldest now is one created beside the first
    assert {s.id for s in await store.list_sessions("alice")} == {third.id, fourth.id, fifth.id}
    await _until(lambda: len(ended) == 2)
    assert ended == [("alice", first.id, "replaced"), ("alice", second.id, "replaced")]
    assert [s.id for s in await store.list_sessions("bob")] == []


async def test_at_the_cap_a_session_held_open_is_not_replaced(make_store):
    """A session with a socket open on it is passed over, however old: the least
    recently seen one without a socket is replaced instead."""
    store = await make_store(max_sessions_per_user=3)
    held = await _held(store)
    await asyncio.sleep(UNIT / 5)
    closed = await _create(store)
    await asyncio.sleep(UNIT / 5)
    newer = await _create(store)
    fourth = await _create(store)
    assert {s.id for s in await store.list_sessions("alice")} == {held.id, newer.id, fourth.id}
    assert await store.get("alice", closed.id) is None


async def test_with_every_session_held_open_create_is_refused_and_nothing_replaced(make_store):
    """When every session of the user is held open, a create is refused (429) and every
    session stays as it was."""
    store = await make_store(max_sessions_per_user=3)
    held = [await _held(store) for _ in range(3)]
    with pytest.raises(TooManySessions, match="open in a socket"):
        await _create(store)
    assert {s.id for s in await store.list_sessions("alice")} == {s.id for s in held}


async def test_a_socket_session_not_renewed_within_the_window_is_replaced(make_store):
    """A session whose socket's process stopped renewing it (crashed) is no longer held
    open once the window has passed without a renewal, and is replaced; one renewed by
    a refresher meanwhile stays held."""
    window = 5 * UNIT
    store = await make_store(max_sessions_per_user=2, held_open_window=window)
    ended = await _listen(store)
    renewed, crashed = await _held(store), await _held(store)
    with pytest.raises(TooManySessions):
        await _create(store)
    await asyncio.sleep(window + 2 * UNIT)
    assert await store.refresh([("alice", renewed.id)]) == []
    fresh = await _create(store)
    assert {s.id for s in await store.list_sessions("alice")} == {renewed.id, fresh.id}
    await _until(lambda: len(ended) == 1)
    assert ended == [("alice", crashed.id, "replaced")]


async def test_expired_sessions_do_not_count_against_the_cap(make_store):
    """Sessions that have expired free their place."""
    store = await make_store(ttl=TTL, max_sessions_per_user=1)
    await _create(store)
    await asyncio.sleep(TTL + 3 * UNIT)
    await _create(store)


async def test_refresh_keeps_many_alive_and_reports_the_missing(make_store):
    """One refresh renews every live ref and names those that no longer exist."""
    store = await make_store(ttl=TTL)
    live = [await _create(store, user) for user in ("alice", "bob", "carol")]
    gone = await _create(store)
    await store.delete("alice", [gone.id], "deleted")
    refs = [(s.user, s.id) for s in live] + [("alice", gone.id)]
    for _ in range(5):
        await asyncio.sleep(TTL / 2)
        assert await store.refresh(refs) == [("alice", gone.id)]
    for session in live:
        got = await store.get(session.user, session.id)
        assert got is not None and got.last_seen > session.last_seen
    assert await store.get("alice", gone.id) is None


async def test_max_lifetime_is_not_extended_by_heartbeats(make_store):
    """With an absolute lifetime, heartbeats cannot keep a session past it."""
    store = await make_store(ttl=60.0, max_lifetime=TTL)
    session = await _create(store)
    assert session.expires_at <= session.created_at + TTL + 0.01
    await asyncio.sleep(TTL / 2)
    touched = await store.touch("alice", session.id)
    assert touched.expires_at <= session.created_at + TTL + 0.01
    await asyncio.sleep(TTL / 2 + 3 * UNIT)
    assert await store.touch("alice", session.id) is None
    assert await store.refresh([("alice", session.id)]) == [("alice", session.id)]


async def test_deletions_are_announced(make_store):
    """Every deletion reaches the ended subscribers with its reason."""
    store = await make_store()
    seen: list[tuple[str, str, str]] = []
    got_two = asyncio.Event()

    async def on_ended(user: str, sid: str, reason: str) -> None:
        seen.append((user, sid, reason))
        if len(seen) == 2:
            got_two.set()

    await listen_ended(store, on_ended)
    await asyncio.sleep(2 * UNIT)  # let a pub/sub subscription settle
    a, b = await _create(store), await _create(store)
    await store.delete("alice", [a.id], "deleted")
    await store.delete_all("alice", "cleanup")
    await asyncio.wait_for(got_two.wait(), timeout=30 * UNIT)
    assert seen == [("alice", a.id, "deleted"), ("alice", b.id, "cleanup")]


async def test_users_with_unusual_ids_are_kept_apart(make_store):
    """User ids with braces, colons or great length neither collide nor break keys."""
    store = await make_store()
    users = ["a{b}", "a", "x" * 200, "x" * 199 + "y", "user:1", "ü"]
    sessions = {user: await _create(store, user) for user in users}
    for user, session in sessions.items():
        assert [s.id for s in await store.list_sessions(user)] == [session.id]


# A user's first session and its later ones may be stored apart (Redis keeps the first
# in a lone slot and indexes the others): the tests below change which is which.


async def test_one_to_two_and_back_to_one_session(make_store):
    """A user's sessions read, heartbeat and list alike as they go from one to two and
    back to one, whichever of the two ends."""
    store = await make_store()
    first = await _create(store)
    second = await _create(store)
    for session in (first, second):
        assert (await store.get("alice", session.id)).id == session.id
        assert await store.touch("alice", session.id, state="away") is not None
    assert await store.delete("alice", [second.id], "deleted") == [second.id]
    assert [s.id for s in await store.list_sessions("alice")] == [first.id]
    assert (await store.touch("alice", first.id)).state == "away"
    third = await _create(store)
    assert await store.delete("alice", [first.id], "deleted") == [first.id]
    assert [s.id for s in await store.list_sessions("alice")] == [third.id]
    assert await store.get("alice", first.id) is None
    assert await store.touch("alice", first.id) is None
    assert (await store.touch("alice", third.id, data={"x": 1})).data == {"x": 1}


async def test_deleting_the_first_session_keeps_the_others(make_store):
    """With the first session deleted the later ones stay whole, and the next session
    created lives beside them."""
    store = await make_store()
    first = await _create(store, data={"n": 1})
    later = [await _create(store, data={"n": n}) for n in (2, 3)]
    assert await store.delete("alice", [first.id], "deleted") == [first.id]
    for session in later:
        got = await store.get("alice", session.id)
        assert got is not None and got.data == session.data
    again = await _create(store, data={"n": 4})
    ids = {s.id for s in await store.list_sessions("alice")}
    assert ids == {s.id for s in later} | {again.id}
    assert await store.delete("alice", [first.id], "deleted") == []
    assert set(await store.delete_all("alice", "cleanup")) == ids
    assert await store.list_sessions("alice") == []
    last = await _create(store)
    assert [s.id for s in await store.list_sessions("alice")] == [last.id]


async def test_the_cap_counts_the_first_session_and_the_others(make_store):
    """The per-user cap counts every live session, the first one included, and a
    deletion of any of them frees a place."""
    store = await make_store(max_sessions_per_user=3)
    first, second, third = [await _held(store) for _ in range(3)]
    with pytest.raises(TooManySessions):
        await _create(store)
    await store.delete("alice", [first.id], "deleted")
    fourth = await _held(store)
    with pytest.raises(TooManySessions):
        await _create(store)
    await store.delete("alice", [third.id], "deleted")
    await _held(store)
    with pytest.raises(TooManySessions):
        await _create(store)
    assert second.id in {s.id for s in await store.list_sessions("alice")}
    assert fourth.id in {s.id for s in await store.list_sessions("alice")}


async def test_a_cap_of_one(make_store):
    """With a cap of one, a user holds one session and gets another once it is gone,
    or once its socket is closed (the new one replaces it)."""
    store = await make_store(max_sessions_per_user=1)
    first = await _held(store)
    with pytest.raises(TooManySessions):
        await _create(store)
    await store.delete("alice", [first.id], "deleted")
    second = await _held(store)
    assert [s.id for s in await store.list_sessions("alice")] == [second.id]
    await store.touch("alice", second.id, transport="none", state="disconnected")
    third = await _create(store)
    assert [s.id for s in await store.list_sessions("alice")] == [third.id]


async def test_inactive_cleanup_takes_the_first_and_later_sessions_alike(make_store):
    """Inactive cleanup deletes the stale sessions, the first one among them or not,
    and keeps the fresh ones; so does deleting by a cutoff."""
    store = await make_store()
    first, second, third = [await _create(store) for _ in range(3)]
    await asyncio.sleep(5 * UNIT)
    await store.touch("alice", second.id)
    deleted = await store.delete_inactive("alice", 3 * UNIT, "cleanup")
    assert sorted(deleted) == sorted([first.id, third.id])
    assert [s.id for s in await store.list_sessions("alice")] == [second.id]

    fourth = await _create(store)
    await asyncio.sleep(5 * UNIT)
    cutoff = (await store.touch("alice", fourth.id)).last_seen - UNIT / 2
    fifth = await _create(store)
    assert await store.delete_seen_before("alice", cutoff, "cleanup") == [second.id]
    assert {s.id for s in await store.list_sessions("alice")} == {fourth.id, fifth.id}
    assert await store.delete_inactive("alice", 3 * UNIT, "cleanup") == []


async def test_refresh_renews_the_first_and_later_sessions_alike(make_store):
    """Refresh keeps a user's first and later sessions alive, moves their last_seen, and
    reports the first once it is deleted."""
    store = await make_store(ttl=TTL)
    first, second, third = [await _create(store) for _ in range(3)]
    bobs = await _create(store, "bob")
    refs = [("alice", first.id), ("bob", bobs.id), ("alice", second.id), ("alice", third.id)]
    for _ in range(4):
        await asyncio.sleep(TTL / 2)
        assert await store.refresh(refs) == []
    for session in (first, second, third, bobs):
        got = await store.get(session.user, session.id)
        assert got is not None and got.last_seen > session.last_seen + TTL
    await store.delete("alice", [first.id, third.id], "deleted")
    assert sorted(await store.refresh(refs)) == sorted([("alice", first.id), ("alice", third.id)])
    assert await store.get("alice", first.id) is None


async def test_list_orders_the_first_and_later_sessions_by_last_seen(make_store):
    """Listing orders sessions by last_seen, newest first, whichever was created first."""
    store = await make_store()
    first, second, third = [await _create(store) for _ in range(3)]
    for order in ([first, third, second], [second, first, third], [third, second, first]):
        for session in reversed(order):
            await asyncio.sleep(UNIT / 5)
            await store.touch("alice", session.id)
        assert [s.id for s in await store.list_sessions("alice")] == [s.id for s in order]
    await asyncio.sleep(UNIT / 5)
    await store.refresh([("alice", first.id)])
    listed = [s.id for s in await store.list_sessions("alice")]
    assert listed == [first.id, third.id, second.id]


async def test_concurrent_heartbeats_each_get_their_own_session(make_store):
    """Heartbeats made at once (which the Redis store sends together) each answer for
    their own session: fields as asked, users apart, an unknown or foreign id None,
    and data with the script's separator in it intact."""
    store = await make_store()
    store.max_sessions_per_user = 100
    users = ["alice", "bob", "user|with|pipes", "ünï cödé", "carol"]
    sessions = [await _create(store, user) for user in users for _ in range(3)]
    asks = [
        (
            s,
            {"state": "away"}
            if i % 3 == 0
            else {"transport": "http", "data": {"i": i, "p": "a|b"}},
        )
        for i, s in enumerate(sessions)
    ]
    results = await asyncio.gather(
        *(store.touch(s.user, s.id, **ask) for s, ask in asks),
        store.touch("mallory", sessions[0].id),
        store.touch("alice", new_session_id()),
    )
    *touched, foreign, unknown = results
    assert foreign is None and unknown is None
    for (session, ask), result in zip(asks, touched, strict=True):
        assert result is not None
        assert (result.user, result.id) == (session.user, session.id)
        assert result.last_seen >= session.last_seen
        if "state" in ask:
            assert (result.state, result.transport, result.data) == ("away", "none", None)
        else:
            assert (result.state, result.transport) == ("active", "http")
            assert result.data == ask["data"]
        stored = await store.get(session.user, session.id)
        assert stored is not None
        assert stored.expires_at == pytest.approx(result.expires_at, abs=0.01)
        assert dataclasses.replace(stored, expires_at=result.expires_at) == result
