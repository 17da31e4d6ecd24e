"""One mapping from exceptions to answers serves every edge: REST, the socket handshake
and in-band socket errors give the same status, code and Retry-After for the same
exception."""

from __future__ import annotations

import inspect
import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from presence import exceptions as exc
from presence.asgi import errors
from presence.stores import MemoryStore, RedisStore

from .utils import UNIT, free_port, make_settings, serve, token

BASE = "/api/v1/chat"
BEARER = {"authorization": f"Bearer {token('alice')}"}


def _classes() -> list[type[exc.PresenceError]]:
    return [
        value
        for value in vars(exc).values()
        if inspect.isclass(value) and issubclass(value, exc.PresenceError)
    ]


@pytest.mark.parametrize("cls", _classes(), ids=lambda cls: cls.__name__)
def test_every_exception_has_its_own_answer(cls):
    """Every exception the service raises on purpose has an entry of its own in the
    table (none falls through to a generic 500), with a code in snake case."""
    if cls is exc.ConfigError:
        pytest.skip("a configuration error stops start-up; no client ever sees one")
    found = errors.TABLE.get(cls)
    assert found is not None, f"{cls.__name__} is not in presence.asgi.errors.TABLE"
    assert found.code.replace("_", "").isalpha() and found.code.islower()
    assert 400 <= found.status < 600
    if cls is not exc.PresenceError:
        assert found.status != 500


def test_a_rate_limit_says_how_long_to_wait():
    """A rate limit's own wait becomes Retry-After, rounded up to whole seconds."""
    answer = errors.response(exc.RateLimited("slow down", retry_after=2.2))
    assert answer.status_code == 429 and answer.headers["retry-after"] == "3"


async def test_a_store_that_cannot_be_reached_is_a_503_on_both_edges():
    """An app given a RedisStore whose Redis is unreachable answers a create with 503
    ``store_unavailable`` and Retry-After, as JSON, not 500; the socket handshake is
    refused with the same status, code and header."""
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", ttl=60.0, timeout=UNIT)
    async with (
        serve(make_settings(), store) as server,
        httpx.AsyncClient(base_url=server.http + BASE, timeout=50 * UNIT) as client,
    ):
        created = await client.post("/sessions", json={}, headers=BEARER)
        assert created.status_code == 503
        assert created.headers["retry-after"] == "1"
        assert created.json() == {
            "error": {"code": "store_unavailable", "message": "session store unavailable"}
        }
        listed = await client.get("/sessions", headers=BEARER)
        assert listed.status_code == 503 and listed.json() == created.json()
        sid = "A" * 22
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{server.ws}{BASE}/sessions/{sid}/ws", additional_headers=BEARER):
                pass
        response = refused.value.response
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert json.loads(response.body) == created.json()


class _FailingTouch(MemoryStore):
    """A memory store whose heartbeats fail once told to, as a store that lost Redis."""

    failing = False

    async def touch(self, user, session_id, **fields):
        if self.failing:
            raise exc.StoreUnavailable("redis unavailable: ConnectionError")
        return await super().touch(user, session_id, **fields)


async def test_an_in_band_store_error_uses_the_same_code_as_rest():
    """A visibility message that the store cannot take is answered in band with the
    same code and message as REST gives for it, and the socket stays open."""
    store = _FailingTouch(ttl=60.0)
    async with (
        serve(make_settings(), store) as server,
        httpx.AsyncClient(base_url=server.http + BASE, timeout=50 * UNIT) as client,
    ):
        sid = (await client.post("/sessions", json={}, headers=BEARER)).json()["id"]
        async with connect(f"{server.ws}{BASE}/sessions/{sid}/ws", additional_headers=BEARER) as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"
            store.failing = True
            await ws.send(json.dumps({"type": "visibility", "state": "hidden"}))
            answer = json.loads(await ws.recv())
            rest = await client.post(f"/sessions/{sid}/heartbeat", headers=BEARER)
            assert rest.status_code == 503
            assert answer == {"type": "error", **rest.json()["error"]}
            store.failing = False
            await ws.send(json.dumps({"type": "visibility", "state": "visible"}))
            assert json.loads(await ws.recv())["type"] == "snapshot"
