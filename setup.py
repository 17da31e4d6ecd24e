"""The browser package and demo pages go into the wheel, beside the Python package.

``web/`` stays the npm package's home (``@presence/client``). A service installed from
a wheel (``pip install .``, not editable) has no checkout beside it, so the build copies
what it serves from ``web/`` into ``presence/static/``: the client modules (``src``),
the demo's assets (``demo``) and the two pages. An editable install and a checkout
serve ``web/`` itself (see ``presence.app.web_dir``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEB = Path(__file__).resolve().parent / "web"
# What the app serves, and nothing else of web/ (tests, node_modules, package metadata).
SERVED = ("src", "demo", "chat.html", "hub.html", "admin.html", "admin-login.html")


class BuildWithBrowserPackage(build_py):
    """setuptools' build_py, then web/'s served files copied into presence/static."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "presence" / "static"
        for name in SERVED:
            source = WEB / name
            if not source.exists():
                raise FileNotFoundError(f"{source} is missing: the wheel would serve no client")
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildWithBrowserPackage})
