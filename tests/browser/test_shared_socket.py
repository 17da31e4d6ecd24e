"""One socket for a browser's tabs (``shareConnection: true``), in real Chromium against
a real server: the server's own count of sockets is the measure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest
from websockets.asyncio.client import connect

from presence.settings import Settings

from ..utils import UNIT, serve
from .pages import open_client_page, status_is

pytestmark = pytest.mark.browser

# The bound the issue names for a hand-over, scaled as every bound in the suite is.
HANDOVER = 20 * UNIT


@pytest.fixture
async def server():
    settings = Settings(
        port=0,
        session_ttl=60 * UNIT,
        heartbeat_interval=5 * UNIT,
        ping_timeout=10 * UNIT,
        offline_grace=50 * UNIT,
    )
    async with serve(settings) as running:
        yield running


@pytest.fixture
async def context(browser, server):
    context = await browser.new_context(base_url=server.http)
    # The first visit hands the browser its development-mode identity, as /chat does.
    first = await context.request.post(
        "/api/v1/chat/sessions", headers={"origin": server.http}, data={}
    )
    assert first.status == 201
    yield context
    await context.close()


async def _server_sockets(context) -> int:  # type: ignore[no-untyped-def]
    response = await context.request.get("/readyz")
    return int((await response.json())["sockets"])


async def _open_tabs(context, server, count: int) -> list:  # type: ignore[no-untyped-def]
    pages = []
    for _ in range(count):
        page = await context.new_page()
        await open_client_page(page, server.http, share="1")
        await status_is(page, "connected", 10_000)
        pages.append(page)
    return pages


async def _session_ids(pages) -> list[str]:  # type: ignore[no-untyped-def]
    return [await page.evaluate("window.manager.sessionId") for page in pages]


async def _statuses(pages) -> list[str]:  # type: ignore[no-untyped-def]
    return [await page.evaluate("window.manager.status") for page in pages]


async def _wait_for_sockets(context, expected: int, within: float) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(within):
        while await _server_sockets(context) != expected:  # noqa: ASYNC110 - polls the server
            await asyncio.sleep(UNIT / 2)


async def test_three_tabs_hold_one_server_socket_each_with_its_own_session(context, server):
    """Three tabs that share the connection: one socket on the server, three sessions,
    each kept alive by it, each tab with its own."""
    pages = await _open_tabs(context, server, 3)
    await _wait_for_sockets(context, 1, 50 * UNIT)
    ids = await _session_ids(pages)
    assert len(set(ids)) == 3
    assert [await page.evaluate("window.isLeader()") for page in pages].count(True) == 1
    for sid in ids:
        response = await context.request.get(f"/api/v1/chat/sessions/{sid}")
        assert response.status == 200
        assert (await response.json())["transport"] == "websocket"
    # The same three tabs without the option would hold three.
    assert server.services.registry.sockets == 1
    assert len(server.services.registry) == 3


async def test_hidden_tab_is_away_while_the_others_stay_active(context, server):
    """Visibility is each session's own over the shared socket."""
    pages = await _open_tabs(context, server, 2)
    ids = await _session_ids(pages)
    await pages[1].evaluate(
        """() => {
          const hidden = { configurable: true, get: () => 'hidden' };
          Object.defineProperty(document, 'visibilityState', hidden);
          document.dispatchEvent(new Event('visibilitychange'));
        }"""
    )

    async def state(sid: str) -> str:
        response = await context.request.get(f"/api/v1/chat/sessions/{sid}")
        return str((await response.json())["state"])

    async with asyncio.timeout(50 * UNIT):
        while await state(ids[1]) != "away":  # noqa: ASYNC110 - polls the server
            await asyncio.sleep(UNIT / 2)
    assert await state(ids[0]) == "active"


async def test_closing_the_leader_hands_the_socket_over_within_2_s(context, server):
    """The leader tab closes: another takes the socket over within 2 s, every session
    alive and the same, none replaced, none ended."""
    pages = await _open_tabs(context, server, 3)
    await _wait_for_sockets(context, 1, 50 * UNIT)
    ids = await _session_ids(pages)
    leaders = [await page.evaluate("window.isLeader()") for page in pages]
    leader = leaders.index(True)
    survivors = [page for i, page in enumerate(pages) if i != leader]
    for page in survivors:
        await page.evaluate("window.events.length = 0")

    started = time.monotonic()
    await pages[leader].close()
    async with asyncio.timeout(HANDOVER):
        while True:
            statuses = [await page.evaluate("window.manager.status") for page in survivors]
            carried = len(server.services.registry)
            if statuses == ["connected", "connected"] and carried == 2:
                if await _server_sockets(context) == 1:
                    break
            await asyncio.sleep(UNIT / 4)
    took = time.monotonic() - started
    assert took < HANDOVER

    assert [await page.evaluate("window.isLeader()") for page in survivors].count(True) == 1
    assert await _session_ids(survivors) == [sid for i, sid in enumerate(ids) if i != leader]
    for page in survivors:
        kinds = [e["type"] for e in await page.evaluate("window.events")]
        assert "session-replaced" not in kinds and "ended" not in kinds and "error" not in kinds
    for sid in await _session_ids(survivors):
        response = await context.request.get(f"/api/v1/chat/sessions/{sid}")
        assert response.status == 200
        assert (await response.json())["transport"] == "websocket"


async def test_a_crashed_leader_is_replaced_within_2_s(context, server):
    """The leader tab's renderer crashes (no pagehide, no close frame from the page):
    the browser frees its locks, and another tab takes the socket over within 2 s."""
    pages = await _open_tabs(context, server, 3)
    await _wait_for_sockets(context, 1, 50 * UNIT)
    ids = await _session_ids(pages)
    leaders = [await page.evaluate("window.isLeader()") for page in pages]
    leader = leaders.index(True)
    survivors = [page for i, page in enumerate(pages) if i != leader]
    cdp = await context.new_cdp_session(pages[leader])
    started = time.monotonic()
    # The renderer goes before it can answer: the call is not waited for long.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(cdp.send("Page.crash"), timeout=5 * UNIT)
    alive = sorted(sid for i, sid in enumerate(ids) if i != leader)

    def carried() -> list[str]:
        return sorted(ref[1] for ref in server.services.registry.refs())

    async with asyncio.timeout(HANDOVER):
        while await _statuses(survivors) != ["connected", "connected"] or carried() != alive:  # noqa: ASYNC110
            await asyncio.sleep(UNIT / 4)
    assert time.monotonic() - started < HANDOVER
    assert [await page.evaluate("window.isLeader()") for page in survivors].count(True) == 1
    await _wait_for_sockets(context, 1, 50 * UNIT)


async def test_a_follower_tab_closing_detaches_only_its_session(context, server):
    """A tab that is not the leader closes: its session leaves the shared socket (so it
    is no longer kept alive by it); the socket and the others stay."""
    pages = await _open_tabs(context, server, 3)
    ids = await _session_ids(pages)
    leaders = [await page.evaluate("window.isLeader()") for page in pages]
    follower = leaders.index(False)
    await pages[follower].close()
    async with asyncio.timeout(50 * UNIT):
        while len(server.services.registry) != 2:  # noqa: ASYNC110 - polls the server
            await asyncio.sleep(UNIT / 2)
    assert await _server_sockets(context) == 1
    response = await context.request.get(f"/api/v1/chat/sessions/{ids[follower]}")
    assert (await response.json())["transport"] != "websocket"


async def test_without_web_locks_each_tab_has_its_own_socket(context, server):
    """A browser without the Web Locks API falls back to one socket per tab."""
    await context.add_init_script("Object.defineProperty(navigator, 'locks', { value: undefined })")
    pages = await _open_tabs(context, server, 2)
    assert [await page.evaluate("window.manager.sharesConnection") for page in pages] == [
        False,
        False,
    ]
    await _wait_for_sockets(context, 2, 50 * UNIT)


JOIN_THROUGH_THE_SHARE = """async (room) => {
  // What a room object does: send presence.join through the tab's share.
  const { sharedSocketFor } = await import('/static/src/sharedSocket.js');
  const url = new URL(`/api/v1/chat/sessions/${window.manager.sessionId}/ws`, location.href);
  url.protocol = 'ws:';
  const link = sharedSocketFor().connect(url.href, window.manager.sessionId);
  await new Promise((resolve, reject) => {
    link.addEventListener('open', resolve);
    link.addEventListener('close', reject);
  });
  link.send(JSON.stringify({ type: 'presence.join', room, meta: {} }));
  window.roomLink = link;
}"""


async def test_the_hand_over_announces_no_leave(context, server):
    """A watcher in the room (another user) sees alice join from three shared tabs, and
    no leave when her leader tab closes and another takes the socket over, not even
    once the grace is over."""
    _, bob_token = server.services.authenticator.mint_anonymous("127.0.0.2")
    async with httpx.AsyncClient(
        base_url=server.http, headers={"authorization": f"Bearer {bob_token}"}
    ) as bob:
        created = await bob.post("/api/v1/chat/sessions")
        assert created.status_code == 201
        bob_sid = created.json()["id"]
    url = f"{server.ws}/api/v1/chat/sessions/{bob_sid}/ws?token={bob_token}"
    async with connect(url, ping_interval=None) as watcher:
        seen: list[dict] = []  # type: ignore[type-arg]

        async def listen() -> None:
            async for text in watcher:
                seen.append(json.loads(text))

        listener = asyncio.create_task(listen())
        await watcher.send(json.dumps({"type": "presence.watch", "room": "general"}))

        pages = await _open_tabs(context, server, 3)
        for page in pages:
            await page.evaluate(JOIN_THROUGH_THE_SHARE, "general")
        diffs = [m for m in seen if m["type"] == "presence.diff"]

        async def members() -> list[dict]:  # type: ignore[type-arg]
            response = await context.request.get("/api/v1/presence/rooms/general")
            return list((await response.json())["members"])

        async with asyncio.timeout(50 * UNIT):
            while [m["sessions"] for m in await members()] != [3]:  # noqa: ASYNC110
                await asyncio.sleep(UNIT / 2)
        alice = (await members())[0]["user"]

        leaders = [await page.evaluate("window.isLeader()") for page in pages]
        await pages[leaders.index(True)].close()
        survivors = [page for i, page in enumerate(pages) if not leaders[i]]
        async with asyncio.timeout(HANDOVER):
            while await _statuses(survivors) != ["connected", "connected"]:  # noqa: ASYNC110
                await asyncio.sleep(UNIT / 4)
        # Past the grace: the closed tab's own presence has gone by now.
        grace = server.services.settings.offline_grace
        async with asyncio.timeout(grace + 50 * UNIT):
            while [m["sessions"] for m in await members()] != [2]:  # noqa: ASYNC110
                await asyncio.sleep(UNIT / 2)
        await asyncio.sleep(10 * UNIT)
        listener.cancel()
        diffs = [m for m in seen if m["type"] == "presence.diff"]
        assert any(j["user"] == alice for d in diffs for j in d["joins"])
        assert [x for d in diffs for x in d["leaves"] if x["user"] == alice] == []
        assert [m["user"] for m in await members()] == [alice]
