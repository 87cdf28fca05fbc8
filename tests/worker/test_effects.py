"""`perform`: claim, reconcile, call, settle; on a real Redis and the sandbox over HTTP."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import redis

from tests.conftest import IDLE_DB, SandboxServer, db_url, make_settings, random_event_id
from tests.worker.chilipiper.test_gate_round_trips import Sends, counting_client
from worker.chilipiper import Gateway, ToolNames, ToolResult, build_gateway
from worker.dev.redis_server import RedisServer
from worker.domain.operations import Action, Operation
from worker.effects import Outcome, RetryLater, perform
from worker.errors import (
    ClaimBusy,
    DeferredError,
    GatewayError,
    InDoubtError,
    RetryableError,
)
from worker.leases import Heartbeat
from worker.store import keys
from worker.tasks.runtime import Runtime, build_gate, build_runtime, build_store


@pytest.fixture
def runtime(
    redis_server: RedisServer, sandbox: SandboxServer, idle_redis: redis.Redis
) -> Iterator[Runtime]:
    """A runtime on the flushed idle database: no circuit or pause left by another test."""
    settings = make_settings(
        db_url(redis_server, IDLE_DB),
        sandbox.url,
        chilipiper_timeout_seconds=1.0,
        chilipiper_settle_seconds=SETTLE,  # an abandoned call is reconciled that soon
        circuit_window_calls=1000,  # the circuit has tests of its own
    )
    runtime = build_runtime(settings)
    yield runtime
    runtime.redis.close()


def cancel() -> Operation:
    return Operation(Action.CANCEL, random_event_id(), random_event_id("04l"))


def record_of(runtime: Runtime, operation: Operation) -> dict[str, Any]:
    """The stored record of `operation`, which must exist."""
    record = runtime.store.records.read(keys.operation(operation))
    assert record is not None
    return record


SETTLE = 0.3


def interrupted(runtime: Runtime, operation: Operation) -> None:
    """A worker claimed `operation`, sent its call and died: its lease has run out, and the
    settle time since the call began has passed."""
    claims = runtime.store.claims
    claim = claims.claim(operation, "killed-worker", lease_seconds=0)
    assert claims.mark_sending(operation, claim, lease_seconds=0)
    time.sleep(SETTLE + 0.05)


def test_cancel_is_called_once_and_recorded(runtime: Runtime, sandbox: SandboxServer) -> None:
    operation = cancel()
    assert perform(runtime, operation, owner="t1") is Outcome.SUCCEEDED
    assert perform(runtime, operation, owner="t2") is Outcome.ALREADY_DONE
    assert len(sandbox.calls(operation.crm_event_id, action="cancel")) == 1
    record = record_of(runtime, operation)
    assert record["state"] == "succeeded"
    assert record["result"]["tool"] == "crm-cancel-post"
    assert record["result"]["meeting"]["status"] == "CANCELLED"
    assert record["result"]["meeting"]["status_as_sent"] == "Canceled"


def test_get_result_is_kept_with_the_key(runtime: Runtime) -> None:
    operation = Operation(Action.GET, random_event_id(), random_event_id("04l"))
    assert perform(runtime, operation, owner="t1") is Outcome.SUCCEEDED
    record = record_of(runtime, operation)
    meeting = record["result"]["meeting"]
    assert (meeting["status"], meeting["status_as_sent"]) == ("BOOKED", "Active")
    assert {"meeting_id", "start", "end", "booked_at"} <= set(meeting)
    assert "@" not in json.dumps(record)  # the attendees' addresses are not kept


def test_a_live_claim_elsewhere_means_busy_and_no_call(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    runtime.store.claims.claim(operation, "other-worker", lease_seconds=60)
    with pytest.raises(RetryLater) as later:
        perform(runtime, operation, owner="t1")
    assert isinstance(later.value.error, ClaimBusy)
    assert later.value.delay == pytest.approx(60, abs=1)  # back once that lease has run out
    assert sandbox.calls(operation.crm_event_id) == []
    assert record_of(runtime, operation)["attempts"] == "1"  # the other's, not one more


def test_interrupted_cancel_that_took_effect_is_reconciled_without_a_second_call(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    interrupted(runtime, operation)  # died mid-call...
    with sandbox.state.lock:
        sandbox.state.meetings[operation.crm_event_id] = "CANCELLED"  # ...after ChiliPiper acted
    assert perform(runtime, operation, owner="t2") is Outcome.RECONCILED
    assert [c["tool"] for c in sandbox.calls(operation.crm_event_id)] == ["crm-get"]
    record = record_of(runtime, operation)
    assert (record["state"], record["result"]["reconciled"]) == ("succeeded", True)


def test_interrupted_cancel_that_did_not_take_effect_is_sent(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    interrupted(runtime, operation)
    assert perform(runtime, operation, owner="t2") is Outcome.SUCCEEDED
    assert [c["tool"] for c in sandbox.calls(operation.crm_event_id)] == [
        "crm-get",
        "crm-cancel-post",
    ]


def test_timeout_makes_the_key_in_doubt_and_the_retry_reconciles(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    runtime.gateway.call(Action.GET, operation.crm_event_id)  # session open, meeting booked
    sandbox.set_faults(delay_seconds=1.5)
    with pytest.raises(RetryLater) as later:
        perform(runtime, operation, owner="t1")
    assert isinstance(later.value.error, InDoubtError)
    record = record_of(runtime, operation)
    assert record["state"] == "in_doubt"
    sandbox.set_faults()
    time.sleep(0.7)  # the slow cancel lands on the server after all, the settle time passes
    assert perform(runtime, operation, owner="t1") is Outcome.RECONCILED
    assert len(sandbox.calls(operation.crm_event_id, action="cancel")) == 1


def test_permanent_error_fails_at_once(runtime: Runtime, sandbox: SandboxServer) -> None:
    operation = Operation(Action.NOSHOW, random_event_id("00V"), "04l")  # no meeting linked
    assert perform(runtime, operation, owner="t1") is Outcome.FAILED
    record = record_of(runtime, operation)
    assert record["state"] == "failed"
    assert "No meeting linked" in record["last_error"]
    assert len(sandbox.calls(operation.crm_event_id)) == 1


def test_transient_errors_retry_until_max_attempts_then_dead_letter(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    sandbox.set_faults(fail_next=1000, status=503)
    max_attempts = runtime.settings.task_max_attempts
    for attempt in range(1, max_attempts):
        with pytest.raises(RetryLater) as later:
            perform(runtime, operation, owner="t1")
        assert isinstance(later.value.error, RetryableError)
        assert later.value.attempts == attempt
        record = record_of(runtime, operation)
        assert record["state"] == "retrying"
    assert perform(runtime, operation, owner="t1") is Outcome.FAILED
    record = record_of(runtime, operation)
    assert record["last_error"].startswith(f"gave up after {max_attempts} attempts")
    assert keys.operation(operation) in [key for key, _ in runtime.store.dead_letters.since()]
    assert sandbox.calls(operation.crm_event_id) == []  # every try was refused with 503


def test_transient_errors_past_max_age_dead_letter(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    aged = build_runtime(runtime.settings.model_copy(update={"task_max_age_seconds": 0}))
    operation = cancel()
    sandbox.set_faults(fail_next=1000, status=503)
    assert perform(aged, operation, owner="t1") is Outcome.FAILED
    record = record_of(aged, operation)
    assert "gave up after" in record["last_error"]
    aged.redis.close()


def test_already_cancelled_is_success_after_crm_get_confirms(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    with sandbox.state.lock:
        sandbox.state.meetings[operation.crm_event_id] = "CANCELLED"  # cancelled in ChiliPiper
    assert perform(runtime, operation, owner="t1") is Outcome.RECONCILED
    assert [c["tool"] for c in sandbox.calls(operation.crm_event_id)] == [
        "crm-cancel-post",
        "crm-get",
    ]


def test_noshow_of_a_cancelled_meeting_fails_after_the_check(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = Operation(Action.NOSHOW, random_event_id(), "04l")
    with sandbox.state.lock:
        sandbox.state.meetings[operation.crm_event_id] = "CANCELLED"
    assert perform(runtime, operation, owner="t1") is Outcome.FAILED
    record = record_of(runtime, operation)
    assert "already Canceled" in record["last_error"]


@pytest.mark.parametrize("spelling", ["edge", "upper"])
def test_an_interrupted_cancel_reconciles_through_meeting_status(
    runtime: Runtime, sandbox: SandboxServer, spelling: str
) -> None:
    """The in-doubt check reads ChiliPiper's `meetingStatus`, in either spelling: a cancel
    that took effect before its worker died is recorded, not sent again."""
    sandbox.configure(status_spelling=spelling)
    operation = cancel()
    interrupted(runtime, operation)
    sandbox.state.seed({operation.crm_event_id: "CANCELLED"})  # the lost call had taken effect
    assert perform(runtime, operation, owner="t2") is Outcome.RECONCILED
    assert [c["action"] for c in sandbox.calls(operation.crm_event_id)] == ["get"]
    record = record_of(runtime, operation)
    assert record["result"]["meeting"]["status"] == "CANCELLED"
    assert record["result"]["reconciled"] is True


def test_a_status_that_is_neither_booked_nor_wanted_is_left_to_an_operator(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    interrupted(runtime, operation)
    sandbox.state.seed({operation.crm_event_id: "COMPLETED"})
    assert perform(runtime, operation, owner="t2") is Outcome.FAILED
    assert sandbox.calls(operation.crm_event_id, action="cancel") == []
    record = record_of(runtime, operation)
    assert "crm-get reported status 'Completed'" in record["last_error"]


def test_redelivery_of_a_failed_notification_stays_failed_but_a_new_one_tries_again(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    event = random_event_id("00V")  # no meeting linked: fails permanently
    first = Operation(Action.CANCEL, event, random_event_id("04l"))
    runtime.store.records.mark_queued([first])
    assert perform(runtime, first, owner="t1") is Outcome.FAILED
    runtime.store.records.mark_queued([first])  # Salesforce delivers it again
    assert perform(runtime, first, owner="t1-redelivered") is Outcome.ALREADY_FAILED
    assert len(sandbox.calls(event)) == 1
    with sandbox.state.lock:
        sandbox.state.meetings[event] = "BOOKED"  # the world changed: the meeting got linked
    later = Operation(Action.CANCEL, event, random_event_id("04l"))
    runtime.store.records.mark_queued([later])  # a new notification reopens the dead letter
    assert record_of(runtime, later)["state"] == "queued"  # not in doubt: it was answered
    assert perform(runtime, later, owner="t2") is Outcome.SUCCEEDED
    assert keys.operation(first) not in [
        key for key, _ in runtime.store.dead_letters.since()
    ]  # succeeded since: no dead letter


def test_a_successful_cancel_costs_four_round_trips_the_gates_record_in_the_settles(
    redis_server: RedisServer, sandbox: SandboxServer, idle_redis: redis.Redis
) -> None:
    """Claim, enter the gate, mark the send, then one pipeline: the settle, its index writes
    and the gate's record of the success."""
    sends = Sends()
    settings = make_settings(db_url(redis_server, IDLE_DB), sandbox.url)
    with counting_client(settings.redis_url, sends) as client:
        store = build_store(settings, client)
        gate = build_gate(settings, client)
        counted = Runtime(
            settings=settings,
            redis=client,
            store=store,
            gate=gate,
            gateway=build_gateway(settings, gate=gate),
            heartbeat=Heartbeat(store.claims, lease_seconds=60, interval=60),
        )
        perform(counted, cancel(), owner="t0")  # scripts loaded, tools listed, replicas read
        client.delete(keys.GATE_LIMITER)  # no slot to wait for (a check more after the wait)
        window = client.llen(keys.GATE_BREAKER_WINDOW)
        operation = cancel()
        assert sends.during(partial(perform, counted, operation, owner="t1")) == 4
        assert client.llen(keys.GATE_BREAKER_WINDOW) == window + 1  # the success, recorded
        assert record_of(counted, operation)["state"] == "succeeded"


def test_an_open_circuit_defers_without_spending_an_attempt(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    runtime.gate.failed(RetryableError("HTTP 429", status=429, retry_after=5))  # pause all
    with pytest.raises(RetryLater) as later:
        perform(runtime, operation, owner="t1")
    assert later.value.delay is not None
    assert 4 < later.value.delay <= 5
    record = record_of(runtime, operation)
    assert (record["state"], record["attempts"]) == ("queued", "0")  # as if never claimed
    assert sandbox.calls(operation.crm_event_id) == []


class ReadsFailOnce:
    """The real gateway, except that ChiliPiper's next `crm-get` meets a bad minute."""

    def __init__(self, gateway: Gateway, error: GatewayError) -> None:
        self._gateway, self._error = gateway, error

    def call(self, action: Action, crm_event_id: str, **options: Any) -> ToolResult:
        if action is Action.GET and self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._gateway.call(action, crm_event_id, **options)

    def list_tools(self) -> list[str]:
        return self._gateway.list_tools()

    def discover(self) -> ToolNames:
        return self._gateway.discover()


@pytest.mark.parametrize(
    "bad_minute",
    [
        DeferredError("held back: rate limit", retry_after=0.1),
        RetryableError("crm-get: HTTP 503", status=503),
    ],
)
def test_a_refusal_whose_check_cannot_run_yet_is_in_doubt_not_dead(
    runtime: Runtime, sandbox: SandboxServer, bad_minute: GatewayError
) -> None:
    """ChiliPiper refuses the cancel (409: no longer active) and the crm-get that would tell
    whether it is cancelled already cannot run yet: the operation waits in doubt, and the
    next try reconciles instead of dead-lettering a cancel that happened."""
    operation = cancel()
    sandbox.state.seed({operation.crm_event_id: "CANCELLED"})
    flaky = dataclasses.replace(runtime, gateway=ReadsFailOnce(runtime.gateway, bad_minute))
    with pytest.raises(RetryLater) as later:
        perform(flaky, operation, owner="t1")
    assert isinstance(later.value.error, InDoubtError)
    record = record_of(runtime, operation)
    assert record["state"] == "in_doubt"
    assert perform(flaky, operation, owner="t2") is Outcome.RECONCILED
    assert [c["action"] for c in sandbox.calls(operation.crm_event_id)] == ["cancel", "get"]


def test_a_missing_permission_is_named_in_the_dead_letter(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    sandbox.configure(missing_permission="meeting.modify")
    operation = cancel()
    assert perform(runtime, operation, owner="t1") is Outcome.FAILED
    record = record_of(runtime, operation)
    assert "the token lacks the permission meeting.modify" in record["last_error"]
    assert len(sandbox.calls(operation.crm_event_id, action="cancel")) == 1  # not retried


def test_a_check_that_fails_leaves_the_operation_in_doubt_for_the_next_run(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    """After an interruption, a crm-get that meets a 503 has not answered: the next run must
    ask again before it sends, not send blind."""
    operation = cancel()
    interrupted(runtime, operation)
    flaky = dataclasses.replace(
        runtime, gateway=ReadsFailOnce(runtime.gateway, RetryableError("HTTP 503", status=503))
    )
    with pytest.raises(RetryLater):
        perform(flaky, operation, owner="t2")
    record = record_of(runtime, operation)
    assert record["state"] == "in_doubt"
    assert perform(flaky, operation, owner="t3") is Outcome.SUCCEEDED
    assert [c["action"] for c in sandbox.calls(operation.crm_event_id)] == ["get", "cancel"]
