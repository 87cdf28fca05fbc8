"""The Celery tasks: thin wrappers that unpack arguments and call the core.

Retries of transient failures are Celery's (minutes, exponential back-off with full jitter);
the in-call retries of seconds happen inside the gateway. Countdowns stay below the broker
visibility timeout: a longer ETA would be redelivered while it waits (kombu#337).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, cast

from celery import Task, shared_task
from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutdown

from worker.domain.operations import Operation
from worker.effects import RetryLater, perform
from worker.ingest import BROKER_ERRORS, FAN_OUT_TASK, PERFORM_TASK, Batch, fan_out
from worker.tasks.dispatcher import Dispatcher
from worker.tasks.runtime import Runtime, runtime_for

log = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 2.0
RETRY_CAP_SECONDS = 60.0


def _runtime(task: Task) -> Runtime:
    return runtime_for(task.app.crmhook_settings)


def backoff(
    attempts: int, *, base: float = RETRY_BASE_SECONDS, cap: float = RETRY_CAP_SECONDS
) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^(attempts-1))], so workers that failed
    together do not come back together."""
    ceiling = min(cap, base * 2 ** max(0, min(attempts - 1, 30)))
    return random.uniform(0, ceiling)  # noqa: S311 (jitter, not cryptography)


def retry_or_requeue(task: Task, exc: BaseException, countdown: float) -> BaseException:
    """The exception that gets this delivery run again: a Celery retry, or, when even the
    retry cannot be published (the broker is the Redis that just failed), a requeue.

    Never let an infrastructure error fail the task: with acks_late a failed task is
    acknowledged, and the operation would be lost. Celery itself turns a retry it could not
    publish into `Reject(requeue=False)`, a silent drop; we requeue instead (and if Redis is
    still down, the message stays unacknowledged and comes back after the visibility timeout).
    """
    try:
        retry = task.retry(exc=exc, countdown=countdown, throw=False)
    except Reject as rejected:
        log.warning("cannot publish a retry (%s); requeueing the message", rejected.reason)
        retry = Reject(str(exc), requeue=True)
    return cast(BaseException, retry)  # Celery is untyped: both are exceptions


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
    except BROKER_ERRORS as exc:  # the same ingest again, soon
        raise retry_or_requeue(self, exc, backoff(self.request.retries, cap=30)) from exc
    return {
        "queued": len(result.queued),
        "skipped": result.skipped,
        "quarantined": result.quarantined,
    }


@shared_task(bind=True, name=PERFORM_TASK, max_retries=None)
def perform_task(self: Task, operation: dict[str, str]) -> str:
    """Perform one operation exactly once; retry later on transient failure."""
    runtime = _runtime(self)
    settings = runtime.settings
    parsed = Operation.from_message(operation)
    try:
        held = runtime.gate.deferral()  # paused or circuit open: do not even claim
        if held > 0:
            return _run_later(self, runtime, parsed, held + _spread(), None)
        outcome = perform(runtime, parsed, owner=self.request.id)
    except RetryLater as later:
        if later.delay is not None:  # the shared limits said when: spread arrivals a little
            delay = later.delay + _spread()
        else:
            delay = backoff(
                later.attempts, base=settings.retry_base_seconds, cap=settings.retry_max_seconds
            )
            delay = max(delay, getattr(later.error, "retry_after", None) or 0.0)
        return _run_later(self, runtime, parsed, delay, later.error)
    except BROKER_ERRORS as exc:
        # Redis failed around the call: the retry's claim sees the interrupted attempt and
        # reconciles through crm-get before any irreversible call is repeated.
        raise retry_or_requeue(self, exc, backoff(1, cap=10)) from exc
    return outcome.value


def _spread() -> float:
    """Up to a second of jitter, so tasks held back together do not return together."""
    return random.uniform(0, 1)  # noqa: S311 (jitter, not cryptography)


def _run_later(
    task: Task, runtime: Runtime, operation: Operation, delay: float, error: BaseException | None
) -> str:
    """Soon: a Celery countdown. Later than a third of the visibility timeout: parked in
    Redis by due time (a long countdown would be redelivered while it waits, kombu#337)."""
    if delay < runtime.settings.countdown_limit_seconds:
        raise retry_or_requeue(task, error or Exception("deferred"), delay)
    runtime.store.schedule(operation, time.time() + delay)
    log.info("%s: parked for %.0f s", operation.key, delay)
    return "scheduled"


@worker_ready.connect
def _start_dispatcher(sender: Any, **_: Any) -> None:
    """Every worker process moves its share of due long retries back to the queue."""
    app = sender.app
    if getattr(app, "crmhook_settings", None) is None:
        return
    dispatcher = Dispatcher(app, runtime_for(app.crmhook_settings))
    dispatcher.start()
    app.crmhook_dispatcher = dispatcher


@worker_shutdown.connect
def _stop_dispatcher(sender: Any, **_: Any) -> None:
    dispatcher = getattr(getattr(sender, "app", None), "crmhook_dispatcher", None)
    if dispatcher is not None:
        dispatcher.stop()
