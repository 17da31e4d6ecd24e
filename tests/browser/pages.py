"""A bare page around the browser package, for tests of the client itself (the demo
pages have tests of their own): it starts a ChatSessionManager with the options its
query string names and records every event the manager dispatches in
``window.events``.

It is written into a document the server served (``/healthz``), so that the page has
the server's origin and its loopback address: Chromium's local-network checks block a
page that Playwright's routing fulfilled (it has no address) from reaching 127.0.0.1."""

from __future__ import annotations

from urllib.parse import urlencode

PATH = "/healthz"

CLIENT_PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>client test</title>
<p id="status">idle</p>
<script type="module">
import { ChatSessionManager, getOrCreateSessionId } from '__SRC__/index.js';
import { sharedSocketFor } from '__SRC__/sharedSocket.js';

const query = new URLSearchParams(location.search);
const options = {};
if (query.has('share')) options.shareConnection = true;
if (query.has('interval')) options.heartbeatIntervalMs = Number(query.get('interval'));
if (query.has('credentials')) options.credentials = query.get('credentials');
const manager = new ChatSessionManager(query.get('base') ?? '/api/v1/chat', options);
window.manager = manager;
window.events = [];
window.isLeader = () => manager.sharesConnection && sharedSocketFor().isLeader;
const flat = (k, v) => (v instanceof Error ? { message: v.message, status: v.status ?? null } : v);
const plain = (value) => JSON.parse(JSON.stringify(value, flat));
for (const type of ['statuschange', 'session-replaced', 'ended', 'error']) {
  manager.addEventListener(type, (event) => {
    window.events.push({ type, detail: plain(event.detail) });
  });
}
manager.addEventListener('statuschange', () => {
  document.getElementById('status').textContent = manager.status;
});
manager.startSession(getOrCreateSessionId());
</script>
</html>
"""


def client_page(src: str = "/static/src") -> str:
    """The page's HTML, importing the package from ``src``."""
    return CLIENT_PAGE.replace("__SRC__", src)


async def open_client_page(page, origin: str, src: str = "/static/src", **query: str) -> None:  # type: ignore[no-untyped-def]
    """Loads the page at ``origin`` with ``query`` as its options."""
    await page.goto(f"{origin}{PATH}" + (f"?{urlencode(query)}" if query else ""))
    await page.set_content(client_page(src))


async def status_is(page, status: str, timeout_ms: float) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_function(
        "(status) => window.manager?.status === status", arg=status, timeout=timeout_ms
    )
