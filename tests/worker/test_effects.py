"""`perform`: claim, reconcile, call, settle; on a real Redis and the sandbox over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import IDLE_DB, SandboxServer, db_url, make_settings, random_event_id
from worker.effects import Outcome, RetryLater, perform
from worker.errors import InDoubtError, RetryableError
from worker.operations import Action, Operation
from worker.redis_server import RedisServer
from worker.runtime import Runtime, build_runtime
from worker.store import Verdict


@pytest.fixture
def runtime(redis_server: RedisServer, sandbox: SandboxServer) -> Iterator[Runtime]:
    settings = make_settings(
        db_url(redis_server, IDLE_DB), sandbox.url, chilipiper_timeout_seconds=1.0
    )
    runtime = build_runtime(settings)
    yield runtime
    runtime.redis.close()


def cancel() -> Operation:
    return Operation(Action.CANCEL, random_event_id(), random_event_id("04l"))


def test_cancel_is_called_once_and_recorded(runtime: Runtime, sandbox: SandboxServer) -> None:
    operation = cancel()
    assert perform(runtime, operation, owner="t1", last_try=False) is Outcome.SUCCEEDED
    assert perform(runtime, operation, owner="t2", last_try=False) is Outcome.ALREADY_DONE
    assert len(sandbox.calls(operation.crm_event_id, "crm-cancel")) == 1
    record = runtime.store.record(operation.key)
    assert record is not None
    assert record["state"] == "succeeded"
    assert record["result"]["data"]["status"] == "CANCELLED"


def test_get_result_is_kept_with_the_key(runtime: Runtime) -> None:
    operation = Operation(Action.GET, random_event_id(), random_event_id("04l"))
    assert perform(runtime, operation, owner="t1", last_try=False) is Outcome.SUCCEEDED
    record = runtime.store.record(operation.key)
    assert record is not None
    assert record["result"]["data"] == {"crmEventId": operation.crm_event_id, "status": "BOOKED"}


def test_a_live_claim_elsewhere_means_busy_and_no_call(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    runtime.store.claim(operation, "other-worker", lease_seconds=60)
    assert perform(runtime, operation, owner="t1", last_try=False) is Outcome.BUSY
    assert sandbox.calls(operation.crm_event_id) == []


def test_interrupted_cancel_that_took_effect_is_reconciled_without_a_second_call(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    runtime.store.claim(operation, "killed-worker", lease_seconds=0)  # died mid-call...
    with sandbox.state.lock:
        sandbox.state.meetings[operation.crm_event_id] = "CANCELLED"  # ...after ChiliPiper acted
    time.sleep(0.01)
    assert perform(runtime, operation, owner="t2", last_try=False) is Outcome.RECONCILED
    assert [c["tool"] for c in sandbox.calls(operation.crm_event_id)] == ["crm-get"]
    record = runtime.store.record(operation.key)
    assert record is not None
    assert (record["state"], record["result"]["reconciled"]) == ("succeeded", True)


def test_interrupted_cancel_that_did_not_take_effect_is_sent(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    runtime.store.claim(operation, "killed-worker", lease_seconds=0)
    time.sleep(0.01)
    assert perform(runtime, operation, owner="t2", last_try=False) is Outcome.SUCCEEDED
    assert [c["tool"] for c in sandbox.calls(operation.crm_event_id)] == ["crm-get", "crm-cancel"]


def test_timeout_makes_the_key_in_doubt_and_the_retry_reconciles(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    runtime.gateway.call("crm-get", operation.crm_event_id)  # session open, meeting booked
    sandbox.set_faults(delay_seconds=1.5)
    with pytest.raises(RetryLater) as later:
        perform(runtime, operation, owner="t1", last_try=False)
    assert isinstance(later.value.error, InDoubtError)
    record = runtime.store.record(operation.key)
    assert record is not None
    assert record["state"] == "in_doubt"
    sandbox.set_faults()
    time.sleep(0.7)  # the slow cancel lands on the server after all
    assert perform(runtime, operation, owner="t1", last_try=False) is Outcome.RECONCILED
    assert len(sandbox.calls(operation.crm_event_id, "crm-cancel")) == 1


def test_permanent_error_fails_at_once(runtime: Runtime, sandbox: SandboxServer) -> None:
    operation = Operation(Action.NOSHOW, random_event_id("00V"), "04l")  # no meeting linked
    assert perform(runtime, operation, owner="t1", last_try=False) is Outcome.FAILED
    record = runtime.store.record(operation.key)
    assert record is not None
    assert record["state"] == "failed"
    assert "No meeting linked" in record["last_error"]
    assert len(sandbox.calls(operation.crm_event_id)) == 1


def test_transient_error_asks_for_a_retry_until_the_last_try(
    runtime: Runtime, sandbox: SandboxServer
) -> None:
    operation = cancel()
    sandbox.set_faults(fail_next=1000, status=503)
    with pytest.raises(RetryLater) as later:
        perform(runtime, operation, owner="t1", last_try=False)
    assert isinstance(later.value.error, RetryableError)
    claim = runtime.store.claim(operation, "probe", lease_seconds=0)
    assert (claim.verdict, claim.previous_state) == (Verdict.CLAIMED, "retrying")
    time.sleep(0.01)
    assert perform(runtime, operation, owner="t1", last_try=True) is Outcome.FAILED
