"""`/admin/…` on a real Redis: bearer auth and scopes (RFC 6750), pagination, replays."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr

from tests.conftest import random_event_id
from webhooks import create_app
from worker.domain.notifications import Rejection
from worker.domain.operations import Action, Operation, State
from worker.settings import Settings
from worker.store import Store, keys
from worker.store.claims import Doubt
from worker.tasks.runtime import retention

OPS_TOKEN = "ops-secret-0123456789abcdef"
VIEWER_TOKEN = "viewer-secret-0123456789ab"
OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}


def with_admin_tokens(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "admin_tokens": (
                SecretStr(f"ops-bot:write:{OPS_TOKEN}"),
                SecretStr(f"grafana:read:{VIEWER_TOKEN}"),
            )
        }
    )


@pytest.fixture
def admin_app(settings: Settings, idle_redis: redis.Redis) -> Flask:
    return create_app(with_admin_tokens(settings))


@pytest.fixture
def admin(admin_app: Flask) -> FlaskClient:
    return admin_app.test_client()


@pytest.fixture
def store(settings: Settings, idle_redis: redis.Redis) -> Store:
    return Store(idle_redis, retention(settings))


def dead_letters(
    store: Store, count: int, action: Action = Action.CANCEL, *, in_doubt: bool = False
) -> list[Operation]:
    """`count` operations that failed for good, recorded as a worker records them: answered
    (no meeting linked), or, `in_doubt`, given up on after a call that went unanswered."""
    operations = [
        Operation(action, random_event_id(), random_event_id("04l")) for _ in range(count)
    ]
    store.records.mark_queued(operations)
    for operation in operations:
        claim = store.claims.claim(operation, "worker-1", 60)
        if in_doubt:
            assert store.claims.mark_sending(operation, claim, 60)
            assert store.claims.settle(
                operation, claim, State.FAILED, doubt=Doubt.CALL, error="gave up: ReadTimeout"
            )
        else:
            assert store.claims.settle(operation, claim, State.FAILED, error="No meeting linked")
    return operations


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="crmhook-admin"'),
        ({"Authorization": "Bearer not-a-known-token-at-all"}, 'error="invalid_token"'),
        ({"Authorization": f"Basic {OPS_TOKEN}"}, 'Bearer realm="crmhook-admin"'),
    ],
)
def test_admin_needs_a_known_bearer_token(
    admin: FlaskClient, headers: dict[str, str], challenge: str
) -> None:
    response = admin.get("/admin/failed", headers=headers)
    assert response.status_code == 401
    assert challenge in response.headers["WWW-Authenticate"]
    assert "token" in response.get_json()["error"]


def test_webhook_tokens_do_not_open_the_admin_api(admin: FlaskClient) -> None:
    from tests.conftest import TOKEN

    response = admin.get("/admin/failed", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 401


def test_a_read_only_token_may_list_but_not_replay(admin: FlaskClient, store: Store) -> None:
    [operation] = dead_letters(store, 1)
    assert admin.get("/admin/failed", headers=VIEWER).status_code == 200
    refused = admin.post(
        "/admin/replay", json={"targets": [keys.operation(operation)]}, headers=VIEWER
    )
    assert refused.status_code == 403
    assert 'error="insufficient_scope", scope="write"' in refused.headers["WWW-Authenticate"]
    assert "grafana" in refused.get_json()["error"]
    assert store.records.read(keys.operation(operation))["state"] == "failed"  # type: ignore[index]


def test_no_admin_tokens_means_no_admin_api(client: FlaskClient) -> None:
    assert client.get("/admin/failed", headers=OPS).status_code == 401


def test_failed_is_paginated_newest_first(admin: FlaskClient, store: Store) -> None:
    operations = dead_letters(store, 7)
    first = admin.get("/admin/failed?limit=3", headers=OPS).get_json()
    assert (first["total"], first["offset"], first["limit"], first["next_offset"]) == (7, 0, 3, 3)
    listed: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = admin.get(f"/admin/failed?limit=3&offset={offset}", headers=OPS).get_json()
        listed += [item["key"] for item in page["items"]]
        offset = page["next_offset"]
    assert listed == [keys.operation(operation) for operation in reversed(operations)]
    assert all(item["state"] == "failed" for item in first["items"])


def test_failed_filters_by_action_and_time(admin: FlaskClient, store: Store) -> None:
    dead_letters(store, 2, Action.CANCEL)
    [noshow] = dead_letters(store, 1, Action.NOSHOW)
    page = admin.get("/admin/failed?action=noshow&since=1h", headers=OPS).get_json()
    assert [item["key"] for item in page["items"]] == [keys.operation(noshow)]
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    assert admin.get(f"/admin/failed?since={future}", headers=OPS).get_json()["total"] == 0


def test_failed_pages_leave_no_gap_where_records_expired(
    admin: FlaskClient, store: Store, idle_redis: redis.Redis
) -> None:
    operations = dead_letters(store, 6, Action.NOSHOW)
    idle_redis.delete(keys.operation(operations[4]), keys.operation(operations[3]))  # ran out
    first = admin.get("/admin/failed?action=noshow&limit=2", headers=VIEWER).get_json()
    second = admin.get("/admin/failed?action=noshow&limit=2&offset=2", headers=VIEWER).get_json()
    assert [item["key"] for item in first["items"] + second["items"]] == [
        keys.operation(operations[i]) for i in (5, 2, 1, 0)
    ]
    assert (first["total"], second["total"], second["next_offset"]) == (4, 4, None)


def test_quarantine_is_paginated_newest_first_with_a_total(
    admin: FlaskClient, store: Store
) -> None:
    now = time.time()
    for age in (3, 2, 1):
        rejected = [Rejection(random_event_id("04l"), "bad", "not a Salesforce ID") for _ in "ab"]
        store.quarantine.add(Action.CANCEL, "00D5g000004XyZqEAK", rejected, at=now - age)
    first = admin.get("/admin/quarantine?limit=4", headers=VIEWER).get_json()
    rest = admin.get("/admin/quarantine?limit=4&offset=4", headers=VIEWER).get_json()
    assert (first["total"], first["next_offset"], rest["next_offset"]) == (6, 4, None)
    received = [item["received_at"] for item in first["items"] + rest["items"]]
    assert received == sorted(received, reverse=True)
    assert len({item["notification_id"] for item in first["items"] + rest["items"]}) == 6
    assert all("entry" not in item for item in first["items"])


def test_replaying_the_failed_through_the_api_covers_more_than_one_page(
    admin: FlaskClient, store: Store, idle_redis: redis.Redis
) -> None:
    dead_letters(store, 130)
    response = admin.post("/admin/replay/failed", json={"action": "cancel"}, headers=OPS)
    assert response.get_json()["summary"] == {"queued": 130}
    assert idle_redis.llen("crmhook") == 130  # one perform task each
    assert admin.get("/admin/failed", headers=VIEWER).get_json()["total"] == 0


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=501",
        "offset=-1",
        "limit=ten",
        "limit=²",  # a digit to str.isdigit, not to int
        "offset=٣",
        "action=reschedule",
        "since=yesterday",
    ],
)
def test_bad_listing_parameters_are_400(admin: FlaskClient, query: str) -> None:
    response = admin.get(f"/admin/failed?{query}", headers=OPS)
    assert response.status_code == 400
    assert response.get_json()["error"]


def test_replay_through_the_api_is_queued_and_audited_under_the_token_name(
    admin: FlaskClient, store: Store, idle_redis: redis.Redis
) -> None:
    [operation] = dead_letters(store, 1, in_doubt=True)
    dry = admin.post(
        "/admin/replay", json={"targets": [keys.operation(operation)], "dry_run": True}, headers=OPS
    )
    assert dry.get_json()["summary"] == {"would_queue": 1}
    assert store.records.read(keys.operation(operation))["state"] == "failed"  # type: ignore[index]

    response = admin.post(
        "/admin/replay", json={"targets": [keys.operation(operation)]}, headers=OPS
    )
    assert response.status_code == 200
    assert response.get_json()["results"][0]["outcome"] == "queued"
    record = store.records.read(keys.operation(operation))
    assert record is not None
    assert record["state"] == "in_doubt"  # a dead cancel: crm-get decides before a new call
    assert record["attempts"] == "0"  # a fresh budget
    assert record["audit"][0]["actor"] == "admin:ops-bot"
    assert idle_redis.llen("crmhook") == 1  # one perform task on the broker queue
    audit = admin.get("/admin/audit", headers=VIEWER).get_json()
    assert audit["items"][0]["target"] == keys.operation(operation)


def test_replay_of_a_succeeded_operation_is_skipped_unless_forced(
    admin: FlaskClient, store: Store
) -> None:
    operation = Operation(Action.CANCEL, random_event_id(), random_event_id("04l"))
    store.records.mark_queued([operation])
    store.claims.settle(
        operation, store.claims.claim(operation, "w", 60), State.SUCCEEDED, result={}
    )
    skipped = admin.post("/admin/replay", json={"targets": [operation.crm_event_id]}, headers=OPS)
    assert skipped.get_json()["results"][0]["outcome"] == "skipped"
    forced = admin.post(
        "/admin/replay", json={"targets": [operation.crm_event_id], "force": True}, headers=OPS
    )
    assert forced.get_json()["results"][0]["outcome"] == "queued"
    record = store.records.read(keys.operation(operation))
    assert record is not None
    assert record["forced"] == "admin:ops-bot"
    assert [entry["what"] for entry in record["audit"]] == ["forced-replay"]


def test_operations_by_event_id_and_404(admin: FlaskClient, store: Store) -> None:
    [operation] = dead_letters(store, 1)
    found = admin.get(f"/admin/operations/{operation.crm_event_id[:15]}", headers=VIEWER)
    assert found.get_json()["operations"][0]["key"] == keys.operation(operation)
    by_key = admin.get(f"/admin/operations/{keys.operation(operation)}", headers=VIEWER)
    assert by_key.status_code == 200
    assert admin.get(f"/admin/operations/{random_event_id()}", headers=VIEWER).status_code == 404
    assert admin.get("/admin/operations/not-an-id", headers=VIEWER).status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"targets": []},
        {"targets": "00U5g00000MnOpQ"},
        {"targets": [1]},
        {"targets": ["x"], "force": "yes"},
        [],
        {"targets": [" "]},
        {"targets": ["x"], "dry_run": 1},
        {"targets": ["crmhook:op:{\ud800}"]},  # half a surrogate pair: Redis cannot store it
        {},
    ],
)
def test_malformed_replay_requests_are_400(admin: FlaskClient, body: Any) -> None:
    response = admin.post("/admin/replay", json=body, headers=OPS)
    assert response.status_code == 400
    assert response.get_json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/admin/replay", b"[" * 100_000, "body nests too deeply"),
        ("/admin/replay", b"not json", "body is not JSON"),
        ("/admin/replay/failed", b'{"action": "reschedule"}', "'action': unknown action"),
        ("/admin/replay/failed", b'{"since": "yesterday"}', "since: 'yesterday' is neither"),
        ("/admin/replay/quarantined", b'{"dry_run": "true"}', "'dry_run': Input should be"),
        ("/admin/enqueue", b'{"crmEventIds": ["00U5g00000MnOpQ"]}', "'action' is required"),
        ("/admin/enqueue", b'{"action": "get", "crmEventIds": []}', "'crmEventIds': List"),
    ],
)
def test_malformed_bodies_are_400_naming_the_field(
    admin: FlaskClient, path: str, body: bytes, message: str
) -> None:
    response = admin.post(path, data=body, headers=OPS, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(message)


def test_an_empty_body_takes_the_defaults(admin: FlaskClient, store: Store) -> None:
    dead_letters(store, 2)
    response = admin.post("/admin/replay/failed", headers=OPS)
    assert response.get_json()["summary"] == {"queued": 2}


def test_operation_times_are_epoch_seconds(admin: FlaskClient, store: Store) -> None:
    before = time.time()
    [operation] = dead_letters(store, 1)
    path = f"/admin/operations/{keys.operation(operation)}"
    [record] = admin.get(path, headers=VIEWER).get_json()["operations"]
    [dead] = admin.get("/admin/failed", headers=VIEWER).get_json()["items"]
    for moment in ("created_at", "updated_at"):
        assert before - 1 < record[moment] < time.time() + 1, moment
    assert before - 1 < dead["failed_at"] < time.time() + 1
    assert isinstance(record["attempts"], str)


def test_enqueue_through_the_api_validates_like_the_edge(admin: FlaskClient) -> None:
    event = random_event_id()
    response = admin.post(
        "/admin/enqueue",
        json={"action": "cancel", "crmEventIds": [event[:15], "003000000000001"]},
        headers=OPS,
    )
    results = response.get_json()["results"]
    assert [r["outcome"] for r in results] == ["queued", "rejected"]
    assert results[0]["target"] == event
    assert "key prefix" in results[1]["detail"]


def test_admin_token_settings_name_the_entry_not_the_secret() -> None:
    from worker.errors import ConfigError
    from worker.settings import load_settings

    with pytest.raises(ConfigError, match="ADMIN_TOKENS: entry 2: the scope") as error:
        load_settings(
            redis_url="redis://127.0.0.1:1/0",
            admin_tokens=f"{OPS_TOKEN},bot:admin:{VIEWER_TOKEN}",
            _env_file=None,
        )
    assert VIEWER_TOKEN not in str(error.value)


@pytest.mark.parametrize("path", ["/admin/operations/a%0Ab", "/admin/nothing-here", "/v2/events"])
def test_unrouted_requests_answer_json_too(admin: FlaskClient, path: str) -> None:
    response = admin.get(path, headers=OPS)
    assert response.status_code == 404
    assert response.is_json
    assert "Not Found" in response.get_json()["error"]
