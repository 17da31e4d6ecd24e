"""An installed service serves its browser client: the wheel carries the client modules,
the demo's assets and the pages, and a service run from the wheel alone (no checkout
beside it) serves them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from .utils import REPO, UNIT, ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from the tracked files of this checkout, in a copy of them (so the
    build leaves nothing in the checkout)."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, tracked):
        path = Path(os.fsdecode(name))
        if (REPO / path).is_file():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, source / path)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=1200 * UNIT,
    )
    (built,) = out.glob("presence-*.whl")
    return built


def test_the_wheel_carries_the_browser_package_and_pages(wheel):
    """The wheel holds every client module, every demo asset and every page, and
    nothing else of web/ (tests, package metadata)."""
    names = set(zipfile.ZipFile(wheel).namelist())
    served = {
        f"presence/static/{path.relative_to(REPO / 'web').as_posix()}"
        for folder in ("src", "demo")
        for path in (REPO / "web" / folder).rglob("*")
        if path.is_file()
    } | {
        f"presence/static/{page}"
        for page in ("chat.html", "hub.html", "admin.html", "admin-login.html")
    }
    assert served <= names
    assert not [n for n in names if n.startswith("presence/static/") and n not in served]


def test_a_service_installed_from_the_wheel_serves_the_client(wheel, tmp_path):
    """``presence serve`` from the wheel's files alone, run away from the checkout,
    answers /chat, /hub and the client modules with 200, and /admin with its sign-in
    form (401) or, given the admin token, the page."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    admin_token = "wheel-admin-token-0123456789"
    server = ServerProcess({"PYTHONPATH": str(site), "PRESENCE_ADMIN_TOKEN": admin_token})
    server.cwd = tmp_path  # not the checkout: nothing of web/ within reach
    server.start()
    try:
        with httpx.Client(base_url=server.http, timeout=50 * UNIT) as client:
            for path in ("/chat", "/hub", "/static/src/index.js", "/static/demo/chat.js"):
                response = client.get(path)
                assert response.status_code == 200, (path, response.text)
            response = client.get("/admin")
            assert response.status_code == 401 and 'id="login-form"' in response.text
            response = client.get("/admin", headers={"authorization": f"Bearer {admin_token}"})
            assert response.status_code == 200 and 'id="rooms"' in response.text
            imported = subprocess.run(
                [sys.executable, "-c", "import presence; print(presence.__file__)"],
                env={**os.environ, "PYTHONPATH": str(site)},
                cwd=tmp_path,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert imported.startswith(str(site))
    finally:
        server.stop()
