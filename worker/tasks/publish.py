"""The one way work reaches the broker: a fan-out message per inbound message, a perform
task per operation. Every failure to publish is `QueueUnavailable`, so callers decide what
it means for them (the edge answers 503, a task retries, the dispatcher tries next tick)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import KombuError, OperationalError

from worker.domain.operations import Operation
from worker.errors import NotDurable, QueueUnavailable
from worker.ingest import Batch
from worker.store.ingests import Ingests

FAN_OUT_TASK = "crmhook.fan_out"
PERFORM_TASK = "crmhook.perform"
# Messages per pipeline when a fan-out publishes its operations (Salesforce's 100 fit one).
PUBLISH_BATCH = 500

# What the broker or the store's Redis raise when they are down or unreachable.
BROKER_ERRORS = (OperationalError, KombuError, redis.RedisError, OSError)


def submit(app: Celery, batch: Batch, ingests: Ingests) -> None:
    """Hand one inbound message's work to the broker as ONE fan-out task (one publish per
    message, not one per notification, so the edge answers in milliseconds).

    The batch is first recorded in the store (`store.ingests`, one pipelined round trip, on a
    replica too where there is one), so that a fan-out message the broker loses after the
    Ack, in a failover say, is published again. A record no replica confirmed, or a publish
    that fails, takes the record back: the caller is told 503 and sends again."""
    if not batch.operations and not batch.rejections:
        return
    message = batch.to_message()
    try:
        ingest_id = ingests.record(message)
    except redis.RedisError as exc:
        raise QueueUnavailable(f"Redis did not record the message: {exc}") from exc
    except NotDurable as exc:  # on the master only: a failover could forget it after the Ack
        raise QueueUnavailable(f"Redis did not record the message durably: {exc}") from exc
    try:
        _send_fan_out(app, ingest_id, message)
    except BROKER_ERRORS as exc:
        with contextlib.suppress(redis.RedisError):
            ingests.forget(ingest_id)
        raise QueueUnavailable(f"the broker did not take the message: {exc}") from exc


def publish_again(app: Celery, ingest_id: str, message: dict[str, Any]) -> None:
    """Publish a recorded fan-out again, under its ingest ID (the sweeper's remedy for a
    fan-out message the broker lost)."""
    try:
        _send_fan_out(app, ingest_id, message)
    except BROKER_ERRORS as exc:
        raise QueueUnavailable(f"the broker did not take the message: {exc}") from exc


def publish(app: Celery, operations: Sequence[Operation]) -> None:
    """Enqueue one perform task per operation, over one broker connection and, on Redis, in
    one round trip (kombu's publish batch: a pipeline of the LPUSHes; other brokers publish
    one by one). A batch that fails part way is retried whole by the caller: the claims
    make a second copy of an operation harmless."""
    if not operations:
        return
    try:
        with app.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_BATCH):
            for operation in operations:
                app.send_task(
                    PERFORM_TASK,
                    args=[operation.to_message()],
                    producer=producer,
                    argsrepr=f"[{operation.identity!r}]",
                    kwargsrepr="{}",
                )
    except BROKER_ERRORS as exc:
        raise QueueUnavailable(f"the broker did not take the message: {exc}") from exc


def _send_fan_out(app: Celery, ingest_id: str, message: dict[str, Any]) -> None:
    # Celery writes a repr of the arguments into every message's headers (for monitoring);
    # of a fan-out's 100 operations a count says as much, costs nothing to build, and keeps
    # the batch out of the headers.
    operations, rejections = len(message["operations"]), len(message["rejections"])
    summary = f"[{operations} operations, {rejections} rejections]"
    app.send_task(
        FAN_OUT_TASK, args=[message], task_id=ingest_id, argsrepr=summary, kwargsrepr="{}"
    )
