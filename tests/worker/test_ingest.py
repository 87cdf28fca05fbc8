"""An acknowledged message is never lost: the edge records each batch in the store ahead of
its fan-out's publish, the fan-out forgets it once its operations are queued, and the
dispatcher publishes again a fan-out whose message vanished. Real Redis, real Celery
messages, the real web app (on a broker database no worker consumes, so that a message can
be made to vanish as kombu's pop-before-unacked window or a Redis restart would lose it)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import TOKEN, make_settings, notification_id, outbound_message, random_event_id
from webhooks import create_app
from worker.dev.redis_server import free_port
from worker.domain.operations import State
from worker.ingest import Batch, fan_out
from worker.settings import Settings
from worker.store import keys
from worker.tasks.app import QUEUE, make_celery
from worker.tasks.dispatcher import Dispatcher
from worker.tasks.publish import FAN_OUT_TASK, PERFORM_TASK, publish
from worker.tasks.runtime import Runtime, build_runtime


@pytest.fixture
def runtime(settings: Settings, idle_redis: redis.Redis) -> Iterator[Runtime]:
    runtime = build_runtime(settings)
    yield runtime
    runtime.redis.close()


def queued(client: redis.Redis) -> list[tuple[str, str, list[Any]]]:
    """(task name, task ID, args) of every message waiting in the broker, oldest first."""
    found = []
    for raw in reversed(client.lrange(QUEUE, 0, -1)):
        envelope = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        found.append((envelope["headers"]["task"], envelope["headers"]["id"], args))
    return found


def post(client: FlaskClient, body: bytes) -> Any:
    return client.post(
        f"/salesforce/outbound/cancel?token={TOKEN}",
        data=body,
        headers={"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'},
    )


def test_an_acknowledged_message_whose_fan_out_vanished_is_published_again_and_queued(
    client: FlaskClient, runtime: Runtime, settings: Settings, idle_redis: redis.Redis
) -> None:
    events = [random_event_id(), random_event_id()]
    assert (
        post(client, outbound_message([(notification_id(), e) for e in events])).status_code == 200
    )
    [(task, ingest_id, [message])] = queued(idle_redis)
    assert task == FAN_OUT_TASK
    assert runtime.store.ingests.count() == 1
    idle_redis.delete(QUEUE)  # the message vanishes after the Ack

    sweeping = replace(runtime, settings=settings.model_copy(update={"requeue_after_seconds": 0}))
    dispatcher = Dispatcher(make_celery(settings), sweeping)
    assert dispatcher.requeue_stale() == 1
    [(task, again_id, [again])] = queued(idle_redis)
    assert (task, again_id, again) == (FAN_OUT_TASK, ingest_id, message)  # the same ingest

    idle_redis.delete(QUEUE)
    result = fan_out(
        runtime.store,
        Batch.from_message(again),
        ingest_id=again_id,
        publish=lambda operations: publish(make_celery(settings), operations),
    )
    assert sorted(op.crm_event_id for op in result.queued) == sorted(events)
    assert [name for name, _, _ in queued(idle_redis)] == [PERFORM_TASK, PERFORM_TASK]
    assert runtime.store.ingests.count() == 0  # done: nothing left to sweep
    assert idle_redis.keys(keys.ingest("*")) == []
    for operation in result.queued:
        assert runtime.store.records.read(keys.operation(operation))["state"] == State.QUEUED


def test_a_fan_out_run_again_after_the_sweep_queues_each_notification_once(
    client: FlaskClient, runtime: Runtime, settings: Settings, idle_redis: redis.Redis
) -> None:
    """The sweep may race a fan-out that was only slow: both run under the same ingest ID,
    and a new delivery of the same notification (another ingest) still queues nothing."""
    pairs = [(notification_id(), random_event_id())]
    post(client, outbound_message(pairs))
    [(_, ingest_id, [message])] = queued(idle_redis)
    batch = Batch.from_message(message)
    sent: list[str] = []

    def collect(operations: Any) -> None:
        sent.extend(op.crm_event_id for op in operations)

    fan_out(runtime.store, batch, ingest_id=ingest_id, publish=collect)
    fan_out(runtime.store, batch, ingest_id=ingest_id, publish=collect)  # the swept copy
    fan_out(runtime.store, batch, ingest_id="salesforce-redelivered", publish=collect)
    # Twice under one ingest (the claim absorbs the copy), never under another.
    assert sent == [pairs[0][1]] * 2


def test_a_publish_the_broker_refused_answers_503_and_leaves_no_record(
    settings: Settings, idle_redis: redis.Redis
) -> None:
    down = make_settings(
        settings.redis_url,
        settings.chilipiper_sandbox_url,
        celery_broker_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    client = create_app(down).test_client()
    response = post(client, outbound_message([(notification_id(), random_event_id())]))
    assert response.status_code == 503
    assert b"<Ack>" not in response.data
    assert idle_redis.zcard(keys.INGESTS) == 0  # Salesforce sends again: no sweep needed
    assert idle_redis.keys(keys.ingest("*")) == []
