"""The four ways an adversarial review sent a second cancel, each reproduced deterministically:
a real Redis, the real claim scripts, `perform` and the sandbox ChiliPiper on loopback, with
the sandbox's faults standing for what ChiliPiper and the network can do.

Each test counts the cancels that reached ChiliPiper: one, or it fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from tests.conftest import IDLE_DB, SandboxServer, db_url, make_settings, random_event_id
from worker.chilipiper import ToolNames, ToolResult
from worker.dev.redis_server import RedisServer
from worker.domain.operations import Action, Operation
from worker.domain.retry_policy import NextRun
from worker.effects import Outcome, RetryLater, perform
from worker.errors import InDoubtError, PermanentError, RetryableError, ToolError
from worker.store import keys
from worker.tasks.runtime import Runtime, build_runtime
from worker.tasks.tasks import run_later

# ChiliPiper is given up on after 0.3 s per read and 0.6 s per call; an abandoned call is
# reconciled no sooner than 3.5 s after it began (as the worker's start-up check requires:
# the deadline, a pool wait, a connect and a read begun before it, and 2 s).
TIMINGS: dict[str, Any] = {
    "chilipiper_timeout_seconds": 0.3,
    "chilipiper_attempts": 1,
    "chilipiper_call_deadline_seconds": 0.6,
    "chilipiper_settle_seconds": 3.5,
    "claim_lease_seconds": 10,
    "claim_heartbeat_seconds": 2,
    "circuit_window_calls": 1000,  # the circuit has tests of its own
}
SETTLE = TIMINGS["chilipiper_settle_seconds"]


@pytest.fixture
def runtime(
    redis_server: RedisServer, sandbox: SandboxServer, idle_redis: redis.Redis
) -> Iterator[Runtime]:
    settings = make_settings(db_url(redis_server, IDLE_DB), sandbox.url, **TIMINGS)
    runtime = build_runtime(settings)
    yield runtime
    runtime.redis.close()


def with_settings(runtime: Runtime, **changes: Any) -> Runtime:
    settings = runtime.settings.model_copy(update=changes)
    return dataclasses.replace(runtime, settings=settings)


def settled_since(began: float) -> None:
    """Wait until the settle time counted from `began` (a call's start) has passed."""
    time.sleep(max(0.0, began + SETTLE + 0.1 - time.monotonic()))


def cancels(sandbox: SandboxServer, operation: Operation) -> int:
    return len(sandbox.calls(operation.crm_event_id, action="cancel"))


def state_of(runtime: Runtime, operation: Operation) -> str | None:
    record = runtime.store.records.read(keys.operation(operation))
    return None if record is None else str(record["state"])


def test_a_copy_delivered_while_the_first_still_runs_sends_nothing(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    """Path 1: the broker hands the message out again (same task ID) while its first
    delivery waits on a slow cancel. The copy meets the live lease and stands down."""
    operation = cancel()
    sandbox.set_faults(late_effect_seconds=1.5)  # ChiliPiper is slow to apply the cancel
    first = threading.Thread(target=_perform_quietly, args=(runtime, operation, "task-1"))
    first.start()
    _wait_for(lambda: state_of(runtime, operation) == "running")
    with pytest.raises(RetryLater) as copy:
        perform(runtime, operation, owner="task-1")  # the redelivered message
    first.join()
    time.sleep(2.0)  # every cancel sent has landed by now
    assert cancels(sandbox, operation) == 1
    assert copy.value.delay is not None
    assert copy.value.delay > 0  # it comes back after the lease


def test_an_abandoned_cancel_is_reconciled_only_after_the_settle_time(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    """Path 2: ChiliPiper applies the cancel 1.5 s after the client gave up. A retry that
    asked crm-get 0.3 s later saw BOOKED and cancelled again; now it waits to settle."""
    operation = cancel()
    sandbox.set_faults(late_effect_seconds=1.5)
    began = time.monotonic()
    with pytest.raises(RetryLater):
        perform(runtime, operation, owner="task-1")
    time.sleep(0.3)
    with pytest.raises(RetryLater) as early:
        perform(runtime, operation, owner="task-2")
    assert early.value.delay is not None
    assert early.value.delay == pytest.approx(SETTLE - (time.monotonic() - began), abs=0.5)
    settled_since(began)
    assert perform(runtime, operation, owner="task-3") is Outcome.RECONCILED
    assert cancels(sandbox, operation) == 1


def test_a_new_notification_after_an_in_doubt_dead_letter_reconciles_first(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    """Path 3: the cancel took effect but its answer was lost, and its one attempt was the
    last: a dead letter, in doubt. A new notification for the event asks crm-get first."""
    one_try = with_settings(runtime, task_max_attempts=1)
    first = cancel()
    sandbox.set_faults(lose_answer_rate=1.0)
    began = time.monotonic()
    assert perform(one_try, first, owner="task-1") is Outcome.FAILED
    sandbox.set_faults()
    again = dataclasses.replace(first, source_id=random_event_id("04l"))
    runtime.store.records.mark_queued([again])  # what the fan-out does for a new notification
    settled_since(began)
    assert perform(one_try, again, owner="task-2") is Outcome.RECONCILED
    assert cancels(sandbox, first) == 1


def test_a_new_notification_for_a_dead_letter_gets_a_fresh_budget_that_a_deferral_keeps(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    """Path 3 again: the new notification inherited the spent budget, and a deferral of its
    one try restored `failed` under the new source, so the retry stood down: dropped."""
    one_try = with_settings(runtime, task_max_attempts=1)
    first = cancel()
    sandbox.configure(missing_permission="meeting.modify")
    assert perform(one_try, first, owner="task-1") is Outcome.FAILED
    sandbox.configure(missing_permission=None)  # an admin grants it, Salesforce sends again
    again = dataclasses.replace(first, source_id=random_event_id("04l"))
    runtime.store.records.mark_queued([again])
    record = runtime.store.records.read(keys.operation(again))
    assert record is not None
    assert (record["state"], record["attempts"]) == ("queued", "0")
    runtime.gate.failed(RetryableError("HTTP 429", status=429, retry_after=0.5))  # pause all
    with pytest.raises(RetryLater):
        perform(one_try, again, owner="task-2")  # deferred: handed back untouched
    time.sleep(0.6)
    assert perform(one_try, again, owner="task-3") is Outcome.SUCCEEDED
    assert cancels(sandbox, first) == 2  # the one refused for the permission, then this one
    assert sandbox.state.meetings[first.crm_event_id] == "CANCELLED"


def test_the_sweeper_leaves_a_retry_alone_until_it_is_due(runtime: Runtime) -> None:
    """Path 4: the pending index kept the time an operation was first queued, so the sweeper
    re-enqueued operations that were waiting on purpose, spending their attempts."""
    parked, counted_down = cancel(), cancel()
    runtime.store.records.mark_queued([parked, counted_down])
    task = SimpleNamespace(runtime=runtime, retry=_no_retry)
    run_later(task, parked, NextRun(3600, parked=True), RetryableError("HTTP 503"))  # type: ignore[arg-type]
    with pytest.raises(_Retried):
        run_later(task, counted_down, NextRun(20, parked=False), RetryableError("HTTP 503"))  # type: ignore[arg-type]
    time.sleep(1.1)
    assert runtime.store.pending.stale(older_than=1) == []


class _Retried(Exception):
    pass


def _no_retry(**_: Any) -> Exception:
    """Celery's `task.retry(throw=False)`: the exception that re-runs the task."""
    return _Retried()


def cancel() -> Operation:
    return Operation(Action.CANCEL, random_event_id(), random_event_id("04l"))


def _perform_quietly(runtime: Runtime, operation: Operation, owner: str) -> None:
    with contextlib.suppress(RetryLater):
        perform(runtime, operation, owner=owner)


def _wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class UnreadableCancel:
    """The real gateway, except that its cancel meets an MCP server that gives up on
    ChiliPiper ("Error executing tool: timeout") while ChiliPiper applies the cancel
    `late` seconds later; or, `late=None`, that applies it at once and then answers
    something unreadable."""

    def __init__(self, runtime: Runtime, sandbox: SandboxServer, late: float | None) -> None:
        self._gateway, self._sandbox, self._late = runtime.gateway, sandbox, late

    def call(self, action: Action, crm_event_id: str, **options: Any) -> ToolResult:
        if action is Action.GET:
            return self._gateway.call(action, crm_event_id)
        if self._late is None:
            self._gateway.call(action, crm_event_id, **options)
            raise PermanentError("crm-cancel-post: malformed JSON-RPC result")
        apply = threading.Timer(
            self._late, self._sandbox.state.call_tool, args=("crm-cancel-post", crm_event_id)
        )
        apply.start()
        raise ToolError(
            "crm-cancel-post: Error executing tool crm-cancel-post: timeout of 30000ms exceeded",
            tool="crm-cancel-post",
        )

    def list_tools(self) -> list[str]:
        return self._gateway.list_tools()

    def discover(self) -> ToolNames:
        return self._gateway.discover()


def test_a_refusal_without_a_status_is_in_doubt_from_the_calls_start(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    """Found by review: "Error executing tool: timeout" read as a refusal, crm-get said
    booked, and the dead letter was reopened and sent blind by the next notification."""
    operation = cancel()
    flaky = dataclasses.replace(runtime, gateway=UnreadableCancel(runtime, sandbox, late=1.0))
    began = time.monotonic()
    with pytest.raises(RetryLater):
        perform(flaky, operation, owner="task-1")  # crm-get: still booked; may yet land
    assert state_of(runtime, operation) == "in_doubt"
    with pytest.raises(RetryLater):
        perform(runtime, operation, owner="task-2")  # too soon: settle first
    settled_since(began)
    assert perform(runtime, operation, owner="task-3") is Outcome.RECONCILED
    assert cancels(sandbox, operation) == 1


def test_an_unreadable_answer_to_a_sent_cancel_is_in_doubt_not_dead(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    """Found by review: a malformed result after the cancel ran was a permanent error, the
    dead letter carried no doubt, and a new notification sent the cancel again."""
    operation = cancel()
    flaky = dataclasses.replace(runtime, gateway=UnreadableCancel(runtime, sandbox, late=None))
    began = time.monotonic()
    with pytest.raises(RetryLater) as later:
        perform(flaky, operation, owner="task-1")
    assert isinstance(later.value.error, InDoubtError)
    runtime.store.records.mark_queued([dataclasses.replace(operation, source_id="04lNEW00000001")])
    settled_since(began)
    assert perform(runtime, operation, owner="task-2") is Outcome.RECONCILED
    assert cancels(sandbox, operation) == 1
