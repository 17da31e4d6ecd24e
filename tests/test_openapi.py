"""The OpenAPI document at /openapi.json, and schemathesis run against the app in-process.

Schemathesis generates valid requests (which must be accepted) and invalid ones (which
must be refused with a 4xx), over every operation and then along the document's links
(create, then heartbeat, get, delete the session created). Every response must conform
to the document: status, content type, headers and body schema, and never a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi
from starlette.applications import Starlette
from starlette.routing import Mount

from presence.asgi.app import API_PREFIX, create_app
from presence.asgi.openapi import document
from presence.settings import Settings

from .utils import make_settings, serve, token

# A budget that keeps the whole run to seconds; derandomized so every run is the same.
FUZZ = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    # One app serves every example of a test, as one server serves every client: the
    # sessions that examples create are meant to pile up.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
AUTH = {"Authorization": f"Bearer {token('alice')}"}


# A generous per-user cap, so that creating many sessions keeps exercising create
# rather than answering 429 for the rest of the run.
SETTINGS = make_settings(max_sessions_per_user=100_000, open_rooms=True)

# The document the app serves for these settings (test_document_is_served_as_built
# shows the route serves exactly this); loaded here, the app under test is given per
# call, so one document drives the memory-backed and the Redis-backed app alike.
schema = schemathesis.openapi.from_dict(document(SETTINGS))
# A WebSocket handshake cannot go through an HTTP test client; the socket has its own
# tests (test_websocket.py, test_attacks.py).
schema = schema.exclude(operation_id="openSocket")
schema.config.update(base_url=f"http://{asgi.HOST}")
# Hypothesis would otherwise draw inputs from the literals in the code under test; the
# stateful run's examples share one app's state, and a new literal anywhere in presence/
# could make a replayed example differ (FlakyStrategyDefinition).
schema.config.analysis.constants.enabled = False


@schema.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    # JSON Schema cannot bound a value's encoded size, so the data limit is in the
    # document as prose and x-max-encoded-bytes; a generated "valid" body over it is
    # not valid, and is left out rather than counted as a wrongly refused one.
    # The same holds for a member's meta.
    body = case.body
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return True
    if not isinstance(body, dict):
        return True
    for field, limit in (("data", SETTINGS.max_data_bytes), ("meta", SETTINGS.max_meta_bytes)):
        if field in body:
            size = len(json.dumps(body[field], separators=(",", ":")).encode())
            if size > limit:
                return False
    return True


@pytest.fixture(params=["memory", "redis"])
def app(request: pytest.FixtureRequest) -> Iterator[Starlette]:
    """The app in JWT mode over the memory store or a real redis-server; schemathesis
    runs its lifespan in its own thread, which is ended on teardown."""
    settings = SETTINGS
    if request.param == "redis":
        settings = SETTINGS.replace(redis_url=request.getfixturevalue("redis_url"))
    try:
        yield create_app(settings)
    finally:
        asgi.shutdown_lifespans()


@schema.parametrize()
@FUZZ
def test_every_operation_conforms_and_refuses_invalid_input(
    case: schemathesis.Case, app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For generated valid and invalid requests to every operation: no 5xx, invalid
    input is refused with a 4xx, valid input is accepted, and every response conforms
    to the document."""
    # The operation's app is where the request goes, and the schema's is where the
    # checks' own probes go (the same request without the token, with a forged one).
    monkeypatch.setattr(case.operation, "app", app)
    monkeypatch.setattr(case.operation.schema, "app", app)
    case.call_and_validate(headers=AUTH)


def test_workflows_along_the_links_conform(app: Starlette, monkeypatch: pytest.MonkeyPatch) -> None:
    """Following the document's links (create, then heartbeat, get or delete that
    session) conforms too, and a deleted session is gone for every operation."""
    monkeypatch.setattr(schema, "app", app)
    cleanup = schema[f"{API_PREFIX}/sessions/cleanup"]["POST"]

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each run starts from the same state: what a step draws depends on what
            # earlier responses gave it (a linked session, or a new id), and
            # hypothesis replays and extends earlier runs, expecting the same draws
            # (FlakyStrategyDefinition otherwise). Sessions left by earlier runs
            # would make a replayed run take another path.
            response = cleanup.Case(body={"type": "all"}, media_type="application/json").call(
                headers=AUTH
            )
            assert response.status_code == 200, response.text

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, object]:
            return {"headers": AUTH}

    Workflow.run(settings=settings(FUZZ, max_examples=15, stateful_step_count=6))


async def test_document_is_served_as_built_valid_and_names_every_route():
    """/openapi.json serves the document built from the settings, it validates against
    the OpenAPI 3.1 schema, and it lists every HTTP and WebSocket route the app has (the
    HTML pages and static files aside)."""
    async with serve(SETTINGS) as server:
        async with httpx.AsyncClient(base_url=server.http) as client:
            response = await client.get("/openapi.json")
        routes = set(_paths(server.app.routes))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    served = response.json()
    assert served == document(SETTINGS)
    schemathesis.openapi.from_dict(served).validate()
    # The admin page's API is documented only while it is on (PRESENCE_ADMIN_TOKEN).
    admin = {p for p in routes if p.startswith("/api/v1/admin/")}
    assert set(served["paths"]) == routes - {"/", "/chat", "/hub", "/admin"} - admin


async def test_document_states_the_limits_the_server_enforces():
    """Body size, ids per cleanup, data size, enums and security follow the settings,
    and each documented limit is the one a real request runs into."""
    settings = make_settings(max_cleanup_ids=7, max_data_bytes=300, max_body_bytes=2048)
    async with serve(settings) as server:
        async with httpx.AsyncClient(base_url=server.http, headers=AUTH) as client:
            served = (await client.get("/openapi.json")).json()
            schemas = served["components"]["schemas"]
            specific = schemas["Cleanup"]["oneOf"][0]["properties"]["session_ids"]
            assert specific["maxItems"] == 7
            data = schemas["CreateSession"]["properties"]["data"]
            assert data["x-max-encoded-bytes"] == 300
            assert "2048 bytes" in served["info"]["description"]
            assert schemas["Heartbeat"]["properties"]["state"]["enum"] == ["active", "away"]
            assert schemas["Session"]["properties"]["state"]["enum"] == [
                "active",
                "away",
                "disconnected",
            ]
            kinds = [
                variant["properties"]["type"]["const"] for variant in schemas["Cleanup"]["oneOf"]
            ]
            assert sorted(kinds) == ["all", "inactive", "specific"]

            base = "/api/v1/chat/sessions"
            ids = ["A" * 22] * 8
            cleanup = await client.post(
                f"{base}/cleanup", json={"type": "specific", "session_ids": ids}
            )
            assert cleanup.status_code == 422
            assert (
                await client.post(
                    f"{base}/cleanup", json={"type": "specific", "session_ids": ids[:7]}
                )
            ).status_code == 200
            too_much = await client.post(base, json={"data": "x" * 299})
            assert too_much.status_code == 422
            assert (await client.post(base, json={"data": "x" * 298})).status_code == 201
            big = await client.post(
                base, content=b" " * 2049, headers={"content-type": "text/plain"}
            )
            assert big.status_code == 413
    create = served["paths"][base]["post"]
    assert {} not in create["security"]  # JWT mode: creating needs a credential


def test_development_mode_documents_that_create_needs_no_credential():
    """Without a JWT secret the server mints identities, and the document says so."""
    create = document(Settings())["paths"]["/api/v1/chat/sessions"]["post"]
    assert {} in create["security"]
    jwt_create = document(make_settings())["paths"]["/api/v1/chat/sessions"]["post"]
    assert {} not in jwt_create["security"]


def _paths(routes, prefix: str = ""):
    for route in routes:
        if isinstance(route, Mount):
            yield from _paths(route.routes, prefix + route.path)
        else:
            yield prefix + route.path
