"""The Celery tasks: thin wrappers that unpack arguments and call the core.

Retries of transient failures are Celery's (minutes, exponential back-off with full jitter);
the in-call retries of seconds happen inside the gateway. Countdowns stay below the broker
visibility timeout: a longer ETA would be redelivered while it waits (kombu#337).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task, shared_task

from worker.effects import RetryLater, perform
from worker.ingest import FAN_OUT_TASK, PERFORM_TASK, Batch, fan_out
from worker.operations import Operation
from worker.runtime import Runtime, runtime_for

log = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 2.0
RETRY_CAP_SECONDS = 60.0


def _runtime(task: Task) -> Runtime:
    return runtime_for(task.app.crmhook_settings)


def backoff(
    retries: int, *, base: float = RETRY_BASE_SECONDS, cap: float = RETRY_CAP_SECONDS
) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^retries)], so failures spread out."""
    return random.uniform(0, min(cap, base * 2**retries))  # noqa: S311 (jitter, not crypto)


@shared_task(bind=True, name=FAN_OUT_TASK, max_retries=None)
def fan_out_task(self: Task, batch: dict[str, Any]) -> dict[str, int]:
    """Queue one task per new operation of one inbound message."""
    runtime = _runtime(self)
    perform_task: Task = self.app.tasks[PERFORM_TASK]
    try:
        with self.app.producer_or_acquire() as producer:
            result = fan_out(
                runtime.store,
                Batch.from_message(batch),
                ingest_id=self.request.id,
                enqueue=lambda op: perform_task.apply_async(
                    args=[op.to_message()], producer=producer
                ),
            )
    except Exception as exc:  # broker or Redis trouble: the same ingest again, soon
        raise self.retry(exc=exc, countdown=backoff(self.request.retries, cap=30)) from exc
    return {
        "queued": len(result.queued),
        "skipped": result.skipped,
        "quarantined": result.quarantined,
    }


@shared_task(bind=True, name=PERFORM_TASK, max_retries=None)
def perform_task(self: Task, operation: dict[str, str]) -> str:
    """Perform one operation exactly once; retry later on transient failure."""
    runtime = _runtime(self)
    last_try = self.request.retries >= runtime.settings.task_max_retries
    try:
        outcome = perform(
            runtime, Operation.from_message(operation), owner=self.request.id, last_try=last_try
        )
    except RetryLater as later:
        raise self.retry(countdown=backoff(self.request.retries), exc=later.error) from None
    return outcome.value
