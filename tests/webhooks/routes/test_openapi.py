"""Schemathesis against `/openapi.json`: generated requests to every described operation,
through the real app on a real Redis; never a 5xx, and every answer as the document says."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis import checks
from schemathesis.generation.case import Case

from tests.conftest import TOKEN
from webhooks import create_app
from webhooks.schemas import EnqueueRequest, ReplayRequest
from worker.domain.notifications import Disposition
from worker.domain.operations import Action, State
from worker.operator import Outcome
from worker.settings import Settings

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture
def api(settings: Settings, idle_redis: redis.Redis) -> Flask:
    # The webhook token opens the admin API too here, so one header reaches every route.
    return create_app(
        settings.model_copy(update={"admin_tokens": (SecretStr(f"fuzzer:write:{TOKEN}"),)})
    )


@pytest.fixture
def api_schema(api: Flask) -> Any:
    return schemathesis.openapi.from_wsgi("/openapi.json", api)


OPERATIONS = [
    "POST /v1/events",
    "GET /admin/operations/{keyOrEventId}",
    "GET /admin/failed",
    "GET /admin/quarantine",
    "GET /admin/audit",
    "POST /admin/replay",
    "POST /admin/replay/failed",
    "POST /admin/replay/quarantined",
    "POST /admin/enqueue",
    "POST /admin/pause",
    "POST /admin/resume",
    "GET /admin/held",
    "POST /admin/held/release",
    "POST /admin/held/drop",
]


def test_every_operation_of_the_document_is_tested(api_schema: Any) -> None:
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


# Schemathesis's own pytest integration (`from_fixture`) does not run on pytest 9 yet, so
# each operation's Hypothesis strategy is driven here directly.
@pytest.mark.parametrize("label", OPERATIONS)
def test_every_answer_matches_the_document(api_schema: Any, label: str) -> None:
    operation = api_schema.find_operation_by_label(label)

    @given(case=operation.as_strategy())
    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def conforms(case: Case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)

    conforms()


def test_the_document_is_served(api: Flask) -> None:
    document = api.test_client().get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/events", "/admin/failed", "/admin/replay"} <= set(document["paths"])


def test_request_schemas_are_the_models_and_enums_their_enums(api: Flask) -> None:
    document = api.test_client().get("/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    for model in (ReplayRequest, EnqueueRequest):
        generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
        generated.pop("$defs", None)
        assert schemas[model.__name__] == generated
    assert schemas["Action"]["enum"] == [action.value for action in Action]
    assert schemas["Operation"]["properties"]["state"]["enum"] == [s.value for s in State]
    result = schemas["Results"]["properties"]["results"]["items"]
    assert result["properties"]["outcome"]["enum"] == [o.value for o in Outcome]
    per_event = schemas["EventsResponse"]["properties"]["results"]["items"]
    assert per_event["properties"]["outcome"]["enum"] == [d.value for d in Disposition]


def test_operation_times_are_documented_as_epoch_seconds(api: Flask) -> None:
    document = api.test_client().get("/openapi.json").get_json()
    properties = document["components"]["schemas"]["Operation"]["properties"]
    for moment in ("created_at", "updated_at", "succeeded_at", "replayed_at", "lease_until"):
        assert properties[moment] == {"type": "number", "description": "epoch seconds"}
    assert properties["attempts"] == properties["token"] == {"type": "string"}


def test_the_idempotency_key_and_its_refusals_are_documented(api: Flask) -> None:
    document = api.test_client().get("/openapi.json").get_json()
    events = document["paths"]["/v1/events"]["post"]
    [header] = [p for p in events["parameters"] if p["name"] == "Idempotency-Key"]
    assert header["in"] == "header"
    assert header["schema"]["maxLength"] == 200
    for promise in ("Scoped to the caller's token", "422", "409", "GET_KEY_TTL_SECONDS"):
        assert promise in header["description"]
    assert {"202", "400", "401", "409", "413", "422", "503"} <= set(events["responses"])
    assert "still being handled" in events["responses"]["409"]["description"]
    assert "another body" in events["responses"]["422"]["description"]
