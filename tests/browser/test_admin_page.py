"""The admin page in real Chromium against a real server: refused without the token,
signed in through its form, a room's members changing live as a user comes and goes
in another browser context, and a phone's width."""

from __future__ import annotations

import json

import pytest
from playwright.async_api import expect

from presence.settings import Settings

from ..utils import UNIT, serve

pytestmark = pytest.mark.browser

ADMIN_TOKEN = "admin-token-for-the-browser-tests"
# What a page waits for at most, in ms: a room the admin has not seen yet is found on
# the next status tick (2 s), a leave after the grace and a diff window.
WAIT_MS = 200 * UNIT * 1000


@pytest.fixture
async def server():
    """A development-mode server (the demo pages hand out identities) with the admin
    page on and a short grace, so that leaves show quickly."""
    settings = Settings(
        port=0,
        session_ttl=60 * UNIT,
        heartbeat_interval=10 * UNIT,
        ping_timeout=20 * UNIT,
        offline_grace=10 * UNIT,
        admin_token=ADMIN_TOKEN,
    )
    async with serve(settings) as running:
        yield running


async def _signed_in(browser, server, **options):
    """A browser context signed in to the admin page through its form."""
    context = await browser.new_context(base_url=server.http, **options)
    page = await context.new_page()
    await page.goto("/admin")
    await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Rooms")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
    return context, page


async def test_the_page_is_refused_without_the_token_and_opens_with_it(browser, server):
    """/admin answers 401 with the sign-in form and nothing of the page; a wrong token
    is said so in words; the right one opens the page, live, with an HttpOnly,
    SameSite=Strict admin cookie of its own."""
    context = await browser.new_context(base_url=server.http)
    page = await context.new_page()
    response = await page.goto("/admin")
    assert response is not None and response.status == 401
    await expect(page.get_by_role("heading", name="Sign in to the admin page")).to_be_visible()
    await expect(page.locator("#rooms")).to_have_count(0)
    await page.get_by_label("Admin token").fill("not-the-admin-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("that is not the admin token")

    await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Rooms")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
    await expect(page.locator("#store-state")).to_have_text("ready", timeout=WAIT_MS)
    await expect(page.locator("#webhooks-health")).to_have_text("webhooks not configured")
    await expect(page.locator("#processes tr")).to_have_count(1, timeout=WAIT_MS)
    await expect(page.get_by_role("img", name="Now 0 sockets")).to_be_visible(timeout=WAIT_MS)
    (cookie,) = [c for c in await context.cookies() if c["name"] == "presence_admin"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert not [c for c in await context.cookies() if c["name"] == "presence_token"]

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in to the admin page")).to_be_visible(
        timeout=WAIT_MS
    )
    await context.close()


async def _user(browser, server, name: str):
    """A browser context of its own (its own anonymous user) whose demo name is
    ``name``."""
    context = await browser.new_context(base_url=server.http)
    identity = json.dumps({"name": name, "client": name.lower()})
    await context.add_init_script(
        f"localStorage.setItem('presence.demo.identity', {json.dumps(identity)});"
    )
    return context


async def test_a_rooms_members_change_live(browser, server):
    """Users opening /chat?room=general in other contexts show in the room's members on
    the admin page, with the sockets counted; one joining while it is watched is an
    event, their closing the tab takes them out and says why, and the room goes once
    empty."""
    admin_context, admin = await _signed_in(browser, server)
    ada_context = await _user(browser, server, "Ada")
    bob_context = await _user(browser, server, "Bob")
    ada = await ada_context.new_page()
    await ada.goto("/chat?room=general")

    members = admin.get_by_role("list", name="Members of general").get_by_role("listitem")
    await expect(members).to_have_count(1, timeout=WAIT_MS)
    await expect(members.first).to_contain_text("Ada")
    await expect(members.first).to_contain_text("online")
    await expect(members.first).to_contain_text("1 tab")
    await expect(admin.locator("#stat-sockets")).to_have_text("1", timeout=WAIT_MS)

    bob = await bob_context.new_page()
    await bob.goto("/chat?room=general")
    await expect(members).to_have_count(2, timeout=WAIT_MS)
    await expect(members.filter(has_text="Bob")).to_contain_text("online")
    await expect(admin.locator("#events")).to_contain_text("Bob joined general", timeout=WAIT_MS)
    await expect(admin.locator("#stat-sockets")).to_have_text("2", timeout=WAIT_MS)

    await bob.close()
    await expect(members).to_have_count(1, timeout=WAIT_MS)
    await expect(members.first).to_contain_text("Ada")
    await expect(admin.locator("#events")).to_contain_text(
        "Bob left general (closed the tab)", timeout=WAIT_MS
    )

    await ada.close()
    await expect(admin.get_by_role("list", name="Members of general")).to_have_count(
        0, timeout=WAIT_MS
    )
    await expect(admin.locator("#rooms-empty")).to_be_visible()
    await ada_context.close()
    await bob_context.close()
    await admin_context.close()


async def test_the_page_works_at_a_phones_width(browser, server):
    """At 390 px wide the page folds to one column: no sideways scrolling, every
    section's heading and the sign-out button in view as one scrolls."""
    context, page = await _signed_in(browser, server, viewport={"width": 390, "height": 844})
    await page.wait_for_selector('body[data-loaded="true"]', timeout=WAIT_MS)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    for name in ("Online, last hour", "Rooms", "Processes", "Store", "Webhooks", "Recent events"):
        heading = page.get_by_role("heading", name=name, exact=True)
        await heading.scroll_into_view_if_needed()
        await expect(heading).to_be_in_viewport()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    boxes = await page.locator("main.admin > section").evaluate_all(
        "sections => sections.map(s => s.getBoundingClientRect().left)"
    )
    assert len(set(round(left) for left in boxes)) == 1  # one column
    await context.close()


async def test_a_dead_letter_is_replayed_from_the_page(browser):
    """Events a receiver refused past the retry hours show as dead letters on the page,
    with the error; once the receiver is back, the letter's Replay button delivers that
    very event to it, and the letter leaves the list."""
    from ..test_webhooks import SECRET, receiving

    async with receiving() as receiver:
        receiver.status = 500
        settings = Settings(
            port=0,
            session_ttl=60 * UNIT,
            heartbeat_interval=10 * UNIT,
            ping_timeout=20 * UNIT,
            offline_grace=10 * UNIT,
            admin_token=ADMIN_TOKEN,
            webhook_urls=(receiver.url,),
            webhook_secret=SECRET,
            webhook_retry=20 * UNIT,
        )
        async with serve(settings) as server:
            admin_context, admin = await _signed_in(browser, server)
            await expect(admin.locator("#webhooks-health")).to_contain_text(
                "1 receiver", timeout=WAIT_MS
            )
            await expect(admin.locator("#receivers")).to_contain_text("127.0.0.1", timeout=WAIT_MS)
            # The URL's query (a token) is the receiver's secret: never shown.
            assert "query-token" not in await admin.content()
            user = await _user(browser, server, "Ada")
            chat = await user.new_page()
            await chat.goto("/chat?room=general")

            letters = admin.get_by_role("list", name="Dead letters").get_by_role("listitem")
            await expect(letters.first).to_contain_text("HTTP 500", timeout=WAIT_MS)
            await expect(admin.locator("#receivers")).to_contain_text(
                "last error: HTTP 500", timeout=WAIT_MS
            )
            first = letters.first
            letter_id = await first.get_attribute("data-id")
            event_id = await first.get_attribute("data-event")
            assert letter_id and event_id
            assert event_id not in receiver.events

            receiver.status = 200
            await admin.get_by_role("button", name=f"Replay dead letter {letter_id}").click()
            await receiver.wait_for(lambda: event_id in receiver.events, WAIT_MS / 1000)
            assert receiver.deliveries[event_id] == 1
            await expect(admin.locator(f'#dead-letters li[data-id="{letter_id}"]')).to_have_count(
                0, timeout=WAIT_MS
            )
            await expect(admin.locator("#events")).to_contain_text(
                f"dead letter {letter_id} replayed", timeout=WAIT_MS
            )
            await user.close()
            await admin_context.close()
