"""The ASGI edge: the Starlette app, its REST handlers and socket endpoint, the wire
protocol, and the one table mapping errors to answers. It only parses, calls the
services and maps errors; the rules live beneath it."""

from __future__ import annotations

from .app import API_PREFIX, create_app

__all__ = ["API_PREFIX", "create_app"]
