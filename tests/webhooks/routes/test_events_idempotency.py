"""`Idempotency-Key` on `POST /v1/events`, as the IETF httpapi draft has it: the real app on a
real Redis, and the real fan-out against the real store for what a retry queues."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import OTHER_TOKEN, TOKEN, random_event_id
from tests.webhooks.routes.test_events import send
from tests.webhooks.routes.test_outbound import published
from webhooks import create_app
from worker.dev.redis_server import RedisServer
from worker.ingest import Batch, FanOut, fan_out
from worker.settings import Settings
from worker.store import Store, keys
from worker.store.connection import redis_client, text
from worker.store.idempotency import (
    IN_FLIGHT_SECONDS,
    Claim,
    Idempotency,
    fingerprint,
    source_id,
)
from worker.tasks.runtime import retention

KEY = "flow-run-8841"
WITH_KEY = {"Idempotency-Key": KEY}


class Crash(BaseException):
    """The web process dies here (no handler catches a BaseException)."""


@pytest.fixture
def store(settings: Settings, idle_redis: redis.Redis) -> Iterator[Store]:
    client = redis_client(settings.redis_url)
    yield Store(client, retention(settings))
    client.close()


def fanned_out(store: Store, batches: list[dict[str, Any]]) -> list[FanOut]:
    """Each published batch through the worker's fan-out, as its own ingest, in order."""
    return [
        fan_out(
            store,
            Batch.from_message(batch),
            ingest_id=f"ingest-{index}",
            publish=lambda operations: None,
        )
        for index, batch in enumerate(batches)
    ]


def get_event() -> dict[str, str]:
    return {"action": "get", "crmEventId": random_event_id()}


def test_the_same_key_and_body_answer_the_same_bytes_with_one_publish_and_one_operation(
    client: FlaskClient, idle_redis: redis.Redis, store: Store
) -> None:
    body = get_event()
    first = send(client, body, **WITH_KEY)
    again = send(client, body, **WITH_KEY)
    assert first.status_code == 202
    assert first.json["results"][0]["outcome"] == "queued"
    assert (again.status_code, again.data, again.content_type) == (
        first.status_code,
        first.data,
        first.content_type,
    )
    batches = published(idle_redis)
    assert len(batches) == 1
    assert [len(result.queued) for result in fanned_out(store, batches)] == [1]


def test_the_same_body_written_otherwise_is_the_same_request(
    client: FlaskClient, idle_redis: redis.Redis
) -> None:
    event = random_event_id()
    first = send(client, f'{{"action":"get","crmEventId":"{event}"}}'.encode(), **WITH_KEY)
    again = send(
        client, f'{{ "crmEventId" : "{event}",\n  "action" : "g\\u0065t" }}'.encode(), **WITH_KEY
    )
    assert (again.status_code, again.data) == (first.status_code, first.data)
    assert len(published(idle_redis)) == 1


def test_the_same_key_with_another_body_is_422_and_queues_nothing(
    client: FlaskClient, idle_redis: redis.Redis
) -> None:
    first = send(client, get_event(), **WITH_KEY)
    other = send(client, get_event(), **WITH_KEY)
    assert first.status_code == 202
    assert other.status_code == 422
    assert "another body" in other.json["error"]
    assert len(published(idle_redis)) == 1
    assert send(client, get_event(), **{"Idempotency-Key": "flow-run-8842"}).status_code == 202


def test_the_same_key_while_the_first_request_is_handled_is_409_and_queues_nothing(
    client: FlaskClient, idle_redis: redis.Redis, settings: Settings
) -> None:
    body = get_event()
    records = Idempotency(idle_redis, settings.get_key_ttl_seconds)
    # The first request, between its claim and its publish:
    first = records.begin(source_id(TOKEN, KEY), fingerprint(body))
    assert isinstance(first, Claim)

    concurrent = send(client, body, **WITH_KEY)
    assert concurrent.status_code == 409
    assert "still being handled" in concurrent.json["error"]
    assert published(idle_redis) == []

    records.release(first)  # it failed to publish
    assert send(client, body, **WITH_KEY).json["results"][0]["outcome"] == "queued"


def test_a_refused_publish_records_nothing_and_the_retry_goes_through(
    settings: Settings, idle_redis: redis.Redis
) -> None:
    body = get_event()
    with RedisServer() as broker:
        app = create_app(settings.model_copy(update={"celery_broker_url": broker.url}))
        client = app.test_client()
        broker.stop()
        refused = send(client, body, **WITH_KEY)
        assert refused.status_code == 503
        assert idle_redis.get(keys.idempotency(source_id(TOKEN, KEY))) is None

        broker.start()
        retried = send(client, body, **WITH_KEY)
        assert retried.status_code == 202
        assert retried.json["results"][0]["outcome"] == "queued"
        with redis.Redis.from_url(broker.url, decode_responses=True) as queue:
            assert len(published(queue)) == 1


def test_two_callers_with_the_same_key_are_both_queued(
    client: FlaskClient, idle_redis: redis.Redis, store: Store
) -> None:
    body = get_event()
    mine = send(client, body, token=TOKEN, **WITH_KEY)
    theirs = send(client, body, token=OTHER_TOKEN, **WITH_KEY)
    assert [r.json["results"][0]["outcome"] for r in (mine, theirs)] == ["queued", "queued"]
    batches = published(idle_redis)
    sources = {batch["operations"][0]["source_id"] for batch in batches}
    assert sources == {source_id(TOKEN, KEY), source_id(OTHER_TOKEN, KEY)}
    # Neither caller's notification marker dedupes the other's.
    assert [len(result.queued) for result in fanned_out(store, batches)] == [1, 1]


@pytest.mark.parametrize("action", ["get", "cancel"])
def test_a_crash_between_publish_and_record_is_retried_and_queued_once(
    client: FlaskClient,
    idle_redis: redis.Redis,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    body = {"action": action, "crmEventId": random_event_id()}

    def die(*_args: Any) -> bool:
        raise Crash

    with monkeypatch.context() as patched:
        patched.setattr(Idempotency, "settle", die)
        with pytest.raises(Crash):
            send(client, body, **WITH_KEY)
    claim = keys.idempotency(source_id(TOKEN, KEY))
    assert len(published(idle_redis)) == 1  # the events reached the broker
    assert 0 < idle_redis.ttl(claim) <= IN_FLIGHT_SECONDS  # only the claim was left
    assert send(client, body, **WITH_KEY).status_code == 409

    idle_redis.delete(claim)  # what its expiry does
    retried = send(client, body, **WITH_KEY)
    assert retried.status_code == 202
    assert retried.json["results"][0]["outcome"] == "queued"
    batches = published(idle_redis)
    assert len(batches) == 2
    assert batches[0]["operations"] == batches[1]["operations"]
    assert [len(result.queued) for result in fanned_out(store, batches)] == [1, 0]
    assert send(client, body, **WITH_KEY).data == retried.data


def everything_stored(client: redis.Redis) -> Iterator[str]:
    """Every key of the database and every value under it, as text."""
    for key in map(text, client.scan_iter()):
        yield key
        kind = text(client.type(key))
        if kind == "string":
            yield text(client.get(key) or "")
        elif kind == "list":
            yield from map(text, client.lrange(key, 0, -1))
        elif kind == "hash":
            yield json.dumps({text(k): text(v) for k, v in client.hgetall(key).items()})
        elif kind == "set":
            yield from map(text, client.smembers(key))
        elif kind == "zset":
            yield from map(text, client.zrange(key, 0, -1))
        else:
            pytest.fail(f"no reader for a {kind} at {key}")


def test_no_token_is_stored_in_keys_records_or_messages(
    client: FlaskClient, idle_redis: redis.Redis, store: Store
) -> None:
    for token in (TOKEN, OTHER_TOKEN):
        send(client, get_event(), token=token, **WITH_KEY)
        send(client, get_event(), token=token)
    Idempotency(idle_redis, 3600).begin(source_id(TOKEN, "in flight"), fingerprint({}))
    fanned_out(store, published(idle_redis))

    stored = list(everything_stored(idle_redis))
    assert any(source_id(OTHER_TOKEN, KEY) in text for text in stored)  # records were read
    assert [text for text in stored if TOKEN in text or OTHER_TOKEN in text] == []
