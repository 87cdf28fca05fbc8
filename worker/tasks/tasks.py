"""The Celery tasks: thin wrappers that unpack arguments and call the core.

Retries of transient failures are Celery's (minutes, exponential back-off with full jitter);
the in-call retries of seconds happen inside the gateway. When and where an operation waits
is `domain.retry_policy`'s decision; this module only carries it out.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, cast

import redis
from celery import Task, shared_task
from celery.exceptions import Reject, Retry
from celery.signals import worker_init, worker_ready, worker_shutdown

from worker import logs, metrics
from worker.domain.operations import Operation
from worker.domain.retry_policy import NextRun, RetryPolicy, backoff
from worker.effects import RetryLater, perform
from worker.errors import (
    GatewayError,
    InDoubtError,
    QueueUnavailable,
    RetryableError,
    ToolsMissing,
    WorkerStopping,
)
from worker.ingest import Batch, fan_out
from worker.store import keys
from worker.tasks import metrics_endpoint, shutdown
from worker.tasks.dispatcher import Dispatcher
from worker.tasks.publish import BROKER_ERRORS, FAN_OUT_TASK, PERFORM_TASK, publish
from worker.tasks.runtime import RuntimeTask, runtime_of

log = logging.getLogger(__name__)

# Infrastructure trouble around a task (Redis or the broker down) is retried soon: seconds.
INFRASTRUCTURE_RETRY_BASE_SECONDS = 2.0
FAN_OUT_RETRY_CAP_SECONDS = 30.0
PERFORM_RETRY_CAP_SECONDS = 10.0


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


def _infrastructure_delay(retries: int, cap: float) -> float:
    return backoff(retries, base=INFRASTRUCTURE_RETRY_BASE_SECONDS, cap=cap)


@shared_task(bind=True, base=RuntimeTask, name=FAN_OUT_TASK, max_retries=None)
def fan_out_task(self: RuntimeTask, batch: dict[str, Any]) -> dict[str, int]:
    """Queue one task per new operation of one inbound message."""
    try:
        with logs.bound(ingest_id=self.request.id, task_id=self.request.id):
            result = fan_out(
                self.runtime.store,
                Batch.from_message(batch),
                ingest_id=self.request.id,
                publish=lambda operations: publish(self.app, operations),
            )
    except (QueueUnavailable, *BROKER_ERRORS) as exc:  # the same ingest again, soon
        delay = _infrastructure_delay(self.request.retries, FAN_OUT_RETRY_CAP_SECONDS)
        raise retry_or_requeue(self, exc, delay) from exc
    return {
        "queued": len(result.queued),
        "skipped": result.skipped,
        "quarantined": result.quarantined,
    }


@shared_task(bind=True, base=RuntimeTask, name=PERFORM_TASK, max_retries=None)
def perform_task(self: RuntimeTask, operation: dict[str, Any]) -> str:
    """Perform one operation exactly once; run it again later on a transient failure."""
    runtime = self.runtime
    settings = runtime.settings
    policy = RetryPolicy(
        settings.retry_base_seconds, settings.retry_max_seconds, settings.countdown_limit_seconds
    )
    parsed = Operation.from_message(operation)
    with logs.bound(
        event_id=parsed.crm_event_id,
        notification_id=parsed.notification_id,
        action=parsed.action.value,
        operation_key=keys.operation(parsed),
        task_id=self.request.id,
    ):
        return _perform(self, parsed, policy)


def _perform(task: RuntimeTask, parsed: Operation, policy: RetryPolicy) -> str:
    """The task's body, with every way it ends counted (`crmhook_operations_total`)."""
    action = parsed.action.value
    try:
        outcome = _perform_once(task, parsed, policy)
    except Retry:
        metrics.OPERATIONS.labels(action, "retry").inc()
        raise
    except Reject:
        metrics.OPERATIONS.labels(action, "requeued").inc()
        raise
    metrics.OPERATIONS.labels(action, outcome).inc()
    return outcome


def _perform_once(task: RuntimeTask, parsed: Operation, policy: RetryPolicy) -> str:
    runtime = task.runtime
    try:
        if runtime.stopping.is_set():
            raise WorkerStopping(f"{keys.operation(parsed)}: this worker is stopping")
        held = runtime.gate.recent_deferral()  # paused or circuit open: do not even claim
        if held > 0:
            return run_later(task, parsed, policy.next_run(0, held_for=held), None)
        redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
        outcome = perform(runtime, parsed, owner=task.request.id, redelivered=redelivered)
    except RetryLater as later:
        next_run = policy.next_run(
            later.attempts,
            held_for=later.delay,
            retry_after=getattr(later.error, "retry_after", None),
        )
        return run_later(task, parsed, next_run, later.error)
    except WorkerStopping as exc:
        # Not started, or stopped before anything left: the message itself goes back to the
        # queue, unacknowledged, for a worker that is not stopping (graceful shutdown).
        log.info("%s", exc)
        raise Reject(str(exc), requeue=True) from exc
    except BROKER_ERRORS as exc:
        # Redis failed around the call: the retry's claim sees the interrupted attempt and
        # reconciles through crm-get before any irreversible call is repeated.
        metrics.RETRIES.labels(parsed.action.value, "infrastructure").inc()
        delay = _infrastructure_delay(1, PERFORM_RETRY_CAP_SECONDS)
        raise retry_or_requeue(task, exc, delay) from exc
    return outcome.value


def run_later(
    task: RuntimeTask, operation: Operation, next_run: NextRun, error: BaseException | None
) -> str:
    """Carry out `next_run`: a Celery countdown (raises), or an entry parked in Redis.

    Either way the pending index learns when the operation is next due, so the sweeper,
    which re-enqueues what seems to have lost its message, leaves it alone until then."""
    transient = isinstance(error, RetryableError | InDoubtError)
    metrics.RETRIES.labels(operation.action.value, "transient" if transient else "deferred").inc()
    due = time.time() + next_run.delay
    try:
        task.runtime.store.pending.stamp([operation], at=due)
    except redis.RedisError:
        # Only the sweeper's timing depends on it (it may enqueue a copy early, which the
        # claim absorbs): never let it cost the retry itself.
        log.warning("%s: pending index not updated", keys.operation(operation), exc_info=True)
    if not next_run.parked:
        raise retry_or_requeue(task, error or Exception("deferred"), next_run.delay)
    task.runtime.store.schedule.add(operation, due)
    log.info("%s: parked for %.0f s", keys.operation(operation), next_run.delay)
    return "scheduled"


@worker_init.connect
def _discover_tools(sender: Any, **_: Any) -> None:
    """Learn which ChiliPiper tools to call before taking work. A ChiliPiper that lists no
    tool for an action stops the worker here, with the reason, instead of dead-lettering
    every call; a ChiliPiper out of reach does not (no crash loop): the tools are listed
    before the first call instead."""
    app = sender.app
    if getattr(app, "crmhook_settings", None) is None:
        return
    try:
        tools = runtime_of(app).gateway.discover()
    except ToolsMissing as exc:
        log.critical("crmhook worker: %s", exc)
        print(f"crmhook worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (GatewayError, redis.RedisError) as exc:
        log.warning(
            "ChiliPiper's tools could not be listed at start-up (%s): "
            "they will be before the first call",
            exc,
        )
    else:
        log.info("ChiliPiper tools in use: %s", tools)


@worker_ready.connect
def _on_ready(sender: Any, **_: Any) -> None:
    """Every worker process moves its share of due long retries back to the queue, serves
    its metrics when asked to, and learns to stop gracefully."""
    app = sender.app
    if getattr(app, "crmhook_settings", None) is None:
        return
    runtime = runtime_of(app)
    dispatcher = Dispatcher(app, runtime)
    dispatcher.start()
    app.crmhook_dispatcher = dispatcher
    shutdown.install(runtime, runtime.settings.worker_shutdown_grace_seconds)
    if runtime.settings.worker_metrics_port is not None:
        metrics_endpoint.serve(runtime, runtime.settings.worker_metrics_port)


@worker_shutdown.connect
def _stop_dispatcher(sender: Any, **_: Any) -> None:
    dispatcher = getattr(getattr(sender, "app", None), "crmhook_dispatcher", None)
    if dispatcher is not None:
        dispatcher.stop()
