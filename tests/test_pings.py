"""The process-wide keepalive schedule (``presence._pings``) on a real event loop.

The sockets' side (pings sent, pongs matched, silent clients closed 1011) is tested
against real servers in ``tests/test_wsproto.py`` and ``tests/test_websocket.py``.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from presence._pings import MAX_RESOLUTION, PingSchedule, resolution_for, schedule_for

from .utils import UNIT

RESOLUTION = UNIT / 4


class Socket:
    """A pinger that records when it was called, and may do something then."""

    def __init__(self, loop: asyncio.AbstractEventLoop, then=None) -> None:
        self.loop = loop
        self.keepalive_tick: int | None = None
        self.calls: list[float] = []
        self.then = then

    def keepalive_due(self) -> None:
        self.calls.append(self.loop.time())
        if self.then is not None:
            self.then(self)


async def test_each_socket_is_called_once_at_its_tick_and_not_before():
    """Sockets due at many different times are each called once, never before their
    time and at most a tick (and the loop's lateness) after it, by one timer a tick."""
    loop = asyncio.get_running_loop()
    schedule = PingSchedule(loop, RESOLUTION)
    start = loop.time()
    sockets = [(Socket(loop), start + (i % 17) * UNIT / 7) for i in range(200)]
    for socket, when in sockets:
        schedule.add(socket, when)
    assert len(schedule) == 200
    await asyncio.sleep(3 * UNIT + 2 * RESOLUTION)
    for socket, when in sockets:
        assert len(socket.calls) == 1
        assert socket.calls[0] >= when - loop._clock_resolution  # type: ignore[attr-defined]
        assert socket.calls[0] <= when + RESOLUTION + 10 * UNIT  # generous: a busy host
        assert socket.keepalive_tick is None
    assert len(schedule) == 0


async def test_a_discarded_socket_is_not_called():
    loop = asyncio.get_running_loop()
    schedule = PingSchedule(loop, RESOLUTION)
    kept, dropped = Socket(loop), Socket(loop)
    schedule.add(kept, loop.time() + UNIT)
    schedule.add(dropped, loop.time() + UNIT)
    schedule.discard(dropped)
    schedule.discard(dropped)  # Twice: nothing happens.
    await asyncio.sleep(UNIT + 3 * RESOLUTION)
    assert len(kept.calls) == 1 and dropped.calls == []


async def test_a_socket_filed_again_from_its_call_is_called_again_later():
    """A ping files the pong's deadline from inside the pass; one due at once (a round
    trip longer than the interval) goes to the next tick, so a pass always ends."""
    loop = asyncio.get_running_loop()
    schedule = PingSchedule(loop, RESOLUTION)

    def again(socket: Socket) -> None:
        if len(socket.calls) < 3:
            schedule.add(socket, loop.time())  # Due now: the next tick.

    socket = Socket(loop, again)
    schedule.add(socket, loop.time())
    await asyncio.sleep(10 * RESOLUTION + UNIT)
    assert len(socket.calls) == 3
    assert socket.calls[0] < socket.calls[1] < socket.calls[2]


async def test_a_socket_unfiled_by_an_earlier_call_of_the_same_pass_is_skipped():
    loop = asyncio.get_running_loop()
    schedule = PingSchedule(loop, RESOLUTION)
    victim = Socket(loop)
    first = Socket(loop, lambda _: schedule.discard(victim))
    when = loop.time() + UNIT
    schedule.add(first, when)
    schedule.add(victim, when)
    # Sets have no order: whichever comes first, the victim is called at most once and,
    # when the other came first, not at all.
    await asyncio.sleep(UNIT + 3 * RESOLUTION)
    assert len(first.calls) == 1
    assert len(victim.calls) <= 1


async def test_a_failing_call_is_reported_and_the_others_still_run():
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        schedule = PingSchedule(loop, RESOLUTION)

        def fail(_: Socket) -> None:
            raise RuntimeError("boom")

        sockets = [Socket(loop, fail)] + [Socket(loop) for _ in range(5)]
        for socket in sockets:
            schedule.add(socket, loop.time() + UNIT)
        await asyncio.sleep(UNIT + 3 * RESOLUTION)
        assert all(len(socket.calls) == 1 for socket in sockets)
        assert [type(c["exception"]) for c in reported] == [RuntimeError]
    finally:
        loop.set_exception_handler(None)


async def test_an_earlier_socket_rearms_the_timer():
    """A socket due before every other filed gets its own, earlier, tick."""
    loop = asyncio.get_running_loop()
    schedule = PingSchedule(loop, RESOLUTION)
    late, early = Socket(loop), Socket(loop)
    schedule.add(late, loop.time() + 20 * UNIT)
    schedule.add(early, loop.time() + UNIT)
    await asyncio.sleep(UNIT + 3 * RESOLUTION)
    assert len(early.calls) == 1 and late.calls == []
    schedule.discard(late)


@pytest.mark.parametrize(
    ("interval", "timeout", "expected"),
    [
        (30.0, 20.0, MAX_RESOLUTION),
        (0.3, 0.5, 0.03),
        (None, None, MAX_RESOLUTION),
        (5.0, None, 0.1),
    ],
)
def test_the_resolution_is_a_tenth_of_a_second_or_finer(interval, timeout, expected):
    assert resolution_for(interval, timeout) == pytest.approx(expected)


async def test_one_schedule_a_loop_and_resolution():
    loop = asyncio.get_running_loop()
    assert schedule_for(loop, 0.1) is schedule_for(loop, 0.1)
    assert schedule_for(loop, 0.1) is not schedule_for(loop, 0.05)


async def test_every_socket_of_many_is_pinged_once_an_interval(monkeypatch):
    """A real server holding many sockets (real clients, which answer pings by
    themselves) pings each of them about once an interval on the one schedule: never
    more often, and none left out."""
    import httpx
    from websockets.asyncio.client import connect

    from presence.wsproto import PresenceWebSocketProtocol

    from .utils import make_settings, serve, token

    pinged: dict[int, int] = {}
    original = PresenceWebSocketProtocol.send_keepalive_ping

    def counted(self: PresenceWebSocketProtocol) -> None:
        pinged[id(self)] = pinged.get(id(self), 0) + 1
        original(self)

    monkeypatch.setattr(PresenceWebSocketProtocol, "send_keepalive_ping", counted)
    interval, sockets, watched = 5 * UNIT, 60, 30 * UNIT
    settings = make_settings(heartbeat_interval=interval, ping_timeout=5 * UNIT)
    async with serve(settings) as server, contextlib.AsyncExitStack() as stack:
        for i in range(sockets):
            user = f"pinged-{i}"
            async with httpx.AsyncClient(
                base_url=server.http + "/api/v1/chat",
                headers={"authorization": f"Bearer {token(user)}"},
            ) as client:
                sid = (await client.post("/sessions")).json()["id"]
            url = f"{server.ws}/api/v1/chat/sessions/{sid}/ws?token={token(user)}"
            await stack.enter_async_context(connect(url, ping_interval=None))
        pinged.clear()
        await asyncio.sleep(watched)
        counts = list(pinged.values())
    assert len(counts) == sockets
    # At most one ping an interval (plus the one in flight at the window's start); at
    # least one in every interval and a tick, with room for a slow host.
    assert max(counts) <= watched / interval + 1
    assert min(counts) >= watched / (interval + 10 * UNIT) - 1
