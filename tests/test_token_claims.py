"""Which JWT claims make a token an identity: an expiry unless the operator waives it,
and the audience and issuer when they are configured."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .utils import JWT_SECRET, UNIT, make_settings, serve

BASE = "/api/v1/chat"


def _token(**claims: object) -> str:
    now = int(time.time())
    values: dict[str, object] = {"sub": "alice", "iat": now, "exp": now + 3600}
    values.update(claims)
    return jwt.encode({k: v for k, v in values.items() if v is not None}, JWT_SECRET, "HS256")


async def _accepted(server, token: str, valid: str) -> bool:
    """Whether ``token`` is an identity as a bearer header, as a cookie and on the
    socket's query string, which must all agree (``valid``, a token the server takes,
    makes the session for the socket)."""
    async with httpx.AsyncClient(base_url=server.http + BASE, timeout=50 * UNIT) as client:
        bearer = await client.get("/sessions", headers={"authorization": f"Bearer {token}"})
        cookie = await client.get("/sessions", headers={"cookie": f"presence_token={token}"})
        assert bearer.status_code in (200, 401) and cookie.status_code == bearer.status_code
        created = await client.post(
            "/sessions", json={}, headers={"authorization": f"Bearer {valid}"}
        )
        sid = created.json()["id"]
    try:
        async with connect(f"{server.ws}{BASE}/sessions/{sid}/ws?token={token}") as ws:
            await ws.recv()
        socket = True
    except InvalidStatus as refused:
        assert refused.response.status_code in (401, 404)
        socket = refused.response.status_code != 401
    assert socket == (bearer.status_code == 200)
    return bearer.status_code == 200


@pytest.mark.parametrize(
    ("settings", "claims", "accepted"),
    [
        pytest.param({}, {}, True, id="default-with-exp"),
        pytest.param({}, {"exp": None}, False, id="default-without-exp"),
        pytest.param({"jwt_require_exp": False}, {"exp": None}, True, id="exp-waived"),
        pytest.param({"jwt_require_exp": False}, {"exp": 1}, False, id="waived-still-expired"),
        pytest.param({}, {"aud": "chat"}, True, id="no-audience-set-aud-ignored"),
        pytest.param({"jwt_audience": "chat"}, {"aud": "chat"}, True, id="audience-match"),
        pytest.param({"jwt_audience": "chat"}, {"aud": ["x", "chat"]}, True, id="audience-in-list"),
        pytest.param({"jwt_audience": "chat"}, {"aud": "billing"}, False, id="audience-other"),
        pytest.param({"jwt_audience": "chat"}, {}, False, id="audience-missing"),
        pytest.param(
            {"jwt_issuer": "https://id.example"},
            {"iss": "https://id.example"},
            True,
            id="issuer-match",
        ),
        pytest.param(
            {"jwt_issuer": "https://id.example"},
            {"iss": "https://evil.example"},
            False,
            id="issuer-other",
        ),
        pytest.param({"jwt_issuer": "https://id.example"}, {}, False, id="issuer-missing"),
    ],
)
async def test_token_claims_decide_identity(settings, claims, accepted):
    """A token without ``exp`` is refused unless PRESENCE_JWT_REQUIRE_EXP=false; with
    PRESENCE_JWT_AUDIENCE or PRESENCE_JWT_ISSUER set, a token must carry a matching
    claim; without an audience set, a token's ``aud`` does not stand in its way. Bearer,
    cookie and socket agree."""
    async with serve(make_settings(**settings)) as server:
        valid = _token(aud=settings.get("jwt_audience"), iss=settings.get("jwt_issuer"))
        assert await _accepted(server, _token(**claims), valid) is accepted


def test_the_claim_settings_are_read_from_the_environment():
    """The three settings come from their variables; a bad boolean names its variable."""
    from presence.exceptions import ConfigError
    from presence.settings import Settings

    settings = Settings.from_env(
        {
            "PRESENCE_JWT_REQUIRE_EXP": "false",
            "PRESENCE_JWT_AUDIENCE": "chat",
            "PRESENCE_JWT_ISSUER": "https://id.example",
        }
    )
    assert (settings.jwt_require_exp, settings.jwt_audience, settings.jwt_issuer) == (
        False,
        "chat",
        "https://id.example",
    )
    assert Settings.from_env({}).jwt_require_exp is True
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"PRESENCE_JWT_REQUIRE_EXP": "sometimes"})
    assert error.value.variable == "PRESENCE_JWT_REQUIRE_EXP"


async def test_a_sub_no_redis_command_can_carry_is_no_identity():
    """A ``sub`` with an unpaired surrogate (valid JSON) is refused with 401 rather
    than reaching the store and failing there."""
    async with serve(make_settings()) as server:
        assert await _accepted(server, _token(sub="\ud800"), _token()) is False
