"""The pure parts of the task layer: back-off, and parking long retries in Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from tests.conftest import random_event_id
from worker.domain.operations import Action, Operation, State
from worker.settings import Settings
from worker.tasks.app import QUEUE, make_celery
from worker.tasks.dispatcher import Dispatcher
from worker.tasks.runtime import Runtime, build_runtime
from worker.tasks.tasks import backoff


@pytest.mark.parametrize("attempts", [1, 2, 5, 10, 40])
def test_backoff_is_full_jitter_under_an_exponential_ceiling(attempts: int) -> None:
    ceiling = min(3600.0, 5.0 * 2 ** (attempts - 1))
    delays = [backoff(attempts, base=5.0, cap=3600.0) for _ in range(500)]
    assert all(0 <= delay <= ceiling for delay in delays)
    assert max(delays) > ceiling / 2  # spread over the range, not pinned to it
    assert min(delays) < ceiling / 2


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
    assert runtime.store.schedule.count() == 1
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
    assert runtime.store.schedule.count() == 0


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
    assert runtime.store.pending.count() == 0
