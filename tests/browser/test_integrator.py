"""What an integrator hit, in real Chromium against a real server: a first visit with a
stored id and no identity, an identity lost mid-session, and an API on another origin
used with cookies (CORS with credentials for the allowed origins only)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from presence.settings import Settings

from ..utils import REPO, UNIT, serve
from .pages import client_page, open_client_page, status_is

pytestmark = pytest.mark.browser

# A WebSocket that never opens: the page keeps its session over REST heartbeats.
FAILING_WEBSOCKET = """
window.WebSocket = class extends EventTarget {
  constructor(url) {
    super();
    this.readyState = 0;
    setTimeout(() => {
      this.readyState = 3;
      this.dispatchEvent(new CloseEvent('close', { code: 1006 }));
    }, 0);
  }
  send() { throw new Error('not open'); }
  close() {}
};
"""


@pytest.fixture
async def server():
    settings = Settings(port=0, session_ttl=60 * UNIT, heartbeat_interval=5 * UNIT)
    async with serve(settings) as running:
        yield running


async def _events(page, kind: str) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    events = await page.evaluate("window.events")
    return [e["detail"] for e in events if e["type"] == kind]


async def test_first_visit_with_a_stored_id_and_no_identity_starts_a_new_session(browser, server):
    """A tab that kept an id but has no identity cookie (a first visit in development
    mode, or cookies cleared): the 401 makes a new session, reported, never an error."""
    context = await browser.new_context(base_url=server.http)
    try:
        await context.add_init_script(
            "sessionStorage.setItem('presence.sessionId', 'AAAAAAAAAAAAAAAAAAAAAA')"
        )
        page = await context.new_page()
        await open_client_page(page, server.http)
        await status_is(page, "connected", 10_000)
        replaced = await _events(page, "session-replaced")
        new_id = await page.evaluate("window.manager.sessionId")
        assert replaced == [
            {"oldId": "AAAAAAAAAAAAAAAAAAAAAA", "newId": new_id, "reason": "unauthorized"}
        ]
        assert await _events(page, "error") == []
        # The POST gave the browser its identity: the new session is its own.
        response = await context.request.get(f"/api/v1/chat/sessions/{new_id}")
        assert response.status == 200
    finally:
        await context.close()


async def test_a_401_on_a_heartbeat_starts_a_new_session(browser, server):
    """The identity is gone mid-session (here its cookie is cleared, as a development
    server restarted with another key would do): the next heartbeat's 401 starts a new
    session and says so, rather than poll in vain."""
    context = await browser.new_context(base_url=server.http)
    try:
        await context.add_init_script(FAILING_WEBSOCKET)
        page = await context.new_page()
        await open_client_page(page, server.http)
        await status_is(page, "polling", 10_000)
        old_id = await page.evaluate("window.manager.sessionId")
        await context.clear_cookies()
        await page.wait_for_function(
            "(old) => window.manager.sessionId && window.manager.sessionId !== old",
            arg=old_id,
            timeout=10_000,
        )
        await status_is(page, "polling", 10_000)
        new_id = await page.evaluate("window.manager.sessionId")
        replaced = await _events(page, "session-replaced")
        assert replaced == [{"oldId": old_id, "newId": new_id, "reason": "unauthorized"}]
        assert await page.evaluate("sessionStorage.getItem('presence.sessionId')") == new_id
        response = await context.request.get(f"/api/v1/chat/sessions/{new_id}")
        assert response.status == 200
    finally:
        await context.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _static_site(root: Path) -> Iterator[str]:
    """An app's own origin: a plain HTTP server on 127.0.0.1 serving ``root``."""
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def app_root(tmp_path: Path) -> Path:
    """An app that carries its own copy of the package and the test page."""
    shutil.copytree(REPO / "web" / "src", tmp_path / "src")
    (tmp_path / "app.html").write_text(client_page("./src"))
    return tmp_path


async def test_cross_origin_with_cookies_works_for_allowed_origins_only(browser, app_root):
    """An app on another origin uses the API with ``credentials: 'include'``: allowed,
    its browser gets an identity and a live session over the socket; an origin not
    allowed gets no CORS grant and no session; and without the option the page says
    why it cannot keep a session instead of polling forever."""
    with _static_site(app_root) as allowed, _static_site(app_root) as foreign:
        settings = Settings(
            port=0,
            session_ttl=60 * UNIT,
            heartbeat_interval=5 * UNIT,
            allowed_origins=(allowed,),
        )
        async with serve(settings) as api:
            base = f"{api.http}/api/v1/chat"
            context = await browser.new_context()
            try:
                page = await context.new_page()
                await page.goto(f"{allowed}/app.html?base={base}&credentials=include")
                await status_is(page, "connected", 10_000)
                sid = await page.evaluate("window.manager.sessionId")
                assert await page.evaluate("window.manager.transport") == "websocket"
                # The identity cookie is the API's, kept by the browser for its host.
                cookies = await context.cookies(api.http)
                assert [c["name"] for c in cookies] == ["presence_token"]
                assert api.services.registry.sockets == 1
                assert len(api.services.registry) == 1
                assert sid in {ref[1] for ref in api.services.registry.refs()}

                refused = await context.new_page()
                await refused.goto(f"{foreign}/app.html?base={base}&credentials=include")
                await status_is(refused, "error", 10_000)
                preflight = await context.request.fetch(
                    f"{base}/sessions",
                    method="OPTIONS",
                    headers={
                        "origin": foreign,
                        "access-control-request-method": "POST",
                        "access-control-request-headers": "content-type",
                    },
                )
                assert "access-control-allow-origin" not in preflight.headers
                granted = await context.request.fetch(
                    f"{base}/sessions",
                    method="OPTIONS",
                    headers={
                        "origin": allowed,
                        "access-control-request-method": "POST",
                        "access-control-request-headers": "content-type",
                    },
                )
                assert granted.headers["access-control-allow-origin"] == allowed
                assert granted.headers["access-control-allow-credentials"] == "true"
            finally:
                await context.close()

            context = await browser.new_context()
            try:
                page = await context.new_page()
                await page.goto(f"{allowed}/app.html?base={base}")
                await status_is(page, "error", 20_000)
                errors = await _events(page, "error")
                assert "credentials: 'include'" in errors[-1]["error"]["message"]
                await asyncio.sleep(10 * UNIT)
                assert await page.evaluate("window.manager.status") == "error"
            finally:
                await context.close()
