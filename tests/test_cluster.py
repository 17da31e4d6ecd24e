"""The whole service on a real three-primary Redis Cluster."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect

from .utils import UNIT, make_settings, serve, token

pytestmark = pytest.mark.redis

BASE = "/api/v1/chat"


async def test_sockets_of_many_users_stay_alive_and_end_through_cluster_pubsub(
    redis_cluster_url,
):
    """Sockets of users in different slots outlive their TTL on one refresher, and a
    delete reaches the socket through the cluster's pub/sub."""
    settings = make_settings(
        redis_url=redis_cluster_url,
        session_ttl=15 * UNIT,
        heartbeat_interval=3 * UNIT,
        ping_timeout=5 * UNIT,
    )
    async with serve(settings) as server:
        assert (await server.services.store.status())["store"] == "redis"
        users = [f"user{n}" for n in range(8)]
        clients = {
            user: httpx.AsyncClient(
                base_url=server.http + BASE, headers={"authorization": f"Bearer {token(user)}"}
            )
            for user in users
        }
        try:
            sids = {user: (await c.post("/sessions")).json()["id"] for user, c in clients.items()}
            sockets = [
                await connect(
                    f"{server.ws}{BASE}/sessions/{sids[u]}/ws?token={token(u)}", ping_interval=None
                )
                for u in users
            ]
            for websocket in sockets:
                assert json.loads(await websocket.recv())["type"] == "snapshot"
            await asyncio.sleep(3 * settings.session_ttl)
            for user, client in clients.items():
                assert (await client.get(f"/sessions/{sids[user]}")).status_code == 200
            assert (await clients["user3"].delete(f"/sessions/{sids['user3']}")).status_code == 204
            ended = json.loads(await asyncio.wait_for(sockets[3].recv(), timeout=30 * UNIT))
            assert ended == {"type": "ended", "reason": "deleted"}
            for websocket in sockets:
                await websocket.close()
        finally:
            for client in clients.values():
                await client.aclose()
