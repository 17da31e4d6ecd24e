"""Bounds on what one client may hold: sockets per user, and new anonymous identities
per address in development mode, each mounted as an attack against a real server."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import math
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .utils import JWT_SECRET, UNIT, server_process, token

BASE = "/api/v1/chat"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _try_socket(url: str) -> object:
    """Opens a socket and returns it open, or the refusal's status and body."""
    try:
        ws = await connect(url, open_timeout=100 * UNIT)
    except InvalidStatus as refused:
        return refused.value.response if hasattr(refused, "value") else refused.response
    return ws


@pytest.mark.slow
async def test_a_user_gets_at_most_max_sockets_per_user_however_many_they_open():
    """2,000 handshakes, 100 at once, on one session of one user, against a real server
    process: exactly PRESENCE_MAX_SOCKETS_PER_USER are accepted, every other one is
    refused before accept with 429 ``too_many_sockets`` and Retry-After; /readyz counts
    the sockets; another user is not held back; closing a socket frees its place; and
    the server's memory does not grow with the attempts."""
    env = {"PRESENCE_JWT_SECRET": JWT_SECRET, "PRESENCE_MAX_SOCKETS_PER_USER": "20"}
    with server_process(env) as server:
        assert server.process is not None
        bearer = {"authorization": f"Bearer {token('mallory')}"}
        async with httpx.AsyncClient(base_url=server.http, timeout=100 * UNIT) as client:
            sid = (await client.post(f"{BASE}/sessions", json={}, headers=bearer)).json()["id"]
            url = f"{server.ws}{BASE}/sessions/{sid}/ws?token={token('mallory')}"
            # 2,000 attempts in waves of 100 at once; memory is read once ten waves
            # have warmed the allocator (it keeps its high-water mark), and again after
            # ten more.
            results = []
            for wave in range(20):
                if wave == 10:
                    before = _rss_kib(server.process.pid)
                results += await asyncio.gather(*(_try_socket(url) for _ in range(100)))
            during = _rss_kib(server.process.pid)
            opened = [r for r in results if hasattr(r, "send")]
            refused = [r for r in results if not hasattr(r, "send")]
            assert len(opened) == 20
            assert {r.status_code for r in refused} == {429}
            assert all(r.headers["retry-after"] for r in refused)
            assert {json.loads(r.body)["error"]["code"] for r in refused} == {"too_many_sockets"}
            assert (await client.get("/readyz")).json()["sockets"] == 20
            # Refusals cost nothing that stays: a thousand more of them take less memory
            # than a quarter of as many sockets would (17 KiB each, 17 MiB for 1,000).
            assert during - before < 4 * 1024, (before, during)

            other = (
                await client.post(
                    f"{BASE}/sessions", json={}, headers={"authorization": f"Bearer {token('bob')}"}
                )
            ).json()["id"]
            async with connect(f"{server.ws}{BASE}/sessions/{other}/ws?token={token('bob')}"):
                pass

            await opened.pop().close()
            for _ in range(50):
                if (await client.get("/readyz")).json()["sockets"] == 19:
                    break
                await asyncio.sleep(UNIT)
            again = await _try_socket(url)
            assert hasattr(again, "send")
            opened.append(again)
            extra = await _try_socket(url)
            assert not hasattr(extra, "send") and extra.status_code == 429
            for ws in opened:
                await ws.close()


async def test_anonymous_identities_per_address_are_limited():
    """In development mode, one address gets PRESENCE_ANONYMOUS_PER_MINUTE new
    identities (by creating sessions or loading the page without a cookie), then 429
    ``rate_limited`` with Retry-After and no session made; another address (behind the
    trusted proxy) still gets its own; a browser with its cookie is not limited."""
    env = {"PRESENCE_ANONYMOUS_PER_MINUTE": "5"}
    with server_process(env) as server:
        async with httpx.AsyncClient(base_url=server.http, timeout=50 * UNIT) as client:
            origin = {"origin": server.http}
            minted = []
            for _ in range(4):
                created = await client.post(f"{BASE}/sessions", headers=origin)
                assert created.status_code == 201
                minted.append(created.headers["set-cookie"])
                client.cookies.clear()
            page = await client.get("/chat")
            assert page.status_code == 200 and "set-cookie" in page.headers
            client.cookies.clear()
            assert len(set(minted)) == 4

            for attempt in (
                lambda: client.post(f"{BASE}/sessions", headers=origin),
                lambda: client.get("/chat"),
            ):
                refused = await attempt()
                assert refused.status_code == 429, refused.text
                assert int(refused.headers["retry-after"]) >= 1
                assert refused.json()["error"]["code"] == "rate_limited"
                assert "set-cookie" not in refused.headers
            assert (await client.get("/readyz")).json()["sessions"] == 4

            elsewhere = await client.post(
                f"{BASE}/sessions", headers={**origin, "x-forwarded-for": "10.0.0.7"}
            )
            assert elsewhere.status_code == 201
            client.cookies.clear()

            cookie = minted[0].split(";")[0]
            for _ in range(10):
                kept = await client.post(f"{BASE}/sessions", headers={**origin, "cookie": cookie})
                assert kept.status_code in (201, 429)
                assert kept.json().get("error", {}).get("code") != "rate_limited"


@pytest.mark.slow
async def test_a_flood_of_anonymous_identities_makes_no_more_sessions_than_the_limit():
    """2,000 session creations without a cookie from one address in a few seconds
    against a development-mode server make at most the minute's allowance of sessions
    (60 by default), where they made one each before."""
    with server_process({}) as server:
        # A cookie jar that keeps nothing: every request comes without identity.
        jar = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        async with httpx.AsyncClient(
            base_url=server.http, timeout=50 * UNIT, cookies=jar
        ) as client:
            origin = {"origin": server.http}

            async def mint() -> int:
                return (await client.post(f"{BASE}/sessions", headers=origin)).status_code

            started = time.monotonic()
            codes = []
            for _ in range(20):
                codes += await asyncio.gather(*(mint() for _ in range(100)))
            elapsed = time.monotonic() - started
            made = codes.count(201)
            # The minute's allowance, and what refilled (one a second) while it ran.
            assert 60 <= made <= 60 + math.ceil(elapsed), (made, elapsed)
            assert codes.count(429) == len(codes) - made
            assert (await client.get("/readyz")).json()["sessions"] == made
