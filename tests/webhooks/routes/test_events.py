"""`POST /v1/events`, the JSON route, against a real Redis broker."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import TOKEN, make_settings, random_event_id
from tests.webhooks.routes.test_outbound import published
from webhooks import create_app
from worker.dev.redis_server import RedisServer
from worker.store.idempotency import source_id


def send(client: FlaskClient, body: Any, token: str | None = TOKEN, **headers: str) -> Any:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    if isinstance(body, bytes):
        return client.post(
            "/v1/events", data=body, headers={**auth, **headers}, content_type="application/json"
        )
    return client.post("/v1/events", json=body, headers={**auth, **headers})


def test_one_event_is_queued(client: FlaskClient, idle_redis: redis.Redis) -> None:
    event = random_event_id()
    response = send(client, {"action": "cancel", "crmEventId": event[:15]})
    assert response.status_code == 202
    assert response.json["results"] == [
        {"index": 0, "action": "cancel", "crmEventId": event, "outcome": "queued"}
    ]
    [batch] = published(idle_redis)
    assert batch["operations"][0]["crm_event_id"] == event


def test_many_events_get_one_outcome_each(client: FlaskClient, idle_redis: redis.Redis) -> None:
    first, second = random_event_id(), random_event_id()
    response = send(
        client,
        {
            "events": [
                {"action": "cancel", "crmEventId": first},
                {"action": "noshow", "crmEventId": second},
                {"action": "cancel", "crmEventId": first},
                {"action": "cancel", "crmEventId": random_event_id("003")},
                {"action": "reschedule", "crmEventId": first},
                {"action": "get"},
                "not an object",
            ]
        },
    )
    assert response.status_code == 202
    outcomes = [(r["outcome"], r.get("reason", "")) for r in response.json["results"]]
    assert [o for o, _ in outcomes] == [
        "queued",
        "queued",
        "duplicate",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
    ]
    assert "key prefix '003'" in outcomes[3][1]
    assert "unknown action 'reschedule'" in outcomes[4][1]
    assert "'crmEventId' is required" in outcomes[5][1]
    assert (response.json["queued"], response.json["duplicate"], response.json["rejected"]) == (
        2,
        1,
        4,
    )
    [batch] = published(idle_redis)
    assert [op["action"] for op in batch["operations"]] == ["cancel", "noshow"]


def test_a_reused_idempotency_key_answers_the_first_answer_and_publishes_nothing_more(
    client: FlaskClient, idle_redis: redis.Redis
) -> None:
    body = {"action": "get", "crmEventId": random_event_id()}
    first = send(client, body, **{"Idempotency-Key": "flow-run-42"})
    again = send(client, body, **{"Idempotency-Key": "flow-run-42"})
    assert first.json["results"][0]["outcome"] == "queued"
    assert (again.status_code, again.data) == (first.status_code, first.data)
    [batch] = published(idle_redis)
    assert batch["operations"][0]["source_id"] == source_id(TOKEN, "flow-run-42")


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("wrong-token-0123456789", 401)])
def test_bearer_token_is_required(client: FlaskClient, token: str | None, status: int) -> None:
    response = send(client, {"action": "get", "crmEventId": random_event_id()}, token=token)
    assert response.status_code == status
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "token" in response.json["error"]


@pytest.mark.parametrize(
    ("token", "challenge"),
    [
        (None, 'Bearer realm="crmhook"'),
        ("wrong-token-0123456789", 'Bearer realm="crmhook", error="invalid_token"'),
    ],
)
def test_the_challenge_says_whether_a_token_was_refused(
    client: FlaskClient, token: str | None, challenge: str
) -> None:
    response = send(client, {"action": "get", "crmEventId": random_event_id()}, token=token)
    assert response.headers["WWW-Authenticate"] == challenge


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<xml/>", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"events": []}', "non-empty list"),
        (b'{"events": {"action": "get"}}', "non-empty list"),
        (b"[" * 100_000, "nests too deeply"),
        (b'{"events": null}', "non-empty list"),
        (b"\xff\xfe{}", "not JSON"),
        (b'{"action": "get", "crmEventId": ' + b"9" * 5000 + b"}", "not JSON"),
    ],
)
def test_malformed_bodies_are_400(client: FlaskClient, body: bytes, reason: str) -> None:
    response = send(client, body)
    assert response.status_code == 400
    assert reason in response.json["error"]


def test_more_than_100_events_is_400(client: FlaskClient) -> None:
    events = [{"action": "get", "crmEventId": random_event_id()} for _ in range(101)]
    response = send(client, {"events": events})
    assert response.status_code == 400
    assert "at most 100 events" in response.json["error"]


def test_an_item_that_is_no_event_is_rejected_alone(
    client: FlaskClient, idle_redis: redis.Redis
) -> None:
    event = random_event_id()
    response = send(
        client,
        {
            "events": [
                None,
                {"action": 1, "crmEventId": event},
                {"action": "get", "crmEventId": "\ud800"},
                {"action": "get", "crmEventId": event, "extra": [[[[{}]]]]},
            ]
        },
    )
    assert response.status_code == 202
    results = response.json["results"]
    assert [r["outcome"] for r in results] == ["rejected", "rejected", "rejected", "queued"]
    assert results[0]["reason"] == "expected a JSON object"
    assert results[1]["reason"].startswith("'action': ")
    assert results[2]["reason"].startswith("'crmEventId': must be Unicode text")
    [batch] = published(idle_redis)
    assert [op["crm_event_id"] for op in batch["operations"]] == [event]


def test_redis_down_is_503_with_retry_after_and_the_retry_is_accepted(
    sandbox_server: Any,
) -> None:
    body = {"action": "cancel", "crmEventId": random_event_id()}
    with RedisServer() as own:
        client = create_app(make_settings(own.url, sandbox_server.url)).test_client()
        own.stop()
        response = send(client, body, **{"Idempotency-Key": "flow-run-7"})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert "retry later" in response.json["error"]

        own.start()
        retried = send(client, body, **{"Idempotency-Key": "flow-run-7"})
        assert retried.json["results"][0]["outcome"] == "queued"
