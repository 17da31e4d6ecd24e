"""The room service's fan-out to this process's watchers, with the bus's deliveries
held back so that their order against a sync can be chosen.

The store is the memory presence store, whose flush hands each diff to a list here
instead of a bus; each diff is then given to the room's listener when the test says,
as the bus would give it, late.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from presence import keys
from presence.asgi import protocol
from presence.auth import Identity
from presence.bus import EventBus
from presence.bus.memory import MemoryBackend
from presence.registry import Registry
from presence.rooms import _SLICE, RoomService
from presence.sessions import SessionService
from presence.stores.memory import MemoryStore
from presence.stores.presence_memory import MemoryPresenceStore

from .utils import make_settings

ROOM = "lobby"


class _Watcher:
    """A socket that takes everything at once, and keeps what it was sent."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.session_id = f"{user}-s"
        self.watching: dict[str, int | None] = {}
        self.got: list[dict[str, Any]] = []

    async def offer(self, text: str) -> bool:
        self.got.append(json.loads(text))
        return True

    async def send(self, text: str) -> None:
        self.got.append(json.loads(text))

    def kinds(self) -> list[tuple[str, int]]:
        return [(m["type"], m["seq"]) for m in self.got]


def _room_service(store: MemoryPresenceStore, diff_window: float) -> RoomService:
    """The room service over ``store``, on a memory bus, with this diff window."""
    return RoomService(
        make_settings(diff_window=diff_window),
        store,
        EventBus(MemoryBackend()),
        channel=lambda room: keys.room_channel("presence", room),
        encode_sync=protocol.presence_sync,
        encode_diff=protocol.presence_diff,
    )


async def _service() -> tuple[RoomService, MemoryPresenceStore, list[str]]:
    published: list[str] = []
    store = MemoryPresenceStore(lambda room, data: published.append(data))
    await store.open()
    # A window long enough that no flush runs by itself: the test flushes.
    service = _room_service(store, diff_window=3600.0)
    return service, store, published


async def _settle() -> None:
    """Lets the tasks the service spawned (a sync, its page's read) run to their end."""
    for _ in range(20):
        await asyncio.sleep(0)


async def _join(service: RoomService, user: str) -> None:
    tab = await service.open_tab(user, f"{user}-tab")
    await service.join(Identity(user, "bearer", None), tab, ROOM, {"name": user})


async def test_a_sync_read_ahead_of_the_bus_keeps_the_diff_for_the_others():
    """A watcher that comes (a member joining, say) reads the room after a flush whose
    diff has not reached this process yet: the watchers already here still get that
    diff when the bus brings it, as a diff, and no sync; the newcomer, whose page had
    it, does not get it twice."""
    service, store, published = await _service()
    old = _Watcher("old")
    await service.watch(old, ROOM)
    await _join(service, "ann")
    await store.flush(ROOM)  # diff 1, on its way
    newcomer = _Watcher("new")
    await service.watch(newcomer, ROOM)  # its page is at diff 1 already
    heard = service._listeners[ROOM]
    await heard(published[0])
    await _join(service, "bob")
    await store.flush(ROOM)
    await heard(published[1])
    await _settle()  # a sync the service spawned would have run by now
    first = old.got[0]["seq"]
    assert old.kinds() == [
        ("presence.sync", first),
        ("presence.diff", first + 1),
        ("presence.diff", first + 2),
    ]
    assert newcomer.kinds() == [("presence.sync", first + 1), ("presence.diff", first + 2)]
    assert [m["user"] for m in newcomer.got[0]["members"]] == ["ann"]
    assert [m["user"] for m in old.got[1]["joins"]] == ["ann"]


async def test_a_watcher_behind_the_bus_is_still_synced():
    """The fix keeps the gap rule: a diff this process did not hear (the bus dropped
    it) still sends every watcher here a fresh sync."""
    service, store, published = await _service()
    watcher = _Watcher("w")
    await service.watch(watcher, ROOM)
    for user in ("ann", "bob"):
        await _join(service, user)
        await store.flush(ROOM)
    heard = service._listeners[ROOM]
    await heard(published[0])
    await _join(service, "cyd")
    await store.flush(ROOM)
    await heard(published[2])  # diff 2 never came
    await _settle()
    first = watcher.got[0]["seq"]
    assert watcher.kinds() == [
        ("presence.sync", first),
        ("presence.diff", first + 1),
        ("presence.sync", first + 3),
    ]
    assert watcher.got[-1]["count"] == 3


async def test_watchers_syncing_at_once_share_one_read_of_the_room():
    """A crowd watching a room at once (each member joining watches it) costs one read
    and one encoding of the room, not one each; every watcher still gets the members,
    and then every diff after the page's seq."""
    service, store, published = await _service()
    for user in ("ann", "bob"):
        await _join(service, user)
    await store.flush(ROOM)
    reads = 0
    room = store.room

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)  # a round trip, during which the others come
        return await room(*args, **kwargs)

    store.room = counted  # type: ignore[method-assign]
    crowd = [_Watcher(f"w{i}") for i in range(20)]
    await asyncio.gather(*(service.watch(w, ROOM) for w in crowd))
    assert reads == 1
    await _join(service, "cyd")
    await store.flush(ROOM)
    await service._listeners[ROOM](published[-1])
    for watcher in crowd:
        sync, diff = watcher.got
        assert sync["type"] == "presence.sync"
        assert sorted(m["user"] for m in sync["members"]) == ["ann", "bob"]
        assert (diff["type"], diff["seq"]) == ("presence.diff", sync["seq"] + 1)
        assert [m["user"] for m in diff["joins"]] == ["cyd"]
    # Once the read is done, the next watcher reads the room afresh.
    late = _Watcher("late")
    await service.watch(late, ROOM)
    assert reads == 2
    assert late.got[0]["count"] == 3


async def test_a_failed_shared_read_fails_every_sync_waiting_on_it_and_no_more():
    """The store away during a shared read: each watcher waiting is left for the next
    diff to sync (as one alone is), and the next watcher reads again."""
    from presence.exceptions import StoreUnavailable

    service, store, _ = await _service()
    room = store.room
    failing = True

    async def away(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.01)
        if failing:
            raise StoreUnavailable("redis unavailable")
        return await room(*args, **kwargs)

    store.room = away  # type: ignore[method-assign]
    crowd = [_Watcher(f"w{i}") for i in range(5)]
    await asyncio.gather(*(service.watch(w, ROOM) for w in crowd))
    # Each is left behind (below any seq), so that the room's next diff syncs it.
    assert all(w.got == [] and w.watching[ROOM] == -1 for w in crowd)
    failing = False
    later = _Watcher("later")
    await service.watch(later, ROOM)
    assert later.kinds()[0][0] == "presence.sync"
    assert not service._pages


async def test_holding_every_tab_again_keeps_the_new_lease(monkeypatch: Any):
    """A process taken for dead holds its tabs again under a new name; when that takes
    longer than a lease lasts (thousands of tabs, a busy loop), the new name's lease is
    renewed meanwhile rather than lapsing, which would have it reaped again."""
    from presence.rooms import RoomService as Service

    monkeypatch.setattr(keys, "LEASE_RENEW_INTERVAL", 0.02)
    service, store, _ = await _service()
    for i in range(10):
        await service.open_tab(f"u{i}", f"u{i}-tab")
    renewals: list[str] = []
    renew = store.renew

    async def counted(holder: str, ttl: float) -> bool:
        renewals.append(holder)
        return await renew(holder, ttl)

    hold_in_full = Service._hold_in_full

    async def slow(self: Service, tab: Any) -> None:
        await asyncio.sleep(0.01)  # a round trip on a busy process
        await hold_in_full(self, tab)

    store.renew = counted  # type: ignore[method-assign]
    monkeypatch.setattr(Service, "_hold_in_full", slow)
    old = service.holder
    await service._hold_all_again()
    assert service.holder != old
    # Renewed at the start, then about every 20 ms of the 100 ms the holds took.
    assert renewals.count(service.holder) >= 3
    assert old not in renewals


async def test_a_look_for_lapsed_leases_that_waits_does_not_hold_back_the_renewals(
    monkeypatch: Any,
):
    """The look for other processes' lapsed leases waits behind a burst of calls (a
    reconnect storm): the renewals of this process's own lease go on meanwhile, on
    their schedule, and one look runs at a time. (In line, a look that took 1.2 s on top
    of a late renewal left the lease unrenewed past the grace, and the busy process was
    reaped while alive.)"""
    monkeypatch.setattr(keys, "LEASE_RENEW_INTERVAL", 0.02)
    monkeypatch.setattr(keys, "LEASE_TTL", 0.06)
    service, store, _ = await _service()
    renewals: list[str] = []
    looks: list[float] = []
    stuck = asyncio.Event()
    called = asyncio.Event()  # set at each renewal and look
    renew = store.renew

    async def counted(holder: str, ttl: float) -> bool:
        renewals.append(holder)
        called.set()
        return await renew(holder, ttl)

    async def waits() -> list[tuple[str, float]]:
        looks.append(time.monotonic())
        called.set()
        await stuck.wait()
        return []

    async def until(check: Any) -> None:
        async with asyncio.timeout(5):
            while not check():
                called.clear()
                await called.wait()

    store.renew = counted  # type: ignore[method-assign]
    store.lapsed = waits  # type: ignore[method-assign]
    await service.start()
    try:
        await until(lambda: looks)
        before = len(renewals)
        # Ten renewals more while the look is stuck (none came before the fix).
        await until(lambda: len(renewals) >= before + 10)
        assert len(looks) == 1
        stuck.set()
        await until(lambda: len(looks) >= 2)  # once it is done, the next tick looks again
    finally:
        await service.stop()


async def test_a_resync_does_not_share_a_read_begun_before_it():
    """Presence moving to another store (Redis away, or back), or the bus reconnecting,
    syncs every watcher again: those syncs read the room afresh rather than wait on a
    read begun before, which may be of the store just left and fail."""
    from presence.exceptions import StoreUnavailable

    service, store, _ = await _service()
    await _join(service, "ann")
    await store.flush(ROOM)
    room = store.room
    gate = asyncio.Event()

    async def doomed(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        raise StoreUnavailable("redis unavailable")

    store.room = doomed  # type: ignore[method-assign]
    watcher = _Watcher("w")
    first = asyncio.ensure_future(service.watch(watcher, ROOM))
    await _settle()
    store.room = room  # type: ignore[method-assign]
    await service._resync_all()
    await _settle()
    gate.set()
    await first
    await _settle()
    assert watcher.kinds()[0][0] == "presence.sync"
    assert watcher.watching[ROOM] == watcher.got[0]["seq"]


async def test_a_sync_the_store_could_not_answer_is_made_at_the_next_diff():
    """The store not answering a watcher's sync in time (a busy process's Redis call past
    its bound) leaves the watcher behind, not waiting: the room's next diff syncs it,
    and it is not passed over by every diff after."""
    from presence.exceptions import StoreUnavailable

    service, store, published = await _service()
    room = store.room

    async def late(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("redis unavailable")

    store.room = late  # type: ignore[method-assign]
    watcher = _Watcher("w")
    await service.watch(watcher, ROOM)
    assert watcher.got == []
    assert watcher.watching[ROOM] is not None
    store.room = room  # type: ignore[method-assign]
    await _join(service, "ann")
    await store.flush(ROOM)
    await service._listeners[ROOM](published[-1])
    await _settle()
    assert [m["type"] for m in watcher.got] == ["presence.sync"]
    assert [m["user"] for m in watcher.got[0]["members"]] == ["ann"]
    await _join(service, "bob")
    await store.flush(ROOM)
    await service._listeners[ROOM](published[-1])
    assert watcher.kinds()[-1] == ("presence.diff", watcher.got[0]["seq"] + 1)


async def test_a_sync_the_store_could_not_answer_is_tried_again_in_a_quiet_room(
    monkeypatch: Any,
):
    """No diff comes in a quiet room to prompt a sync the store did not answer: the
    service tries it again by itself, later and later, until the store answers."""
    import presence.rooms
    from presence.exceptions import StoreUnavailable

    monkeypatch.setattr(presence.rooms, "_RESYNC_FIRST", 0.01)
    service, store, _ = await _service()
    room = store.room
    failures = 0

    async def busy(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise StoreUnavailable("redis unavailable")
        return await room(*args, **kwargs)

    store.room = busy  # type: ignore[method-assign]
    watcher = _Watcher("w")
    await service.watch(watcher, ROOM)
    assert watcher.got == []
    for _ in range(100):  # 0.01 + 0.02 + 0.04 s of retries, then the sync
        if watcher.got:
            break
        await asyncio.sleep(0.01)
    assert failures == 3
    assert watcher.kinds() == [("presence.sync", watcher.got[0]["seq"])]
    assert watcher.watching[ROOM] == watcher.got[0]["seq"]
    await service.stop()
    assert not service._resyncs


async def test_a_fan_out_to_many_watchers_yields_and_the_rooms_flush_waits_for_it():
    """A diff for more watchers than one slice is sent a slice at a time, the loop run
    between slices; a flush of the room begun meanwhile publishes only once the fan-out
    has ended; and every watcher gets the diff once, after its sync."""
    service, store, published = await _service()
    watchers = [_Watcher(f"w{i}") for i in range(2 * _SLICE + 1)]
    for watcher in watchers:
        await service.watch(watcher, ROOM)
    await _join(service, "ann")
    await store.flush(ROOM)
    fan = asyncio.ensure_future(service._listeners[ROOM](published[0]))
    await asyncio.sleep(0)  # the first slice is sent, then the fan-out yields
    had = sum(1 for w in watchers if len(w.got) == 2)
    assert 0 < had < len(watchers) and not fan.done()
    await _join(service, "bob")
    flush = asyncio.ensure_future(service._flush(ROOM))
    await asyncio.sleep(0)
    assert len(published) == 1 and not flush.done()  # waiting for the fan-out
    await fan
    await flush
    assert len(published) == 2
    first = watchers[0].got[0]["seq"]
    for watcher in watchers:
        assert watcher.kinds() == [("presence.sync", first), ("presence.diff", first + 1)]


async def test_stop_returns_within_its_bound_though_a_task_loses_its_cancellations():
    """A task that takes every cancellation for something else (as redis-py's wait_for
    can on Python 3.11) cannot hold the shutdown: stop() cancels again and gives up
    after its bound (4 x PRESENCE_REDIS_TIMEOUT), leaving the task to the loop."""
    service, _, _ = await _service()
    stubborn = asyncio.Event()

    async def deaf() -> None:
        while not stubborn.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # lost, as a cancellation in redis-py's wait_for can be

    service._spawn(deaf())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(service.stop(), timeout=30)
    assert loop.time() - started < 10 * service.settings.redis_timeout
    (task,) = service._tasks  # left to the loop, still running
    stubborn.set()
    task.cancel()  # taken now: the loop sees the event set and ends
    await asyncio.wait_for(task, timeout=5)


async def test_a_long_reap_flushes_its_rooms_as_it_goes_and_marks_the_sessions_after():
    """A reap in several steps: the rooms of its first step are flushed while it goes
    on (it waits here for that flush, so this fails if the leaves went only at its
    end); the rest once it ends; the reaped sessions are marked disconnected only after
    every room's flush, not ahead of them."""
    events: list[str] = []
    first_flushed = asyncio.Event()

    class SteppedReap(MemoryPresenceStore):
        async def reap(self, holder, *, if_lapsed=False, progress=None):
            events.append("reaped lobby")
            assert progress is not None
            progress(["lobby"])
            await asyncio.wait_for(first_flushed.wait(), 30)
            events.append("reaped dev")
            progress(["dev"])
            return ["dev", "lobby"], [("ann", "ann-s"), ("bob", "bob-s")]

        async def flush(self, room):
            events.append(f"flush {room}")
            if room == "lobby":
                first_flushed.set()
            return None

    store = SteppedReap()
    await store.open()
    service = _room_service(store, diff_window=0.01)

    async def reaped(tabs: list[tuple[str, str]], since: float) -> None:
        assert since >= 0
        events.append(f"marked {len(tabs)}")

    service.on_reaped = reaped
    service._reaping.add("p-dead")
    await service._reap("p-dead", renewed=0.0)  # long lapsed: no grace left to wait
    assert events == ["reaped lobby", "flush lobby", "reaped dev", "flush dev", "marked 2"]
    assert "p-dead" not in service._reaping


async def test_a_reapers_late_mark_does_not_undo_a_session_held_again_since_the_reap():
    """The reaper marks a dead process's sessions disconnected only after the rooms'
    diffs are out. A process that was stalled, not dead, holds its sockets' tabs again
    meanwhile and marks their sessions connected: the reaper's mark, coming after,
    passes over them (seen since the reap began), and marks the rest."""
    store = MemoryStore(ttl=60.0)
    await store.open()
    sessions = SessionService(make_settings(), store, Registry())
    back = await sessions.create("ann")
    gone = await sessions.create("bob")
    for session in (back, gone):
        await sessions.attach(session.user, session.id)
    await asyncio.sleep(0.05)
    began = time.monotonic()  # the reap: both tabs taken from the stalled process
    await asyncio.sleep(0.05)
    await sessions.held_again([("ann", back.id, "online")])  # it was only stalled
    await sessions.reaped([("ann", back.id), ("bob", gone.id)], time.monotonic() - began)
    ann, bob = await store.get("ann", back.id), await store.get("bob", gone.id)
    assert ann is not None and (ann.transport, ann.state) == ("websocket", "active")
    assert bob is not None and (bob.transport, bob.state) == ("none", "disconnected")
    await store.close()


async def test_a_stop_leaves_the_tabs_of_the_sockets_it_closes_held_for_the_restart_grace():
    """Asked to stop (``drain``, as the stop signal does), the service releases nothing
    for a socket closed ``closed``: its member stays and no leave is flushed; a session
    ended meanwhile still leaves. Its last renewal, as it stops, lasts the restart grace,
    so a reaper elsewhere waits that long. With no restart grace a stop is a release."""
    for grace in (45.0, 0.0):
        store = MemoryPresenceStore()
        await store.open()
        service = RoomService(
            make_settings(diff_window=3600.0, restart_grace=grace),
            store,
            EventBus(MemoryBackend()),
            channel=lambda room: keys.room_channel("presence", room),
            encode_sync=protocol.presence_sync,
            encode_diff=protocol.presence_diff,
        )
        await service.start()
        ann = await service.open_tab("ann", "ann-tab")
        await service.join(Identity("ann", "bearer", None), ann, ROOM, None)
        bob = await service.open_tab("bob", "bob-tab")
        await service.join(Identity("bob", "bearer", None), bob, ROOM, None)
        await store.flush(ROOM)
        service.drain()
        assert service.draining is (grace > 0)
        await service.close_tab(ann, "closed")
        await service.close_tab(bob, "ended")
        assert await store.flush(ROOM) is None  # a release leaves after the grace
        # The offline grace is over: what was released departs.
        for user in ("ann", "bob"):
            await store.depart(user, f"{user}-tab", since=time.time())
        diff = await store.flush(ROOM)
        assert diff is not None
        left = [(x.user, x.reason) for x in diff.leaves]
        if grace:
            assert left == [("bob", "ended")]
            assert [m.user for m in (await store.room(ROOM)).members] == ["ann"]
        else:
            assert left == [("ann", "closed"), ("bob", "ended")]
            assert (await store.room(ROOM)).members == ()
        assert list(service.held_tabs()) == []
        stopped = time.time()
        await service.stop()
        expiry, _ = store._leases[service.holder]
        if grace:
            assert stopped + grace - 1 <= expiry <= time.time() + grace
        else:
            assert expiry <= time.time() + keys.LEASE_TTL
        await store.close()
