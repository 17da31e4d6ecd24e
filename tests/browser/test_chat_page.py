"""The spec's scenarios as a user would do them, in real Chromium against a real server."""

from __future__ import annotations

import asyncio
import logging

import pytest

from presence.settings import Settings

from ..utils import UNIT, serve

pytestmark = pytest.mark.browser

# A WebSocket that can never open: the page must fall back to REST heartbeats.
FAILING_WEBSOCKET = """
window.WebSocket = class extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.readyState = 0;
    setTimeout(() => {
      this.readyState = 3;
      this.dispatchEvent(new Event('error'));
      this.dispatchEvent(new CloseEvent('close', { code: 1006 }));
    }, 0);
  }
  send() { throw new Error('not open'); }
  close() {}
};
"""

SET_VISIBILITY = """(state) => {
  Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => state });
  Object.defineProperty(document, 'hidden', { configurable: true, get: () => state === 'hidden' });
  document.dispatchEvent(new Event('visibilitychange'));
}"""


@pytest.fixture
async def server():
    """A development-mode server: each browser context is its own anonymous user."""
    settings = Settings(
        port=0,
        session_ttl=20 * UNIT,
        heartbeat_interval=5 * UNIT,
        ping_timeout=10 * UNIT,
        inactive_threshold=10 * UNIT,
    )
    async with serve(settings) as running:
        yield running


@pytest.fixture
async def context(browser, server):
    context = await browser.new_context(base_url=server.http)
    yield context
    await context.close()


async def _connected(page) -> str:
    """Waits for the live panel to say the socket is open; returns the session id."""
    await page.wait_for_selector('#status[data-value="connected"]', timeout=10_000)
    return (await page.text_content("#session-id")).strip()


async def _server_session(context, server, sid: str) -> int:
    response = await context.request.get(f"/api/v1/chat/sessions/{sid}")
    return response.status


async def test_refresh_continues_the_same_session(context, server):
    """Persistence: start a chat, refresh, and the same session continues."""
    page = await context.new_page()
    await page.goto("/chat")
    sid = await _connected(page)
    assert len(sid) == 22
    assert await page.text_content("#transport") == "websocket"
    await page.reload()
    assert await _connected(page) == sid
    assert await _server_session(context, server, sid) == 200


async def test_hub_cleans_up_and_chat_starts_a_new_session(context, server):
    """Cleanup: going to the hub deletes the session on the server; back in chat a new
    session is created."""
    page = await context.new_page()
    await page.goto("/chat")
    sid = await _connected(page)
    await page.click("#back-to-hub")
    await page.wait_for_url("**/hub")
    assert await _server_session(context, server, sid) == 404
    await page.wait_for_selector('body[data-loaded="true"]')
    assert await page.locator("#sessions tr[data-session-id]").count() == 0
    await page.goto("/chat")
    new_sid = await _connected(page)
    assert new_sid != sid
    assert await _server_session(context, server, new_sid) == 200


async def test_new_tab_gets_its_own_session(context, server):
    """A second tab of the same browser runs its own session."""
    first = await context.new_page()
    await first.goto("/chat")
    second = await context.new_page()
    await second.goto("/chat")
    assert await _connected(first) != await _connected(second)


async def test_rest_heartbeat_rhythm_pauses_while_hidden(browser):
    """Heartbeat: without a socket, a request every 30 s of page time (the server's
    HEARTBEAT_INTERVAL is longer here, so the client's own rhythm rules); hidden, one
    saying the tab is away and then none; shown again, one at once and then the rhythm
    resumes."""
    settings = Settings(port=0, session_ttl=3600.0, heartbeat_interval=60.0)
    async with serve(settings) as server:
        context = await browser.new_context(base_url=server.http)
        try:
            await _rest_heartbeat_rhythm(context)
        finally:
            await context.close()


async def _rest_heartbeat_rhythm(context) -> None:  # type: ignore[no-untyped-def]
    beats: list[str] = []
    page = await context.new_page()
    page.on(
        "request",
        lambda request: beats.append(request.url) if request.url.endswith("/heartbeat") else None,
    )
    await page.add_init_script(FAILING_WEBSOCKET)
    await page.clock.install()
    await page.goto("/chat")
    await page.wait_for_selector('#status[data-value="polling"]', timeout=10_000)
    await page.wait_for_timeout(200)
    start = len(beats)
    for _ in range(3):
        await page.clock.run_for(30_000)
        await page.wait_for_timeout(100)
    assert len(beats) - start == 3

    await page.evaluate(SET_VISIBILITY, "hidden")
    await page.clock.run_for(120_000)
    await page.wait_for_timeout(100)
    assert len(beats) - start == 4  # the one that says the tab is away
    assert await page.get_attribute("#status", "data-value") == "paused"

    await page.evaluate(SET_VISIBILITY, "visible")
    await page.wait_for_timeout(200)
    assert len(beats) - start == 5
    await page.clock.run_for(30_000)
    await page.wait_for_timeout(100)
    assert len(beats) - start == 6
    assert await page.text_content("#transport") == "http"


async def test_open_socket_needs_no_heartbeat_requests(context, server):
    """With the WebSocket open the session outlives its TTL with no heartbeat request."""
    requests: list[str] = []
    page = await context.new_page()
    page.on("request", lambda request: requests.append(request.url))
    await page.goto("/chat")
    sid = await _connected(page)
    ttl = server.services.settings.session_ttl
    await asyncio.sleep(3 * ttl)
    assert [url for url in requests if "/heartbeat" in url] == []
    assert await _server_session(context, server, sid) == 200
    assert await page.get_attribute("#status", "data-value") == "connected"


async def test_closing_the_page_sends_the_cleanup_beacon(browser, caplog):
    """Closing the tab sends the inactive-cleanup beacon, and the server acts on it: a
    stale session goes (the TTL is long here, so nothing else could remove it)."""
    settings = Settings(
        port=0, session_ttl=3600.0, heartbeat_interval=3 * UNIT, inactive_threshold=10 * UNIT
    )
    async with serve(settings) as server:
        caplog.set_level(logging.INFO, logger="presence.access")
        context = await browser.new_context(base_url=server.http)
        page = await context.new_page()
        await page.goto("/chat")
        current = await _connected(page)
        stale = await context.request.post(
            "/api/v1/chat/sessions", headers={"origin": server.http}, data={}
        )
        assert stale.status == 201
        stale_id = (await stale.json())["id"]
        await asyncio.sleep(1.5 * settings.inactive_threshold)
        await page.close(run_before_unload=True)

        async def gone() -> bool:
            return await _server_session(context, server, stale_id) == 404

        async with asyncio.timeout(50 * UNIT):
            while not await gone():  # noqa: ASYNC110 - polls the server; no event to await
                await asyncio.sleep(UNIT)
        # Playwright does not report a closing page's beacon, so the server's access log
        # is the witness that the request came.
        cleanups = [r for r in caplog.records if "/sessions/cleanup" in r.getMessage()]
        assert len(cleanups) == 1 and '" 200 ' in cleanups[0].getMessage()
        # The page's own session was active, so the beacon spared it.
        assert await _server_session(context, server, current) == 200
        await context.close()


async def test_server_ended_session_stops_the_page(context, server):
    """A session deleted on the server ends the page's session with a reason, and the
    page does not retry against it."""
    requests: list[str] = []
    page = await context.new_page()
    await page.goto("/chat")
    sid = await _connected(page)
    page.on("request", lambda request: requests.append(request.url))
    response = await context.request.delete(
        f"/api/v1/chat/sessions/{sid}", headers={"origin": server.http}
    )
    assert response.status == 204
    await page.wait_for_selector('#status[data-value="ended"]', timeout=10_000)
    await asyncio.sleep(10 * UNIT)
    assert [url for url in requests if sid in url] == []
