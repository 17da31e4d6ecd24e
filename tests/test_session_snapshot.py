"""Every session object the API sends carries the server's HEARTBEAT_INTERVAL, so that
a client keeping a session alive over REST never beats slower than the TTL allows."""

from __future__ import annotations

import asyncio
import json

import httpx
from websockets.asyncio.client import connect

from .utils import UNIT, make_settings, serve, token

BASE = "/api/v1/chat"


async def test_rest_and_socket_sessions_carry_the_heartbeat_interval():
    """POST, GET, the list, a heartbeat's reply and the socket's snapshot all say it."""
    interval = 7 * UNIT
    async with (
        serve(make_settings(heartbeat_interval=interval, session_ttl=60 * UNIT)) as server,
        httpx.AsyncClient(
            base_url=server.http + BASE, headers={"authorization": f"Bearer {token('alice')}"}
        ) as alice,
    ):
        created = await alice.post("/sessions")
        assert created.status_code == 201
        sid = created.json()["id"]
        answers = [
            created.json(),
            (await alice.get(f"/sessions/{sid}")).json(),
            (await alice.get("/sessions")).json()["sessions"][0],
            (await alice.post(f"/sessions/{sid}/heartbeat", json={"state": "away"})).json(),
        ]
        url = f"{server.ws}{BASE}/sessions/{sid}/ws?token={token('alice')}"
        async with connect(url, ping_interval=None) as websocket:
            answers.append(
                json.loads(await asyncio.wait_for(websocket.recv(), 50 * UNIT))["session"]
            )
        assert [answer["heartbeat_interval"] for answer in answers] == [interval] * 5
        assert answers[3]["state"] == "away"
