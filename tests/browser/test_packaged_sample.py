"""The spec's ``ChatPage`` sample, exactly as the spec writes it (imports mapped to the
package), built with Vite against the tarball ``npm pack`` makes of ``web/`` and driven
in Chromium: an integrator's first hour, in one test.

The app installs React, Vite and the plugin from the npm registry itself, into
``.cache/packaged-sample`` (npm's own cache makes a second run quick), so a fresh
machine needs nothing but node and npm. The package comes in as a tarball, not as
``npm install ../web`` (a symlink, which would resolve ``react`` from
``web/node_modules`` and give the app two Reacts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from presence.settings import Settings

from ..utils import REPO, UNIT, free_port, serve

pytestmark = [pytest.mark.browser, pytest.mark.timeout(3000 * UNIT)]

FIXTURE = Path(__file__).resolve().parent / "packaged_sample"
CACHE = REPO / ".cache" / "packaged-sample"
NPM = shutil.which("npm")

# The app's own dependencies, pinned: React only as the app's, never the package's.
APP_DEPENDENCIES = {"react": "19.3.1", "react-dom": "19.3.1"}
APP_DEV_DEPENDENCIES = {"vite": "8.4.0", "@vitejs/plugin-react": "6.3.0"}

# The spec's imports, mapped to the package; getOrCreateSessionId, which the sample
# calls as "your session creation logic" without importing it, is the package's.
IMPORT_MAP = {
    "import { useChatSession } from '../../../hooks/useChatSession';": (
        "import { useChatSession } from '@presence/client/react';\n"
        "import { getOrCreateSessionId } from '@presence/client';"
    ),
}


def _run(args: list[str], cwd: Path, timeout: float) -> str:
    done = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def mapped_sample() -> str:
    """The spec's sample with its imports mapped to the package."""
    text = (FIXTURE / "spec_page.tsx").read_text(encoding="utf-8")
    for spec_import, package_import in IMPORT_MAP.items():
        assert spec_import in text, f"the sample no longer has {spec_import!r}"
        text = text.replace(spec_import, package_import)
    return text


@pytest.fixture(scope="module")
def built_app() -> Path:
    """The sample app, installed from the packed tarball and built with Vite."""
    if NPM is None:
        if os.environ.get("PRESENCE_REQUIRE_BROWSER") == "1":
            pytest.fail("npm is missing: the packaged sample cannot be built")
        pytest.skip("npm is missing (apt-get install npm)")
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob("presence-client-*.tgz"):
        old.unlink()
    packed = _run(
        [NPM, "pack", "--silent", "--pack-destination", str(CACHE)],
        REPO / "web",
        timeout=600 * UNIT,
    )
    tarball = CACHE / packed.strip().splitlines()[-1]
    assert tarball.is_file()

    app = CACHE / "app"
    for stale in ("ui", "dist", "index.html", "vite.config.js"):
        path = app / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    shutil.copytree(FIXTURE / "ui", app / "ui", dirs_exist_ok=True)
    shutil.copy(FIXTURE / "index.html", app / "index.html")
    shutil.copy(FIXTURE / "vite.config.js", app / "vite.config.js")
    page = app / "ui" / "app" / "contribution" / "chat" / "page.tsx"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(mapped_sample(), encoding="utf-8")
    manifest = {
        "name": "packaged-sample",
        "private": True,
        "type": "module",
        "dependencies": {"@presence/client": f"file:../{tarball.name}", **APP_DEPENDENCIES},
        "devDependencies": APP_DEV_DEPENDENCIES,
    }
    (app / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    # The tarball changes with every edit of web/: install it afresh each time.
    with contextlib.suppress(FileNotFoundError):
        (app / "package-lock.json").unlink()
    shutil.rmtree(app / "node_modules" / "@presence", ignore_errors=True)
    _run(
        [NPM, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        app,
        timeout=2400 * UNIT,
    )
    installed = app / "node_modules" / "@presence" / "client"
    assert not installed.is_symlink()
    # React is a peer: the package brings none of its own, so the app has one React.
    assert not (installed / "node_modules").exists()
    _run([NPM, "exec", "--", "vite", "build", "--logLevel", "warn"], app, timeout=1200 * UNIT)
    assert (app / "dist" / "index.html").is_file()
    return app


@contextlib.contextmanager
def _preview(app: Path, api: str) -> Iterator[str]:
    """``vite preview`` of the build, proxying /api (and its sockets) to ``api``."""
    port = free_port()
    command = [NPM or "npm", "exec", "--", "vite", "preview", "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--strictPort"],
        cwd=app,
        env={**os.environ, "PRESENCE_API": api},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(timeout=100 * UNIT)


async def _reachable(url: str, context) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(300 * UNIT):
        while True:
            with contextlib.suppress(Exception):
                response = await context.request.get(url)
                if response.ok:
                    return
            await asyncio.sleep(UNIT)


async def _sessions(context, origin: str) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    response = await context.request.get(f"{origin}/api/v1/chat/sessions")
    assert response.status == 200
    return list((await response.json())["sessions"])


async def _only_session(context, origin: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """Waits for the user to have exactly one session kept alive by the socket."""
    async with asyncio.timeout(100 * UNIT):
        while True:
            sessions = await _sessions(context, origin)
            if len(sessions) == 1 and sessions[0]["transport"] == "websocket":
                return sessions[0]
            await asyncio.sleep(UNIT)


async def test_the_spec_sample_built_with_vite_from_the_tarball(built_app, browser):
    """Session starts (one, StrictMode notwithstanding), a refresh continues it, and the
    hub button cleans up and navigates."""
    settings = Settings(port=0, session_ttl=60 * UNIT, heartbeat_interval=5 * UNIT)
    async with serve(settings) as api:
        with _preview(built_app, api.http) as origin:
            context = await browser.new_context()
            try:
                await _reachable(origin, context)
                errors: list[str] = []
                page = await context.new_page()
                page.on("pageerror", lambda error: errors.append(str(error)))
                await page.goto(origin)
                await page.get_by_role("button", name="Back to Hub").wait_for()

                first = await _only_session(context, origin)
                stored = "sessionStorage.getItem('presence.sessionId')"
                assert await page.evaluate(stored) == first["id"]

                await page.reload()
                await page.get_by_role("button", name="Back to Hub").wait_for()
                again = await _only_session(context, origin)
                assert again["id"] == first["id"]

                await page.get_by_role("button", name="Back to Hub").click()
                await page.wait_for_url(f"{origin}/hub")
                await page.get_by_role("heading", name="Hub").wait_for()
                assert await _sessions(context, origin) == []
                assert errors == []
            finally:
                await context.close()
