"""The task layer on a real Redis broker: long retries parked in Redis and dispatched when
due, lost messages found again, a near retry as a countdown, and a requeue when even the
retry cannot be published."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import redis
from celery.exceptions import Reject, Retry

from tests.conftest import random_event_id
from worker.dev.redis_server import free_port
from worker.domain.operations import Action, Operation, State
from worker.domain.retry_policy import NextRun
from worker.settings import Settings
from worker.store import keys
from worker.tasks.app import QUEUE, make_celery
from worker.tasks.dispatcher import Dispatcher
from worker.tasks.publish import PERFORM_TASK
from worker.tasks.runtime import Runtime, RuntimeTask, build_runtime
from worker.tasks.tasks import retry_or_requeue, run_later


@pytest.fixture
def runtime(settings: Settings, idle_redis: redis.Redis) -> Iterator[Runtime]:
    runtime = build_runtime(settings)
    yield runtime
    runtime.redis.close()


def test_due_retries_are_enqueued_once_and_later_ones_wait(
    runtime: Runtime, settings: Settings, idle_redis: redis.Redis
) -> None:
    due = Operation(Action.CANCEL, random_event_id(), "04l")
    later = Operation(Action.CANCEL, random_event_id(), "04l")
    runtime.store.schedule.add(due, time.time() - 1)
    runtime.store.schedule.add(later, time.time() + 3600)
    dispatcher = Dispatcher(make_celery(settings), runtime)
    assert dispatcher.dispatch_due() == 1
    assert dispatcher.dispatch_due() == 0  # removed once sent
    assert runtime.redis.zcard(keys.SCHEDULE) == 1
    [raw] = idle_redis.lrange(QUEUE, 0, -1)
    envelope = json.loads(raw)
    assert envelope["headers"]["task"] == "crmhook.perform"
    assert envelope["headers"]["argsrepr"].count(due.crm_event_id) == 1


def test_an_entry_taken_but_not_sent_comes_back_after_its_lease(runtime: Runtime) -> None:
    operation = Operation(Action.NOSHOW, random_event_id(), "04l")
    runtime.store.schedule.add(operation, time.time() - 1)
    [(entry, taken)] = runtime.store.schedule.take_due(
        lease_seconds=0.5
    )  # the dispatcher dies here
    assert taken == operation
    assert runtime.store.schedule.take_due(lease_seconds=0.5) == []  # leased: nobody else sends it
    time.sleep(0.6)
    assert [op for _, op in runtime.store.schedule.take_due(lease_seconds=0.5)] == [operation]
    runtime.store.schedule.done(entry)
    assert runtime.redis.zcard(keys.SCHEDULE) == 0


def test_an_operation_whose_message_was_lost_is_enqueued_again(
    runtime: Runtime, settings: Settings, idle_redis: redis.Redis
) -> None:
    lost = Operation(Action.CANCEL, random_event_id(), random_event_id("04l"))
    runtime.store.records.mark_queued([lost])  # queued in the store, but its message never arrived
    swept = replace(runtime, settings=settings.model_copy(update={"requeue_after_seconds": 0}))
    dispatcher = Dispatcher(make_celery(settings), swept)
    assert dispatcher.requeue_stale() == 1
    [raw] = idle_redis.lrange(QUEUE, 0, -1)
    assert lost.crm_event_id in json.loads(raw)["headers"]["argsrepr"]
    claim = runtime.store.claims.claim(lost, "t1", lease_seconds=60)
    runtime.store.claims.settle(lost, claim, State.SUCCEEDED)
    assert dispatcher.requeue_stale() == 0  # settled: dropped from the index
    assert runtime.redis.zcard(keys.PENDING) == 0


@contextmanager
def delivered(task: RuntimeTask, operation: Operation) -> Iterator[RuntimeTask]:
    """`task` as a worker runs it: with the request of one delivered message."""
    task.push_request(
        id=f"task-{operation.crm_event_id}",
        args=[operation.to_message()],
        kwargs={},
        retries=0,
        called_directly=False,
        is_eager=False,
        delivery_info={},
    )
    try:
        yield task
    finally:
        task.pop_request()


def perform_task_of(settings: Settings) -> RuntimeTask:
    app = make_celery(settings)
    app.loader.import_default_modules()  # the worker's tasks register on this app
    task: RuntimeTask = app.tasks[PERFORM_TASK]
    return task


def test_a_near_retry_waits_in_the_broker_and_a_far_one_in_redis(
    settings: Settings, idle_redis: redis.Redis
) -> None:
    operation = Operation(Action.CANCEL, random_event_id(), random_event_id("04l"))
    with delivered(perform_task_of(settings), operation) as task:
        with pytest.raises(Retry):
            run_later(task, operation, NextRun(5.0, parked=False), None)
        [raw] = idle_redis.lrange(QUEUE, 0, -1)
        headers = json.loads(raw)["headers"]
        assert headers["eta"] is not None
        assert headers["retries"] == 1
        assert idle_redis.zcard(keys.SCHEDULE) == 0

        before = time.time()
        assert run_later(task, operation, NextRun(600.0, parked=True), None) == "scheduled"
    assert idle_redis.llen(QUEUE) == 1  # nothing more in the broker
    [(entry, due)] = idle_redis.zrange(keys.SCHEDULE, 0, -1, withscores=True)
    assert before + 600 <= due <= time.time() + 600
    assert json.loads(entry)["operation"] == operation.to_message()


def test_a_retry_that_cannot_be_published_requeues_the_message_instead_of_dropping_it(
    settings: Settings,
) -> None:
    """Celery turns a retry it could not publish into Reject(requeue=False), a silent drop;
    with the broker down the task must give its message back instead."""
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    operation = Operation(Action.NOSHOW, random_event_id(), random_event_id("04l"))
    with delivered(perform_task_of(down), operation) as task:
        outcome = retry_or_requeue(task, ConnectionError("Redis went away"), countdown=1.0)
    assert isinstance(outcome, Reject)
    assert outcome.requeue is True
