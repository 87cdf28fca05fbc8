"""The one way work reaches the broker: a fan-out message per inbound message, a perform
task per operation. Every failure to publish is `QueueUnavailable`, so callers decide what
it means for them (the edge answers 503, a task retries, the dispatcher tries next tick)."""

from __future__ import annotations

from collections.abc import Sequence

import redis
from celery import Celery
from kombu.exceptions import KombuError, OperationalError

from worker.domain.operations import Operation
from worker.errors import QueueUnavailable
from worker.ingest import Batch

FAN_OUT_TASK = "crmhook.fan_out"
PERFORM_TASK = "crmhook.perform"

# What the broker or the store's Redis raise when they are down or unreachable.
BROKER_ERRORS = (OperationalError, KombuError, redis.RedisError, OSError)


def submit(app: Celery, batch: Batch) -> None:
    """Hand one inbound message's work to the broker as ONE fan-out task (one publish per
    message, not one per notification, so the edge answers in milliseconds)."""
    if not batch.operations and not batch.rejections:
        return
    try:
        app.send_task(FAN_OUT_TASK, args=[batch.to_message()])
    except BROKER_ERRORS as exc:
        raise QueueUnavailable(f"the broker did not take the message: {exc}") from exc


def publish(app: Celery, operations: Sequence[Operation]) -> None:
    """Enqueue one perform task per operation, over one broker connection."""
    if not operations:
        return
    try:
        with app.producer_or_acquire() as producer:
            for operation in operations:
                app.send_task(PERFORM_TASK, args=[operation.to_message()], producer=producer)
    except BROKER_ERRORS as exc:
        raise QueueUnavailable(f"the broker did not take the message: {exc}") from exc
