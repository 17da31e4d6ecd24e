"""Sessions survive a server killed with SIGKILL when Redis holds them."""

from __future__ import annotations

import httpx
import pytest

from .utils import JWT_SECRET, server_process, token

BASE = "/api/v1/chat"


@pytest.mark.slow
def test_sigkilled_server_restarts_with_every_session_and_ttl(own_redis):
    """After SIGKILL and a new start, every session is there with the same expiry."""
    env = {
        "REDIS_URL": own_redis.url,
        "PRESENCE_JWT_SECRET": JWT_SECRET,
        "SESSION_TTL_HOURS": "1",
        "LOG_LEVEL": "warning",
    }
    headers = {"authorization": f"Bearer {token('alice')}"}
    with server_process(env) as server:
        with httpx.Client(base_url=server.http + BASE, headers=headers) as client:
            before = [client.post("/sessions", json={"data": {"n": i}}).json() for i in range(5)]
        server.kill()
        server.start()
        with httpx.Client(base_url=server.http + BASE, headers=headers) as client:
            for session in before:
                after = client.get(f"/sessions/{session['id']}")
                assert after.status_code == 200
                assert after.json()["data"] == session["data"]
                assert after.json()["created_at"] == session["created_at"]
                # The same expiry, give or take the clock reading (ISO strings, ms).
                from datetime import datetime

                was = datetime.fromisoformat(session["expires_at"])
                now = datetime.fromisoformat(after.json()["expires_at"])
                assert abs((now - was).total_seconds()) < 2
