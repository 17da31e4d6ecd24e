"""Presence on the demo pages, in real Chromium against a real server: two users (two
browser contexts, two anonymous identities) in one room see each other come and go."""

from __future__ import annotations

import asyncio
import json

import pytest
from playwright.async_api import expect

from presence.settings import Settings

from ..utils import UNIT, serve
from .test_chat_page import FAILING_WEBSOCKET, SET_VISIBILITY

pytestmark = pytest.mark.browser

# What a page waits for at most, in ms: a join or leave shows within the grace plus a
# diff window, well inside this.
WAIT_MS = 150 * UNIT * 1000


@pytest.fixture
async def server():
    """A development-mode server with a short grace, so that leaves show quickly."""
    settings = Settings(
        port=0,
        session_ttl=60 * UNIT,
        heartbeat_interval=10 * UNIT,
        ping_timeout=20 * UNIT,
        offline_grace=10 * UNIT,
    )
    async with serve(settings) as running:
        yield running


async def _user(browser, server, name: str):
    """A browser context of its own (its own anonymous user) whose demo name is
    ``name``."""
    context = await browser.new_context(base_url=server.http)
    identity = json.dumps({"name": name, "client": name.lower()})
    await context.add_init_script(
        f"localStorage.setItem('presence.demo.identity', {json.dumps(identity)});"
    )
    return context


def _online(page):
    return page.get_by_role("list", name="Online").get_by_role("listitem")


async def _in_room(page, room: str, *names: str) -> None:
    """The page's Online list shows exactly ``names``."""
    items = _online(page)
    await expect(items).to_have_count(len(names), timeout=WAIT_MS)
    for name in names:
        await expect(items.filter(has_text=name)).to_have_count(1, timeout=WAIT_MS)
    await expect(page.locator("#room-name")).to_have_text(room)


@pytest.fixture
async def two_users(browser, server):
    ada = await _user(browser, server, "Ada")
    bob = await _user(browser, server, "Bob")
    yield ada, bob
    await ada.close()
    await bob.close()


async def test_two_users_see_each_other_join_and_leave_with_reasons(two_users):
    """Ada and Bob in /chat?room=x see each other join; Bob closing his tab shows as
    "closed the tab", his leaving the room as "left", and "Back to Hub" (his sessions
    cleaned up) as "session ended"."""
    ada_context, bob_context = two_users
    ada = await ada_context.new_page()
    await ada.goto("/chat?room=x")
    await _in_room(ada, "x", "Ada")
    ada_row = _online(ada).filter(has_text="Ada")
    await expect(ada_row).to_contain_text("(you)")
    await expect(ada_row).to_contain_text("1 tab")
    await expect(ada_row.locator(".dot")).to_have_attribute("data-status", "online")

    bob = await bob_context.new_page()
    await bob.goto("/chat?room=x")
    await _in_room(bob, "x", "Ada", "Bob")
    await _in_room(ada, "x", "Ada", "Bob")
    await expect(ada.locator("#room-log")).to_contain_text("Bob joined", timeout=WAIT_MS)
    await expect(ada.locator("#online-count")).to_have_text("2")
    await expect(ada.locator("#members-status")).to_contain_text("Live")

    # A second tab of Bob's is one member with two tabs.
    bob_again = await bob_context.new_page()
    await bob_again.goto("/chat?room=x")
    await expect(_online(ada).filter(has_text="Bob")).to_contain_text("2 tabs", timeout=WAIT_MS)
    await bob_again.close()
    await expect(_online(ada).filter(has_text="Bob")).to_contain_text("1 tab", timeout=WAIT_MS)

    await bob.close()
    await expect(ada.locator("#room-log")).to_contain_text(
        "Bob left (closed the tab)", timeout=WAIT_MS
    )
    await _in_room(ada, "x", "Ada")

    bob = await bob_context.new_page()
    await bob.goto("/chat?room=x")
    await _in_room(ada, "x", "Ada", "Bob")
    await bob.evaluate("window.presence.leave('x')")
    await expect(ada.locator("#room-log")).to_contain_text("Bob left", timeout=WAIT_MS)
    await _in_room(ada, "x", "Ada")
    log = await ada.locator("#room-log li").first.text_content()
    assert log is not None and log.endswith("Bob left")

    await bob.goto("/chat?room=x")
    await _in_room(ada, "x", "Ada", "Bob")
    await bob.click("#back-to-hub")
    await bob.wait_for_url("**/hub")
    await expect(ada.locator("#room-log")).to_contain_text(
        "Bob left (session ended)", timeout=WAIT_MS
    )
    await _in_room(ada, "x", "Ada")


async def test_a_refresh_shows_no_leave(two_users, server):
    """Bob refreshing his page is no leave and no join for Ada: the grace covers it."""
    ada_context, bob_context = two_users
    ada = await ada_context.new_page()
    await ada.goto("/chat?room=x")
    bob = await bob_context.new_page()
    await bob.goto("/chat?room=x")
    await _in_room(ada, "x", "Ada", "Bob")
    await expect(ada.locator("#room-log")).to_contain_text("Bob joined", timeout=WAIT_MS)
    entries = await ada.locator("#room-log li").count()

    await bob.reload()
    await _in_room(bob, "x", "Ada", "Bob")
    # Past the grace and a diff window: a leave, had there been one, would show by now.
    await asyncio.sleep(2 * server.services.settings.offline_grace + 5 * UNIT)
    assert await ada.locator("#room-log li").count() == entries
    await expect(ada.locator("#room-log")).not_to_contain_text("left")
    await _in_room(ada, "x", "Ada", "Bob")
    await expect(_online(ada).filter(has_text="Bob")).to_contain_text("1 tab")


async def test_rooms_are_apart_and_the_hub_counts_them(two_users):
    """Someone in /chat?room=y is not in x; the hub lists both rooms with their counts,
    each a link into its chat."""
    ada_context, bob_context = two_users
    ada = await ada_context.new_page()
    await ada.goto("/chat?room=x")
    bob = await bob_context.new_page()
    await bob.goto("/chat?room=y")
    await _in_room(bob, "y", "Bob")
    carol = await bob_context.new_page()
    await carol.goto("/chat?room=x")
    await _in_room(ada, "x", "Ada", "Bob")
    await _in_room(bob, "y", "Bob")

    hub = await ada_context.new_page()
    await hub.goto("/hub")
    rooms = hub.get_by_role("list", name="Rooms").get_by_role("listitem")
    await expect(rooms).to_have_count(2, timeout=WAIT_MS)
    await expect(rooms.nth(0)).to_contain_text("#x")
    await expect(rooms.nth(0)).to_contain_text("2 online")
    await expect(rooms.nth(1)).to_contain_text("#y")
    await expect(rooms.nth(1)).to_contain_text("1 online")
    await rooms.nth(1).get_by_role("link").click()
    await hub.wait_for_url("**/chat?room=y")
    await _in_room(hub, "y", "Ada", "Bob")


async def test_without_a_socket_the_list_is_polled_and_presence_kept(two_users):
    """A page whose WebSocket cannot open joins over REST and polls the list, and says
    so; the other user sees it in the room all the same."""
    ada_context, bob_context = two_users
    ada = await ada_context.new_page()
    await ada.goto("/chat?room=x")
    bob = await bob_context.new_page()
    await bob.add_init_script(FAILING_WEBSOCKET)
    await bob.goto("/chat?room=x")
    await bob.wait_for_selector('#status[data-value="polling"]', timeout=WAIT_MS)
    await _in_room(bob, "x", "Ada", "Bob")
    await expect(bob.locator("#members-status")).to_contain_text("polled")
    await _in_room(ada, "x", "Ada", "Bob")
    # The poll sees Ada's changes: her second tab shows on Bob's polled list.
    ada_again = await ada_context.new_page()
    await ada_again.goto("/chat?room=x")
    await expect(_online(bob).filter(has_text="Ada")).to_contain_text("2 tabs", timeout=WAIT_MS)


async def test_a_hidden_tab_shows_as_away(two_users):
    """Bob hiding his only tab turns his dot to away on Ada's list, an update rather
    than a leave; showing it again turns it back to online."""
    ada_context, bob_context = two_users
    ada = await ada_context.new_page()
    await ada.goto("/chat?room=x")
    bob = await bob_context.new_page()
    await bob.goto("/chat?room=x")
    await _in_room(ada, "x", "Ada", "Bob")
    bob_dot = _online(ada).filter(has_text="Bob").locator(".dot")
    await expect(bob_dot).to_have_attribute("data-status", "online", timeout=WAIT_MS)
    await bob.evaluate(SET_VISIBILITY, "hidden")
    await expect(bob_dot).to_have_attribute("data-status", "away", timeout=WAIT_MS)
    await expect(_online(ada).filter(has_text="Bob")).to_contain_text("away")
    await bob.evaluate(SET_VISIBILITY, "visible")
    await expect(bob_dot).to_have_attribute("data-status", "online", timeout=WAIT_MS)
    await expect(ada.locator("#room-log")).not_to_contain_text("left")


# Keeps every WebSocket the page opens at hand, so that a test can cut one.
KEEP_SOCKETS = """
window.__sockets = [];
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    window.__sockets.push(this);
  }
};
"""


async def test_a_lost_socket_keeps_the_room_and_comes_back_live(two_users):
    """Bob's socket dropping is no leave: his page holds the room over REST meanwhile
    and joins again on the new socket, and his list is live again."""
    ada_context, bob_context = two_users
    ada = await ada_context.new_page()
    await ada.goto("/chat?room=x")
    bob = await bob_context.new_page()
    await bob.add_init_script(KEEP_SOCKETS)
    await bob.goto("/chat?room=x")
    await _in_room(ada, "x", "Ada", "Bob")
    await expect(bob.locator("#members-status")).to_contain_text("Live", timeout=WAIT_MS)
    await bob.evaluate("window.__sockets.at(-1).close()")
    # The fallback may last a moment only (the first retry is within 0.5 s): its
    # trace is the activity log.
    await expect(bob.locator("#activity")).to_contain_text(
        "Falling back to HTTP heartbeats", timeout=WAIT_MS
    )
    await bob.wait_for_selector('#status[data-value="connected"]', timeout=WAIT_MS)
    assert await bob.evaluate("window.__sockets.length") == 2
    await expect(bob.locator("#members-status")).to_contain_text("Live", timeout=WAIT_MS)
    await _in_room(bob, "x", "Ada", "Bob")
    # Past the grace: had the drop been a leave, Ada would have been told by now.
    await asyncio.sleep(25 * UNIT)
    await _in_room(ada, "x", "Ada", "Bob")
    await expect(ada.locator("#room-log")).not_to_contain_text("left")
    # The new socket carries the room: Ada sees Bob's tab hide through it.
    await bob.evaluate(SET_VISIBILITY, "hidden")
    bob_dot = _online(ada).filter(has_text="Bob").locator(".dot")
    await expect(bob_dot).to_have_attribute("data-status", "away", timeout=WAIT_MS)


ROOM_ERROR = """async ([name, meta]) => {
  const room = window.presence.join(name, meta);
  if (room.status === 'error') return room.error.code;
  return await new Promise((resolve) => {
    room.addEventListener('error', () => resolve(room.error.code), { once: true });
    room.addEventListener('change', () => room.status === 'live' && resolve('live'));
  });
}"""


async def test_the_server_refuses_too_big_a_meta_and_too_many_rooms(two_users, server):
    """A meta past PRESENCE_MAX_META_BYTES and a room past PRESENCE_MAX_ROOMS_PER_SESSION
    are the room's error with the server's code; the page's socket and its other rooms
    carry on."""
    ada_context, _ = two_users
    ada = await ada_context.new_page()
    await ada.goto("/chat?room=x")
    await _in_room(ada, "x", "Ada")
    settings = server.services.settings
    big = {"blob": "x" * (settings.max_meta_bytes + 1)}
    assert await ada.evaluate(ROOM_ERROR, ["big-meta", big]) == "invalid_body"
    # x is one room; fill up to the limit, then one more.
    for n in range(settings.max_rooms_per_session - 1):
        assert await ada.evaluate(ROOM_ERROR, [f"r{n}", None]) == "live"
    assert await ada.evaluate(ROOM_ERROR, ["one-too-many", None]) == "too_many_rooms"
    assert await ada.get_attribute("#status", "data-value") == "connected"
    await _in_room(ada, "x", "Ada")
    # Letting go of a room makes room for another.
    await ada.evaluate("window.presence.leave('r0')")
    assert await ada.evaluate(ROOM_ERROR, ["room-again", None]) == "live"
