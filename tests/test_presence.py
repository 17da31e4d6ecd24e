"""Presence over real processes and real sockets.

Real ``python -m presence serve`` processes share one real redis-server; real WebSocket
clients join and watch rooms through them. What must hold (issue 10): a join on one
process reaches a watcher on another within a second; a watch starts with a sync and
every diff after it is numbered one more than the last; a page refresh inside
``PRESENCE_OFFLINE_GRACE`` is neither a leave nor a join; a user's first tab makes one
join and their last tab's departure one leave, with the reason it went for (``left``,
``closed``, ``timeout``, ``ended``, ``expired``; ``node_down`` is in
tests/test_presence_reclaim.py); ``away`` only when every tab is hidden or idle; a
status or meta change is an update; the REST join, leave and reads; the rooms claim of
a token; and the abuse every new input gets.

The processes run with a short grace and short ping settings (see ``ENV``), so that a
departure is announced within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from presence import keys
from presence.models import Diff, Leave, Member, RoomPage
from presence.rooms import GapError, View

from .utils import JWT_SECRET, UNIT, RedisServer, ServerProcess, server_process

pytestmark = pytest.mark.slow

CHAT = "/api/v1/chat"
PRESENCE = "/api/v1/presence"
#: The grace the processes run with: long enough for a refresh on a loaded machine,
#: short enough that a departure is announced within seconds.
GRACE = 10 * UNIT
#: The issue's bound for a join on one process to reach a watcher on another.
ONE_SECOND = 10 * UNIT
#: How long a departure may take to be announced: the grace, a diff window and slack.
DEPARTED = GRACE + 30 * UNIT
#: How long to watch for something that must not come.
QUIET = GRACE + 10 * UNIT


def env(redis_url: str, **extra: str) -> dict[str, str]:
    """A server process's environment: JWT mode, rooms by the token's claim, a short
    grace, pings every 2 s answered within 1 s (so a silent client times out within 3 s;
    a REST tab lapses after 4 s without heartbeats)."""
    return {
        "REDIS_URL": redis_url,
        "PRESENCE_JWT_SECRET": JWT_SECRET,
        "LOG_LEVEL": "warning",
        "PRESENCE_OFFLINE_GRACE": str(GRACE),
        "HEARTBEAT_INTERVAL": str(20 * UNIT),
        "PRESENCE_PING_TIMEOUT": str(10 * UNIT),
        **extra,
    }


def name(prefix: str) -> str:
    """A name no other test uses (the processes are shared by the module's tests)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def claims_token(user: str, rooms: tuple[str, ...] | None = ("*",)) -> str:
    """A JWT for ``user`` with a ``rooms`` claim (None: without one)."""
    now = int(time.time())
    values: dict[str, Any] = {"sub": user, "iat": now, "exp": now + 3600}
    if rooms is not None:
        values["rooms"] = list(rooms)
    return jwt.encode(values, JWT_SECRET, "HS256")


class User:
    """A user with a token, who makes sessions and opens their sockets."""

    def __init__(self, user: str | None = None, rooms: tuple[str, ...] | None = ("*",)) -> None:
        self.name = user or name("u")
        self.token = claims_token(self.name, rooms)

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    async def call(self, server: ServerProcess, method: str, path: str, **kwargs: Any):
        async with httpx.AsyncClient(base_url=server.http, headers=self.headers) as client:
            return await client.request(method, path, timeout=50 * UNIT, **kwargs)

    async def session(self, server: ServerProcess) -> str:
        response = await self.call(server, "POST", f"{CHAT}/sessions")
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def tab(
        self, server: ServerProcess, session_id: str | None = None, *, views: bool = True
    ) -> Tab:
        """A socket of a session (a new one unless given), its snapshot read."""
        if session_id is None:
            session_id = await self.session(server)
        return await Tab.open(server, self, session_id, views=views)


def _member(value: dict[str, Any]) -> Member:
    return Member(value["user"], value["status"], value["sessions"], value["meta"], 0.0)


def page_of(message: dict[str, Any]) -> RoomPage:
    members = tuple(_member(m) for m in message["members"])
    return RoomPage(message["room"], message["seq"], message["count"], members)


def diff_of(message: dict[str, Any]) -> Diff:
    return Diff(
        message["room"],
        message["seq"],
        tuple(_member(m) for m in message["joins"]),
        tuple(_member(m) for m in message["updates"]),
        tuple(Leave(x["user"], x["reason"], 0.0) for x in message["leaves"]),
        message["count"],
    )


class Tab:
    """One real WebSocket of one session, read in the background: every message kept in
    order, and each watched room's :class:`View` (a sync, then its diffs applied in
    order; a gap is recorded, never applied)."""

    def __init__(
        self, websocket: ClientConnection, user: User, session_id: str, *, views: bool = True
    ) -> None:
        self.websocket = websocket
        self.user = user
        self.session_id = session_id
        #: False: presence messages are dropped unread (a member that watches nothing
        #: of interest, among hundreds).
        self.keeps_presence = views
        self.messages: list[dict[str, Any]] = []
        self.views: dict[str, View] = {}
        self.gaps: list[str] = []
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, server: ServerProcess, user: User, session_id: str, *, views: bool = True
    ) -> Tab:
        url = f"{server.ws}{CHAT}/sessions/{session_id}/ws?token={user.token}"
        websocket = await connect(url, ping_interval=None, compression=None)
        tab = cls(websocket, user, session_id, views=views)
        await tab.next("snapshot")
        return tab

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for text in self.websocket:
                if not self.keeps_presence and text.startswith('{"type":"presence.'):
                    continue
                message = json.loads(text)
                kind = message.get("type")
                if kind == "presence.sync":
                    view = self.views.setdefault(message["room"], View(message["room"]))
                    view.sync(page_of(message))
                elif kind == "presence.diff":
                    view = self.views.setdefault(message["room"], View(message["room"]))
                    try:
                        view.apply(diff_of(message))
                    except GapError as gap:
                        self.gaps.append(str(gap))
                async with self._arrived:
                    self.messages.append(message)
                    self._arrived.notify_all()
        async with self._arrived:
            self._arrived.notify_all()

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.websocket.send(message if isinstance(message, str) else json.dumps(message))

    def received(self, kind: str, room: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages
            if m.get("type") == kind and (room is None or m.get("room") == room)
        ]

    async def next(
        self,
        kind: str,
        room: str | None = None,
        *,
        where: Callable[[dict[str, Any]], bool] = lambda m: True,
        after: int = 0,
        within: float = 50 * UNIT,
    ) -> dict[str, Any]:
        """The first message of ``kind`` (about ``room``) from index ``after`` on that
        ``where`` accepts, waiting for it if need be."""

        def found() -> dict[str, Any] | None:
            for message in self.messages[after:]:
                if (
                    message.get("type") == kind
                    and (room is None or message.get("room") == room)
                    and where(message)
                ):
                    return message
            return None

        async with asyncio.timeout(within):
            async with self._arrived:
                while (message := found()) is None:
                    if self._reader.done():
                        raise AssertionError(f"socket closed before a {kind}: {self.messages}")
                    await self._arrived.wait()
        return message

    async def watch(self, room: str) -> dict[str, Any]:
        """Watches ``room``; returns its sync."""
        mark = len(self.messages)
        await self.send({"type": "presence.watch", "room": room})
        return await self.next("presence.sync", room, after=mark)

    async def join(self, room: str, meta: Any = None, **extra: Any) -> None:
        await self.send({"type": "presence.join", "room": room, "meta": meta, **extra})

    async def error(self, after: int, within: float = 50 * UNIT) -> dict[str, Any]:
        return await self.next("error", after=after, within=within)

    async def close(self) -> None:
        self.websocket.transport.resume_reading()
        await self.websocket.close()
        await self._reader

    def silence(self) -> None:
        """Stops reading the socket: pings go unanswered, as from a frozen client."""
        self.websocket.transport.pause_reading()


def changes(tab: Tab, room: str, user: str) -> list[tuple[str, Any]]:
    """What ``tab`` was told of ``user`` in ``room``, in order: ("join", member),
    ("update", member) and ("leave", reason)."""
    out: list[tuple[str, Any]] = []
    for diff in tab.received("presence.diff", room):
        out += [("join", m) for m in diff["joins"] if m["user"] == user]
        out += [("update", m) for m in diff["updates"] if m["user"] == user]
        out += [("leave", x["reason"]) for x in diff["leaves"] if x["user"] == user]
    return out


async def until(check: Callable[[], Any], within: float, what: str = "a condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {within:.1f} s")
        await asyncio.sleep(UNIT / 2)


async def seen(
    tab: Tab, room: str, user: str, want: list[tuple[str, Any]], within: float = DEPARTED
) -> None:
    """Waits until ``tab`` was told exactly ``want`` of ``user`` in ``room`` (members
    compared by status, sessions and meta), then checks its view holds no gap."""

    def told() -> list[tuple[str, Any]]:
        return [
            (kind, (v["status"], v["sessions"], v["meta"]) if isinstance(v, dict) else v)
            for kind, v in changes(tab, room, user)
        ]

    await until(lambda: len(told()) >= len(want), within, f"{want} of {user} in {room}")
    assert told() == want
    assert not tab.gaps


# -- the processes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_redis(redis_server: RedisServer) -> str:
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="module")
def processes(shared_redis: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two processes on one Redis, rooms by the token's claim."""
    with server_process(env(shared_redis)) as a, server_process(env(shared_redis)) as b:
        yield a, b


@pytest.fixture(scope="module")
def small(shared_redis: str) -> Iterator[ServerProcess]:
    """A third process on the same Redis: every room open, two members a page, three
    rooms a session, and diff windows of 300 ms (so that joins made together share
    one)."""
    settings = {
        "PRESENCE_OPEN_ROOMS": "true",
        "PRESENCE_ROOM_LIST_LIMIT": "2",
        "PRESENCE_MAX_ROOMS_PER_SESSION": "3",
        "PRESENCE_DIFF_WINDOW_MS": "300",
    }
    with server_process(env(shared_redis, **settings)) as c:
        yield c


@contextlib.asynccontextmanager
async def tabs() -> AsyncIterator[list[Tab]]:
    """Every tab a test opens, closed at its end."""
    opened: list[Tab] = []
    try:
        yield opened
    finally:
        for tab in opened:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(tab.close(), 20 * UNIT)


async def watching(server: ServerProcess, room: str, opened: list[Tab]) -> Tab:
    """A new user's socket on ``server`` watching ``room``, its sync read (closed with
    the test's other ``opened`` tabs)."""
    watcher = await User().tab(server)
    opened.append(watcher)
    await watcher.watch(room)
    return watcher


# -- across processes -----------------------------------------------------------------


async def test_a_join_on_one_process_reaches_a_watcher_on_another_within_a_second(processes):
    """A watcher on B gets a sync with the room's seq, count and members, then the join
    made on A within a second, numbered one more than the sync; a second watcher's sync
    has the member."""
    a, b = processes
    room = name("lobby")
    ann, bob = User(), User()
    async with tabs() as opened:
        watcher = await bob.tab(b)
        opened.append(watcher)
        sync = await watcher.watch(room)
        assert (sync["room"], sync["count"], sync["members"]) == (room, 0, [])
        assert isinstance(sync["seq"], int) and "partial" not in sync
        joiner = await ann.tab(a)
        opened.append(joiner)
        started = time.monotonic()
        await joiner.join(room, {"nick": "Ann"})
        diff = await watcher.next("presence.diff", room, within=ONE_SECOND)
        assert time.monotonic() - started < ONE_SECOND
        assert diff["seq"] == sync["seq"] + 1
        assert diff["count"] == 1 and diff["updates"] == [] and diff["leaves"] == []
        [member] = diff["joins"]
        assert {k: member[k] for k in ("user", "status", "sessions", "meta")} == {
            "user": ann.name,
            "status": "online",
            "sessions": 1,
            "meta": {"nick": "Ann"},
        }
        assert member["since"].endswith("Z")
        late = await User().tab(a)
        opened.append(late)
        again = await late.watch(room)
        assert (again["seq"], again["count"]) == (diff["seq"], 1)
        assert [m["user"] for m in again["members"]] == [ann.name]
        assert watcher.views[room].members.keys() == {ann.name}


async def test_every_diff_is_numbered_one_more_than_the_last(processes):
    """Joins, updates and leaves from both processes reach watchers on both as diffs
    whose seq goes up by one from the sync's, and each watcher's view ends equal to the
    room's members over REST."""
    a, b = processes
    room = name("seq")
    users = [User() for _ in range(4)]
    async with tabs() as opened:
        watchers = [await User().tab(a), await User().tab(b)]
        opened += watchers
        syncs = [await w.watch(room) for w in watchers]
        members = []
        for n, user in enumerate(users):
            tab = await user.tab((a, b)[n % 2])
            opened.append(tab)
            members.append(tab)
            await tab.join(room, {"n": n})
            await until(lambda n=n: all(w.views[room].count == n + 1 for w in watchers), ONE_SECOND)
        await members[0].send({"type": "presence.update", "room": room, "meta": {"n": "x"}})
        await members[1].send({"type": "presence.leave", "room": room})
        await until(lambda: all(w.views[room].count == 3 for w in watchers), DEPARTED)
        for watcher, sync in zip(watchers, syncs, strict=True):
            seqs = [d["seq"] for d in watcher.received("presence.diff", room)]
            assert seqs == list(range(sync["seq"] + 1, sync["seq"] + 1 + len(seqs)))
            assert not watcher.gaps
        page = (await users[0].call(b, "GET", f"{PRESENCE}/rooms/{room}")).json()
        for watcher in watchers:
            view = watcher.views[room]
            assert view.seq == page["seq"]
            assert {u: (m.status, m.sessions, m.meta) for u, m in view.members.items()} == {
                m["user"]: (m["status"], m["sessions"], m["meta"]) for m in page["members"]
            }
        assert {m["user"]: m["meta"] for m in page["members"]} == {
            users[0].name: {"n": "x"},
            users[2].name: {"n": 2},
            users[3].name: {"n": 3},
        }


async def test_a_page_refresh_inside_the_grace_is_no_leave_and_no_join(processes):
    """A tab that closes and comes back inside the grace, on the other process, and
    joins again as a reloaded page does, makes no diff at all."""
    a, b = processes
    room = name("refresh")
    ann = User()
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        sid = await ann.session(a)
        first = await ann.tab(a, sid)
        await first.join(room, {"nick": "Ann"})
        await seen(watcher, room, ann.name, [("join", ("online", 1, {"nick": "Ann"}))])
        await first.close()
        again = await ann.tab(b, sid)
        opened.append(again)
        await again.join(room, {"nick": "Ann"})
        await asyncio.sleep(QUIET)
        await seen(watcher, room, ann.name, [("join", ("online", 1, {"nick": "Ann"}))])
        assert watcher.views[room].count == 1


async def test_the_first_tab_joins_and_the_last_tab_leaves(processes):
    """A user's first tab in a room is a join; a second is an update (two sessions);
    the first of them to close is an update back to one; the last one's close, once
    the grace has passed, is the one leave, with reason closed."""
    a, b = processes
    room = name("tabs")
    ann = User()
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        one, two = await ann.tab(a), await ann.tab(b)
        opened += [one, two]
        await one.join(room, {"tab": 1})
        await seen(watcher, room, ann.name, [("join", ("online", 1, {"tab": 1}))])
        await two.join(room, {"tab": 2})
        await seen(
            watcher,
            room,
            ann.name,
            [("join", ("online", 1, {"tab": 1})), ("update", ("online", 2, {"tab": 2}))],
        )
        await two.close()
        await one.send({"type": "presence.update", "room": room, "meta": {"tab": 1}})
        await seen(
            watcher,
            room,
            ann.name,
            [
                ("join", ("online", 1, {"tab": 1})),
                ("update", ("online", 2, {"tab": 2})),
                ("update", ("online", 2, {"tab": 1})),
                ("update", ("online", 1, {"tab": 1})),
            ],
        )
        await one.close()
        await seen(
            watcher,
            room,
            ann.name,
            [
                ("join", ("online", 1, {"tab": 1})),
                ("update", ("online", 2, {"tab": 2})),
                ("update", ("online", 2, {"tab": 1})),
                ("update", ("online", 1, {"tab": 1})),
                ("leave", "closed"),
            ],
        )
        assert watcher.views[room].members == {}


async def _delete(tab: Tab, server: ServerProcess, room: str) -> None:
    response = await tab.user.call(server, "DELETE", f"{CHAT}/sessions/{tab.session_id}")
    assert response.status_code == 204


async def _cleanup(tab: Tab, server: ServerProcess, room: str) -> None:
    body = {"type": "specific", "session_ids": [tab.session_id]}
    response = await tab.user.call(server, "POST", f"{CHAT}/sessions/cleanup", json=body)
    assert response.json()["session_ids"] == [tab.session_id]


async def _leave(tab: Tab, server: ServerProcess, room: str) -> None:
    await tab.send({"type": "presence.leave", "room": room})


async def _close(tab: Tab, server: ServerProcess, room: str) -> None:
    await tab.close()


async def _silence(tab: Tab, server: ServerProcess, room: str) -> None:
    tab.silence()


#: How a user's last tab goes, and the reason its leave must carry.
DEPARTURES = {
    "presence.leave": (_leave, "left"),
    "socket closed": (_close, "closed"),
    "no pong": (_silence, "timeout"),
    "session deleted": (_delete, "ended"),
    "session cleaned up": (_cleanup, "ended"),
}


@pytest.mark.parametrize("departure", DEPARTURES)
async def test_the_last_tab_leaves_with_the_reason_it_went_for(processes, departure):
    """Of a user's two tabs in a room, the first to close is an update (one session
    left); the last one's departure is the one leave, with its reason, after the grace;
    the session store agrees (a timed-out or closed socket's session is disconnected,
    an ended one is gone)."""
    depart, reason = DEPARTURES[departure]
    a, b = processes
    room = name("reasons")
    ann = User()
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        one, two = await ann.tab(a), await ann.tab(a)
        opened += [one, two]
        meta = {"nick": "Ann"}
        await one.join(room, meta)
        await seen(watcher, room, ann.name, [("join", ("online", 1, meta))])
        await two.join(room, meta)
        first = [("join", ("online", 1, meta)), ("update", ("online", 2, meta))]
        await seen(watcher, room, ann.name, first)
        await one.close()
        await seen(watcher, room, ann.name, [*first, ("update", ("online", 1, meta))])
        await depart(two, a, room)
        # A silent client is found out by the ping it does not answer: up to a ping
        # interval and a ping timeout, before the grace.
        await seen(
            watcher,
            room,
            ann.name,
            [*first, ("update", ("online", 1, meta)), ("leave", reason)],
            within=DEPARTED + 30 * UNIT,
        )
        leave = watcher.received("presence.diff", room)[-1]["leaves"][0]
        assert leave["last_seen"].endswith("Z")
        assert watcher.views[room].members == {}
        presence = (await ann.call(b, "GET", f"{PRESENCE}/users/{ann.name}")).json()
        # A tab that left the room is still there, online.
        assert presence["status"] == ("online" if reason == "left" else "offline")
        assert presence["rooms"] == [] and presence["last_seen"] is not None
        got = await ann.call(b, "GET", f"{CHAT}/sessions/{two.session_id}")
        if reason == "ended":
            assert got.status_code == 404
        elif reason in ("closed", "timeout"):
            assert got.json()["state"] == "disconnected"


async def test_a_session_past_its_lifetime_leaves_with_expired(processes, shared_redis):
    """A session that reaches PRESENCE_MAX_LIFETIME_HOURS is ended with ``expired`` on
    its socket, and its member leaves the room with reason expired."""
    _, b = processes
    room = name("lifetime")
    ann = User()
    lifetime = 50 * UNIT
    settings = {"PRESENCE_MAX_LIFETIME_HOURS": str(lifetime / 3600)}
    with server_process(env(shared_redis, **settings)) as short:
        async with tabs() as opened:
            watcher = await watching(b, room, opened)
            started = time.monotonic()
            tab = await ann.tab(short)
            opened.append(tab)
            await tab.join(room, {"nick": "Ann"})
            await seen(watcher, room, ann.name, [("join", ("online", 1, {"nick": "Ann"}))])
            ended = await tab.next("ended", within=lifetime + 30 * UNIT)
            assert ended["reason"] == "expired"
            await seen(
                watcher,
                room,
                ann.name,
                [("join", ("online", 1, {"nick": "Ann"})), ("leave", "expired")],
                within=lifetime + DEPARTED,
            )
            assert time.monotonic() - started >= lifetime


# -- status across tabs, and updates -------------------------------------------------


async def test_away_only_when_every_tab_is_hidden_or_idle(processes):
    """With one tab hidden the user stays online (no diff); once the other goes idle
    they are away (an update); one tab shown again is online (an update). Never a
    leave and a join."""
    a, b = processes
    room = name("away")
    ann = User()
    async with tabs() as opened:
        watcher = await watching(a, room, opened)
        one, two = await ann.tab(a), await ann.tab(b)
        opened += [one, two]
        await one.join(room, {"nick": "Ann"})
        meta = {"nick": "Ann"}
        told = [("join", ("online", 1, meta))]
        await seen(watcher, room, ann.name, told)
        await two.join(room, meta)
        told.append(("update", ("online", 2, meta)))
        await seen(watcher, room, ann.name, told)
        mark = len(one.messages)
        await one.send({"type": "visibility", "state": "hidden"})
        snapshot = await one.next("snapshot", after=mark)
        assert snapshot["session"]["state"] == "away"
        presence = (await ann.call(b, "GET", f"{PRESENCE}/users/{ann.name}")).json()
        assert (presence["status"], presence["sessions"]) == ("online", 2)
        await two.send({"type": "activity", "idle": True})
        told.append(("update", ("away", 2, meta)))
        await seen(watcher, room, ann.name, told)
        presence = (await ann.call(a, "GET", f"{PRESENCE}/users/{ann.name}")).json()
        assert presence["status"] == "away"
        await one.send({"type": "visibility", "state": "visible"})
        told.append(("update", ("online", 2, meta)))
        await seen(watcher, room, ann.name, told)
        await two.send({"type": "activity", "idle": False})
        await one.send({"type": "activity", "idle": True})
        await asyncio.sleep(10 * UNIT)
        await seen(watcher, room, ann.name, told)  # still online: the other tab is
        assert watcher.views[room].members[ann.name].status == "online"


async def test_a_meta_or_status_change_is_an_update_not_a_leave_and_a_join(processes):
    """presence.update, a join again with another meta, and a status change each reach
    the watcher as one update of the member."""
    a, b = processes
    room = name("update")
    ann = User()
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        tab = await ann.tab(a)
        opened.append(tab)
        await tab.join(room, {"typing": False})
        told = [("join", ("online", 1, {"typing": False}))]
        await seen(watcher, room, ann.name, told)
        await tab.send({"type": "presence.update", "room": room, "meta": {"typing": True}})
        told.append(("update", ("online", 1, {"typing": True})))
        await seen(watcher, room, ann.name, told)
        await tab.join(room, {"typing": False, "nick": "A"})
        told.append(("update", ("online", 1, {"typing": False, "nick": "A"})))
        await seen(watcher, room, ann.name, told)
        await tab.send({"type": "visibility", "state": "hidden"})
        told.append(("update", ("away", 1, {"typing": False, "nick": "A"})))
        await seen(watcher, room, ann.name, told)


# -- REST -----------------------------------------------------------------------------


async def test_a_rest_session_joins_and_leaves_and_its_beacon_leaves(processes):
    """A session without a socket joins with POST and leaves with DELETE (reason left);
    another's unload beacon (cleanup inactive with its id) leaves too (reason left);
    the room and the user read over REST say who is there."""
    a, b = processes
    room = name("rest")
    ann, bob = User(), User()
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        ann_sid, bob_sid = await ann.session(a), await bob.session(b)
        path = f"{CHAT}/sessions/{ann_sid}/rooms/{room}"
        joined = await ann.call(a, "POST", path, json={"meta": {"via": "rest"}})
        assert joined.status_code == 200
        assert joined.json() == {"room": room, "result": "joined"}
        told = [("join", ("online", 1, {"via": "rest"}))]
        await seen(watcher, room, ann.name, told)
        again = await ann.call(b, "POST", path, json={"meta": {"via": "rest", "n": 2}})
        assert again.json() == {"room": room, "result": "updated"}
        told.append(("update", ("online", 1, {"via": "rest", "n": 2})))
        await seen(watcher, room, ann.name, told)
        bob_path = f"{CHAT}/sessions/{bob_sid}/rooms/{room}"
        assert (await bob.call(b, "POST", bob_path)).status_code == 200
        await until(lambda: watcher.views[room].count == 2, ONE_SECOND)
        members = (await ann.call(b, "GET", f"{PRESENCE}/rooms/{room}")).json()
        assert members["room"] == room and members["count"] == 2 and members["next"] is None
        assert {m["user"]: m["meta"] for m in members["members"]} == {
            ann.name: {"via": "rest", "n": 2},
            bob.name: None,
        }
        presence = (await ann.call(a, "GET", f"{PRESENCE}/users/{ann.name}")).json()
        assert presence == {
            "user": ann.name,
            "status": "online",
            "sessions": 1,
            "last_seen": presence["last_seen"],
            "rooms": [room],
        }
        forbidden = await ann.call(a, "GET", f"{PRESENCE}/users/{bob.name}")
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"

        assert (await ann.call(a, "DELETE", path)).status_code == 204
        missing = await ann.call(a, "DELETE", path)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_in_room"
        beacon = {"type": "inactive", "session_id": bob_sid}
        response = await bob.call(a, "POST", f"{CHAT}/sessions/cleanup", json=beacon)
        assert response.json() == {"deleted": 0, "session_ids": []}
        await seen(watcher, room, ann.name, [*told, ("leave", "left")])
        await seen(watcher, room, bob.name, [("join", ("online", 1, None)), ("leave", "left")])
        empty = (await ann.call(a, "GET", f"{PRESENCE}/rooms/{room}")).json()
        assert (empty["count"], empty["members"], empty["seq"]) == (
            0,
            [],
            watcher.views[room].seq,
        )


async def test_a_rest_session_is_present_while_its_heartbeats_come(processes):
    """A REST member stays while heartbeats come within twice HEARTBEAT_INTERVAL (an
    ``away`` heartbeat makes it away), and leaves with timeout once they stop."""
    a, b = processes
    room = name("beats")
    ann = User()
    interval = 20 * UNIT  # the processes' HEARTBEAT_INTERVAL
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        sid = await ann.session(a)
        assert (await ann.call(a, "POST", f"{CHAT}/sessions/{sid}/rooms/{room}")).status_code == 200
        told = [("join", ("online", 1, None))]
        await seen(watcher, room, ann.name, told)
        for state in ("active", "away"):
            await asyncio.sleep(interval * 1.2)
            beat = await ann.call(
                a, "POST", f"{CHAT}/sessions/{sid}/heartbeat", json={"state": state}
            )
            assert beat.status_code == 200
        told.append(("update", ("away", 1, None)))
        await seen(watcher, room, ann.name, told)
        told.append(("leave", "timeout"))
        await seen(watcher, room, ann.name, told, within=2 * interval + DEPARTED)


async def test_a_rest_member_whose_socket_is_elsewhere_stays_without_heartbeats(processes):
    """A session with its socket open on one process joins over REST through the
    other and sends no REST heartbeats: its socket's pings keep it present past twice
    HEARTBEAT_INTERVAL (it used to leave with timeout); once the socket closes, the
    REST hold lapses and it leaves (timeout)."""
    a, b = processes
    room = name("elsewhere")
    ann = User()
    interval = 20 * UNIT  # the processes' HEARTBEAT_INTERVAL
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        socket_tab = await ann.tab(a)
        opened.append(socket_tab)
        sid = socket_tab.session_id
        path = f"{CHAT}/sessions/{sid}/rooms/{room}"
        assert (await ann.call(b, "POST", path)).status_code == 200
        told = [("join", ("online", 1, None))]
        await seen(watcher, room, ann.name, told)
        await asyncio.sleep(3 * interval)  # past two lapses of the REST hold
        await seen(watcher, room, ann.name, told)  # no leave
        await socket_tab.close()
        told.append(("leave", "timeout"))
        await seen(watcher, room, ann.name, told, within=4 * interval + DEPARTED)


async def test_a_room_is_paged_over_rest_and_a_sync_carries_the_first_page(processes, small):
    """Above PRESENCE_ROOM_LIST_LIMIT (2 on that process) a sync carries the count and
    the first members with ``next``; GET pages the rest with ``?cursor=``."""
    room = name("paged")
    users = [User(f"{name('p')}-{n}") for n in range(5)]
    for user in users:
        sid = await user.session(small)
        response = await user.call(small, "POST", f"{CHAT}/sessions/{sid}/rooms/{room}")
        assert response.status_code == 200
    reader = users[0]
    pages, cursor = [], None
    while True:
        params = {} if cursor is None else {"cursor": cursor}
        page = (await reader.call(small, "GET", f"{PRESENCE}/rooms/{room}", params=params)).json()
        pages.append(page)
        cursor = page["next"]
        if cursor is None:
            break
    assert [len(p["members"]) for p in pages] == [2, 2, 1]
    assert [m["user"] for p in pages for m in p["members"]] == sorted(u.name for u in users)
    assert {p["count"] for p in pages} == {5}
    async with tabs() as opened:
        watcher = await watching(small, room, opened)
        sync = watcher.received("presence.sync", room)[0]
        assert sync["count"] == 5 and len(sync["members"]) == 2 and sync["next"] is not None
    bad = await reader.call(small, "GET", f"{PRESENCE}/rooms/{room}", params={"cursor": "x" * 300})
    assert bad.status_code == 422


# -- authorization --------------------------------------------------------------------


async def test_a_watch_or_join_outside_the_rooms_claim_is_refused_and_changes_nothing(
    processes,
):
    """With rooms ["<exact>", "<team>:*"], the exact room and rooms under the prefix
    may be joined and watched; any other (the prefix without its colon, a longer
    name) is refused with a room_forbidden error naming the room, no sync, no member,
    and a 403 over REST."""
    a, b = processes
    exact, team = name("exact"), name("team")
    mallory = User(rooms=(exact, f"{team}:*"))
    refused = [f"{exact}x", team, f"{team}-x:1", name("other")]
    async with tabs() as opened:
        spy = await User().tab(b)  # may watch everything
        opened.append(spy)
        for room in refused:
            await spy.watch(room)
        tab = await mallory.tab(a)
        opened.append(tab)
        for room in refused:
            for kind in ("presence.watch", "presence.join"):
                mark = len(tab.messages)
                await tab.send(
                    {"type": kind, "room": room, "meta": None}
                    if kind == "presence.join"
                    else {"type": kind, "room": room}
                )
                error = await tab.error(mark)
                assert (error["code"], error["room"]) == ("room_forbidden", room)
                assert room in error["message"]
            assert tab.received("presence.sync", room) == []
            sid = tab.session_id
            rest = await mallory.call(a, "POST", f"{CHAT}/sessions/{sid}/rooms/{room}")
            assert rest.status_code == 403 and rest.json()["error"]["code"] == "room_forbidden"
            read = await mallory.call(b, "GET", f"{PRESENCE}/rooms/{room}")
            assert read.status_code == 403
        for room in (exact, f"{team}:blue", f"{team}:"):
            sync = await tab.watch(room)
            assert sync["room"] == room
            await tab.join(room, {"ok": True})
        await until(lambda: tab.views[exact].count == 1, ONE_SECOND)
        presence = (await mallory.call(a, "GET", f"{PRESENCE}/users/{mallory.name}")).json()
        assert sorted(presence["rooms"]) == sorted([exact, f"{team}:blue", f"{team}:"])
        await asyncio.sleep(5 * UNIT)
        for room in refused:
            assert spy.received("presence.diff", room) == []
        listed = (await mallory.call(a, "GET", f"{PRESENCE}/rooms")).json()["rooms"]
        assert {r["room"] for r in listed} <= {exact, f"{team}:blue", f"{team}:"}


async def test_a_token_without_a_rooms_claim_enters_no_room_unless_rooms_are_open(processes, small):
    """A token with no ``rooms`` claim (or a claim that is not a list) may enter no
    room; PRESENCE_OPEN_ROOMS=true lets it enter any."""
    a, _ = processes
    room = name("open")
    bare = User(rooms=None)
    odd = User()
    now = int(time.time())
    claims = {"sub": odd.name, "exp": now + 3600, "rooms": "*"}  # a string, not a list
    odd.token = jwt.encode(claims, JWT_SECRET, "HS256")
    for user in (bare, odd):
        async with tabs() as opened:
            tab = await user.tab(a)
            opened.append(tab)
            mark = len(tab.messages)
            await tab.send({"type": "presence.watch", "room": room})
            assert (await tab.error(mark))["code"] == "room_forbidden"
            free = await user.tab(small)
            opened.append(free)
            sync = await free.watch(room)
            await free.join(room)
            await until(lambda free=free: free.views[room].count >= 1, ONE_SECOND)
            assert sync["room"] == room


async def test_a_member_is_always_the_tokens_sub(processes):
    """Nothing a client sends names another user: a ``user`` field is refused, a meta
    that says otherwise is only meta, and the member is the token's sub."""
    a, b = processes
    room = name("sub")
    mallory, ann = User(), User()
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        tab = await mallory.tab(a)
        opened.append(tab)
        mark = len(tab.messages)
        await tab.join(room, {"user": ann.name}, user=ann.name)
        error = await tab.error(mark)
        assert error["code"] == "bad_message" and "user" in error["message"]
        await tab.join(room, {"user": ann.name})
        await seen(watcher, room, mallory.name, [("join", ("online", 1, {"user": ann.name}))])
        assert list(watcher.views[room].members) == [mallory.name]
        presence = (await ann.call(a, "GET", f"{PRESENCE}/users/{ann.name}")).json()
        assert (presence["status"], presence["rooms"]) == ("offline", [])


async def test_another_users_session_is_not_found_anywhere(processes):
    """Mallory cannot open, attach, join with or leave with Ann's session: each is the
    same not-found as a session that does not exist, and Ann's presence is unchanged."""
    a, b = processes
    room = name("theirs")
    ann, mallory = User(), User()
    sid = await ann.session(a)
    assert (await ann.call(a, "POST", f"{CHAT}/sessions/{sid}/rooms/{room}")).status_code == 200
    with pytest.raises(InvalidStatus) as refused:
        await Tab.open(b, mallory, sid)
    assert refused.value.response.status_code == 404
    async with tabs() as opened:
        tab = await mallory.tab(b)
        opened.append(tab)
        mark = len(tab.messages)
        await tab.send({"type": "session.attach", "session": sid})
        assert (await tab.error(mark))["code"] == "session_not_found"
        mark = len(tab.messages)
        await tab.send({"type": "presence.leave", "room": room, "session": sid})
        assert (await tab.error(mark))["code"] == "session_not_found"
    for method in ("POST", "DELETE"):
        response = await mallory.call(a, method, f"{CHAT}/sessions/{sid}/rooms/{room}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "session_not_found"
    presence = (await ann.call(b, "GET", f"{PRESENCE}/users/{ann.name}")).json()
    assert (presence["sessions"], presence["rooms"]) == (1, [room])


# -- abuse ----------------------------------------------------------------------------

BAD_ROOMS = ["", "a" * 129, "a b", "{x}", "room/1", "é", "a\nb", None, 7, ["lobby"], {"r": 1}]


async def test_bad_room_names_are_refused_and_the_socket_lives_on(processes):
    """A room name too long or malformed, in any presence message or REST path, is an
    invalid_room error (with no room echoed back); the socket stays open and nothing
    changed."""
    a, _ = processes
    ann = User()
    async with tabs() as opened:
        tab = await ann.tab(a)
        opened.append(tab)
        for room in BAD_ROOMS:
            for kind in ("presence.watch", "presence.join", "presence.update", "presence.leave"):
                message: dict[str, Any] = {"type": kind, "room": room}
                if kind in ("presence.join", "presence.update"):
                    message["meta"] = None
                mark = len(tab.messages)
                await tab.send(message)
                error = await tab.error(mark)
                assert error["code"] == "invalid_room", (kind, room, error)
                assert "room" not in error and "128" in error["message"]
            # Not to pass the rate limit: the limit is not what this test is about.
            await asyncio.sleep(UNIT)
        good = name("good")
        assert (await tab.watch(good))["room"] == good
        assert tab.received("presence.sync") == tab.received("presence.sync", good)
    sid = await ann.session(a)
    for room in ("a" * 129, "a%20b", "%7Bx%7D", "%C3%A9"):
        response = await ann.call(a, "POST", f"{CHAT}/sessions/{sid}/rooms/{room}")
        assert response.status_code == 422, room
        assert response.json()["error"]["code"] == "invalid_room"
        read = await ann.call(a, "GET", f"{PRESENCE}/rooms/{room}")
        assert read.status_code == 422
    presence = (await ann.call(a, "GET", f"{PRESENCE}/users/{ann.name}")).json()
    assert presence["rooms"] == []


#: Metas no member may carry, as the raw JSON of a join's meta.
BAD_METAS = {
    "too big": json.dumps({"x": "a" * 1100}),
    "NaN": '{"x": NaN}',
    "Infinity": '{"x": -Infinity}',
    "overflowing number": '{"x": 1e999}',
    "lone surrogate": '{"x": "\\ud800"}',
    "list": "[1, 2]",
    "string": '"Ann"',
    "number": "3",
    "boolean": "true",
}


@pytest.mark.parametrize("via", ["socket", "rest"])
async def test_bad_metas_are_refused_and_change_nothing(processes, via):
    """A meta too big once encoded, with NaN, Infinity, a number no float holds or an
    unpaired surrogate, or that is not an object, is refused (an invalid_body error on
    the socket, which lives on; 4xx over REST): no join, no update, no member."""
    a, b = processes
    room = name("meta")
    ann = User()
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        tab = await ann.tab(a)
        opened.append(tab)
        for problem, raw in BAD_METAS.items():
            if via == "socket":
                for kind in ("presence.join", "presence.update"):
                    mark = len(tab.messages)
                    await tab.send(f'{{"type": "{kind}", "room": "{room}", "meta": {raw}}}')
                    error = await tab.error(mark)
                    want = "not_in_room" if kind == "presence.update" else "invalid_body"
                    if kind == "presence.update":
                        assert error["code"] in ("invalid_body", want), (problem, error)
                    else:
                        assert error["code"] == want, (problem, error)
                        assert "meta" in error["message"], (problem, error)
            else:
                response = await ann.call(
                    a,
                    "POST",
                    f"{CHAT}/sessions/{tab.session_id}/rooms/{room}",
                    content=f'{{"meta": {raw}}}',
                    headers={"content-type": "application/json"},
                )
                assert response.status_code in (400, 422), (problem, response.text)
        await tab.join(room, {"ok": True})
        await seen(watcher, room, ann.name, [("join", ("online", 1, {"ok": True}))])
        for problem, raw in BAD_METAS.items():
            mark = len(tab.messages)
            await tab.send(f'{{"type": "presence.update", "room": "{room}", "meta": {raw}}}')
            error = await tab.error(mark)
            assert error["code"] == "invalid_body", (problem, error)
        await tab.join(room, None)  # no meta at all is allowed
        await asyncio.sleep(5 * UNIT)
        await seen(
            watcher,
            room,
            ann.name,
            [("join", ("online", 1, {"ok": True})), ("update", ("online", 1, None))],
        )


async def test_a_session_is_in_at_most_the_maximum_of_rooms(small):
    """PRESENCE_MAX_ROOMS_PER_SESSION (3 on that process): the rooms up to it are
    joined, one more is too_many_rooms on the socket and 429 over REST, and a room
    left makes room for another; watching counts too."""
    ann = User()
    rooms = [name("max") for _ in range(5)]
    async with tabs() as opened:
        tab = await ann.tab(small)
        opened.append(tab)
        for room in rooms[:3]:
            await tab.join(room)
            await tab.next("presence.sync", room)
        mark = len(tab.messages)
        await tab.join(rooms[3])
        error = await tab.error(mark)
        assert (error["code"], error["room"]) == ("too_many_rooms", rooms[3])
        mark = len(tab.messages)
        await tab.send({"type": "presence.watch", "room": rooms[4]})
        assert (await tab.error(mark))["code"] == "too_many_rooms"
        await tab.send({"type": "presence.leave", "room": rooms[0]})
        await tab.join(rooms[3])
        await tab.next("presence.sync", rooms[3])
        presence = (await ann.call(small, "GET", f"{PRESENCE}/users/{ann.name}")).json()
        # The room left is still counted in its grace, by the user's presence.
        assert set(rooms[1:4]) <= set(presence["rooms"]) and rooms[4] not in presence["rooms"]
    sid = await ann.session(small)
    for room in rooms[:3]:
        response = await ann.call(small, "POST", f"{CHAT}/sessions/{sid}/rooms/{room}")
        assert response.status_code == 200
    response = await ann.call(small, "POST", f"{CHAT}/sessions/{sid}/rooms/{rooms[3]}")
    assert response.status_code == 429 and response.json()["error"]["code"] == "too_many_rooms"


async def test_a_flood_of_joins_and_leaves_is_cut_off_and_is_one_join_and_one_leave(
    processes,
):
    """Hundreds of join and leave messages at once: the socket is closed with 1008 after
    the burst (a rate_limited error first), the other process goes on serving, and the
    watcher was told one join and, after the grace, one leave."""
    a, b = processes
    room = name("flood")
    ann = User()
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        tab = await ann.tab(a)
        opened.append(tab)
        with contextlib.suppress(ConnectionClosed):
            for n in range(300):
                kind = "presence.join" if n % 2 == 0 else "presence.leave"
                await tab.send({"type": kind, "room": room})
        await asyncio.wait_for(tab.websocket.wait_closed(), 50 * UNIT)
        assert tab.websocket.close_code == 1008
        assert tab.received("error")[-1]["code"] == "rate_limited"
        await until(
            lambda: any(k == "leave" for k, _ in changes(watcher, room, ann.name)), DEPARTED
        )
        kinds = [kind for kind, _ in changes(watcher, room, ann.name)]
        assert kinds.count("join") == 1 and kinds.count("leave") == 1
        assert kinds[-1] == "leave"
        assert not watcher.gaps and watcher.views[room].members == {}
        healthy = await ann.call(b, "GET", "/healthz")
        assert healthy.status_code == 200


async def test_an_emptied_room_keeps_its_numbering(processes):
    """A room whose last member left keeps its seq: a watcher who comes while it is
    empty is synced at that seq, and the next join is numbered one more, for old and
    new watchers alike (no gap, no restart)."""
    a, b = processes
    room = name("empty")
    ann = User()
    async with tabs() as opened:
        old = await User().tab(b)
        opened.append(old)
        first = await old.watch(room)
        tab = await ann.tab(a)
        opened.append(tab)
        await tab.join(room)
        await seen(old, room, ann.name, [("join", ("online", 1, None))])
        await tab.send({"type": "presence.leave", "room": room})
        await seen(old, room, ann.name, [("join", ("online", 1, None)), ("leave", "left")])
        assert old.views[room].seq == first["seq"] + 2
        new = await User().tab(a)
        opened.append(new)
        empty = await new.watch(room)
        assert (empty["seq"], empty["count"], empty["members"]) == (first["seq"] + 2, 0, [])
        await tab.join(room, {"again": True})
        for watcher in (old, new):
            diff = await watcher.next(
                "presence.diff", room, where=lambda d: d["seq"] == first["seq"] + 3
            )
            assert [m["user"] for m in diff["joins"]] == [ann.name]
            assert not watcher.gaps


async def test_a_rest_session_deleted_through_another_process_leaves_with_ended(processes):
    """A REST member whose session is deleted through another process than the one
    holding its tab leaves with reason ended (the end reaches the holder on the bus)."""
    a, b = processes
    room = name("rest-ended")
    ann = User()
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        sid = await ann.session(a)
        assert (await ann.call(a, "POST", f"{CHAT}/sessions/{sid}/rooms/{room}")).status_code == 200
        await seen(watcher, room, ann.name, [("join", ("online", 1, None))])
        assert (await ann.call(b, "DELETE", f"{CHAT}/sessions/{sid}")).status_code == 204
        await seen(watcher, room, ann.name, [("join", ("online", 1, None)), ("leave", "ended")])
        presence = (await ann.call(a, "GET", f"{PRESENCE}/users/{ann.name}")).json()
        assert (presence["status"], presence["sessions"], presence["rooms"]) == ("offline", 0, [])


async def test_a_session_whose_ttl_ran_out_leaves_with_expired(processes, shared_redis):
    """A session gone from Redis as an expired TTL leaves it (no announcement: its key
    is simply gone) is found by the refresher, its socket ended with ``expired``, and
    its member leaves with reason expired."""
    a, b = processes
    room = name("ttl")
    ann = User()
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        tab = await ann.tab(a)
        opened.append(tab)
        await tab.join(room)
        await seen(watcher, room, ann.name, [("join", ("online", 1, None))])
        with redis.Redis.from_url(shared_redis) as client:
            assert client.delete(keys.lone_key("presence", ann.name)) == 1
        ended = await tab.next("ended", within=50 * UNIT)
        assert ended["reason"] == "expired"
        await seen(watcher, room, ann.name, [("join", ("online", 1, None)), ("leave", "expired")])


async def test_unwatch_stops_the_diffs_and_watching_again_is_a_fresh_sync(processes):
    """After presence.unwatch no diff of the room comes; presence.watch of a room
    watched already (a client that saw a gap) is answered with a fresh sync at the
    room's seq, and diffs go on from it."""
    a, b = processes
    room = name("unwatch")
    ann, bob = User(), User()
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        one = await ann.tab(a)
        opened.append(one)
        await one.join(room)
        await seen(watcher, room, ann.name, [("join", ("online", 1, None))])
        again = await watcher.watch(room)  # watched already: a fresh sync
        assert (again["seq"], again["count"]) == (watcher.views[room].seq, 1)
        await watcher.send({"type": "presence.unwatch", "room": room})
        await asyncio.sleep(5 * UNIT)
        mark = len(watcher.messages)
        two = await bob.tab(a)
        opened.append(two)
        await two.join(room)
        await asyncio.sleep(10 * UNIT)
        assert watcher.received("presence.diff", room) == [
            m for m in watcher.messages[:mark] if m.get("type") == "presence.diff"
        ]
        back = await watcher.watch(room)
        assert back["count"] == 2 and back["seq"] == again["seq"] + 1
        await two.send({"type": "presence.leave", "room": room})
        diff = await watcher.next("presence.diff", room, after=mark)
        assert diff["seq"] == back["seq"] + 1 and diff["leaves"][0]["user"] == bob.name


async def test_a_diff_over_the_list_limit_carries_the_count_and_says_truncated(small):
    """Above PRESENCE_ROOM_LIST_LIMIT (2 there) changes in one window, a diff carries
    at most that many, ``truncated``, and the room's whole count."""
    room = name("many")
    async with tabs() as opened:
        watcher = await watching(small, room, opened)
        sync = watcher.received("presence.sync", room)[0]
        users = [User() for _ in range(4)]
        sids = [await user.session(small) for user in users]
        await asyncio.gather(
            *(
                user.call(small, "POST", f"{CHAT}/sessions/{sid}/rooms/{room}")
                for user, sid in zip(users, sids, strict=True)
            )
        )
        diff = await watcher.next("presence.diff", room)
        assert diff["seq"] == sync["seq"] + 1
        assert diff["truncated"] is True and diff["count"] == 4
        assert len(diff["joins"]) == 2 and diff["updates"] == diff["leaves"] == []
        page = (await users[0].call(small, "GET", f"{PRESENCE}/rooms/{room}")).json()
        assert page["count"] == 4 and len(page["members"]) == 2 and page["next"]


async def test_sessions_carried_by_one_socket_are_tabs_of_their_own(processes):
    """One socket carrying two sessions of its user (session.attach) counts two tabs:
    detaching one is an update back to one session after the grace; the socket's own
    session deleted while it carries another leaves the member present through it;
    the last one's end is the one leave, ended."""
    a, b = processes
    room = name("attached")
    ann = User()
    async with tabs() as opened:
        watcher = await watching(b, room, opened)
        tab = await ann.tab(a)
        opened.append(tab)
        second, third = await ann.session(a), await ann.session(b)
        for sid in (second, third):
            mark = len(tab.messages)
            await tab.send({"type": "session.attach", "session": sid})
            await tab.next(
                "snapshot", where=lambda m, sid=sid: m["session"]["id"] == sid, after=mark
            )
        await tab.join(room)
        told = [("join", ("online", 1, None))]
        await seen(watcher, room, ann.name, told)
        for sid in (second, third):
            await tab.send({"type": "presence.join", "room": room, "meta": None, "session": sid})
        told.append(("update", ("online", 3, None)))
        await seen(watcher, room, ann.name, told)
        await tab.send({"type": "session.detach", "session": second})
        told.append(("update", ("online", 2, None)))
        await seen(watcher, room, ann.name, told)
        response = await ann.call(b, "DELETE", f"{CHAT}/sessions/{tab.session_id}")
        assert response.status_code == 204
        ended = await tab.next("ended")
        assert "session" not in ended  # the socket's own, and the socket lives on
        told.append(("update", ("online", 1, None)))
        await seen(watcher, room, ann.name, told)
        assert (await ann.call(a, "DELETE", f"{CHAT}/sessions/{third}")).status_code == 204
        told.append(("leave", "ended"))
        await seen(watcher, room, ann.name, told)


async def test_updates_inside_one_window_keep_the_last(small):
    """Metas set in quick succession inside one diff window (300 ms there) reach the
    watcher as fewer updates than were made, the last meta winning."""
    room = name("window")
    ann = User()
    async with tabs() as opened:
        watcher = await watching(small, room, opened)
        tab = await ann.tab(small)
        opened.append(tab)
        await tab.join(room, {"n": -1})
        await seen(watcher, room, ann.name, [("join", ("online", 1, {"n": -1}))])
        for n in range(5):
            await tab.send({"type": "presence.update", "room": room, "meta": {"n": n}})
        await until(lambda: watcher.views[room].members[ann.name].meta == {"n": 4}, ONE_SECOND)
        await asyncio.sleep(5 * UNIT)
        kinds = [kind for kind, _ in changes(watcher, room, ann.name)]
        assert kinds[0] == "join" and set(kinds[1:]) == {"update"} and len(kinds) <= 3
