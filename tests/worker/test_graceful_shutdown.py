"""SIGTERM to a worker (the Procfile's line, a real process): calls in flight finish and
settle, nothing new leaves, what was queued stays queued, and past the grace period the
worker exits with what it holds left unacknowledged for another worker."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import SandboxServer, make_settings, random_event_id, start_worker, wait_for
from worker.dev.redis_server import RedisServer
from worker.domain.operations import Action, Operation
from worker.settings import Settings
from worker.store import keys
from worker.store.connection import redis_client
from worker.tasks.app import QUEUE, make_celery
from worker.tasks.publish import publish
from worker.tasks.shutdown import EXIT_GRACE_OVER

pytestmark = pytest.mark.slow
IN_FLIGHT = 10  # the worker's concurrency: one call per thread
CALL_SECONDS = 3.0
SHUTDOWN_GRACE = "WORKER_SHUTDOWN_GRACE_SECONDS"
SLOW_CALLS = {"CHILIPIPER_TIMEOUT_SECONDS": "15"}  # the tests' settings time out sooner


@pytest.fixture
def settings(own_redis: RedisServer, sandbox: SandboxServer) -> Settings:  # type: ignore[override]
    return make_settings(own_redis.url, sandbox.url)


def cancels(count: int) -> list[Operation]:
    return [Operation(Action.CANCEL, random_event_id(), f"test:{i}") for i in range(count)]


def state_of(client: redis.Redis, operation: Operation) -> str | None:
    state = client.hget(keys.operation(operation), "state")
    return str(state) if state else None


def finish_with_another_worker(
    settings: Settings,
    tmp_path: Path,
    client: redis.Redis,
    operations: list[Operation],
    extra_env: dict[str, str] | None = None,
) -> None:
    """A second worker takes what the first handed back, until every operation succeeded."""
    second = start_worker(settings, tmp_path / "second.log", IN_FLIGHT, extra_env=extra_env)
    try:
        wait_for(lambda: all(state_of(client, op) == "succeeded" for op in operations), 60)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)


def test_sigterm_lets_calls_in_flight_finish_and_hands_the_queued_ones_to_the_next_worker(
    settings: Settings, sandbox: SandboxServer, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    first = start_worker(
        settings, log, concurrency=IN_FLIGHT, extra_env={**SLOW_CALLS, SHUTDOWN_GRACE: "20"}
    )
    operations = cancels(2 * IN_FLIGHT)
    client = redis_client(settings.redis_url)
    try:
        sandbox.set_faults(delay_seconds=CALL_SECONDS)  # every MCP request takes that long
        publish(make_celery(settings), operations)
        wait_for(lambda: sandbox.state.in_flight >= IN_FLIGHT, timeout=20)
        stopped_at = time.monotonic()
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, log.read_text()[-3000:]
        took = time.monotonic() - stopped_at
        # The calls in flight were answered and settled: none is in doubt.
        called = {call["crmEventId"] for call in sandbox.calls(action="cancel") if call["ok"]}
        done = [op for op in operations if op.crm_event_id in called]
        assert len(done) == IN_FLIGHT, log.read_text()[-3000:]
        assert all(state_of(client, op) == "succeeded" for op in done)
        assert took < CALL_SECONDS + 5
        # The rest never started a call, and their messages wait in the queue.
        waiting = [op for op in operations if op.crm_event_id not in called]
        assert all(state_of(client, op) in (None, "queued") for op in waiting)
        assert client.llen(QUEUE) + client.hlen("unacked") >= len(waiting)

        sandbox.set_faults()
        finish_with_another_worker(settings, tmp_path, client, operations)
    finally:
        if first.poll() is None:
            first.kill()
        client.close()
    for operation in operations:  # each exactly once, and no reconciliation was needed
        assert len(sandbox.calls(operation.crm_event_id, action="cancel")) == 1
        assert sandbox.calls(operation.crm_event_id, action="get") == []
    assert "warm shutdown" in log.read_text()


def test_past_the_grace_period_the_worker_exits_leaving_its_calls_unacknowledged(
    settings: Settings, sandbox: SandboxServer, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    worker = start_worker(
        settings, log, concurrency=4, extra_env={**SLOW_CALLS, SHUTDOWN_GRACE: "1"}
    )
    client = redis_client(settings.redis_url)
    try:
        sandbox.set_faults(delay_seconds=8.0)
        publish(make_celery(settings), cancels(4))
        wait_for(lambda: sandbox.state.in_flight >= 4, timeout=20)
        stopped_at = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == EXIT_GRACE_OVER, log.read_text()[-3000:]
        assert time.monotonic() - stopped_at < 5
        # Still the broker's, for redelivery after the visibility timeout: nothing lost.
        assert client.hlen("unacked") == 4
        assert "grace period over with 4 task(s) still running" in log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
        sandbox.set_faults()
        client.close()


def test_after_sigterm_no_new_irreversible_call_leaves_even_when_a_slot_comes_free(
    settings: Settings, sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Cancels queue for a 5/s rate limit, five at a time waiting in the gate for their slot
    (a second at most; the rest come back later). After SIGTERM a slot that comes free sends
    nothing: the task gives its claim and its message back, and the next worker sends it,
    once."""
    log = tmp_path / "worker.log"
    limited = {"CHILIPIPER_RATE_LIMIT": "5/s", SHUTDOWN_GRACE: "20"}
    worker = start_worker(settings, log, concurrency=IN_FLIGHT, extra_env=limited)
    operations = cancels(IN_FLIGHT)
    client = redis_client(settings.redis_url)
    try:
        publish(make_celery(settings), operations)
        wait_for(lambda: len(sandbox.calls(action="cancel")) >= 3, timeout=20)
        stopped_at = time.time()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()[-3000:]
        # A request that passed its last check as the signal came may still arrive just after.
        late = [call for call in sandbox.calls(action="cancel") if call["at"] > stopped_at + 0.1]
        assert late == [], log.read_text()[-3000:]
        finish_with_another_worker(settings, tmp_path, client, operations, limited)
    finally:
        if worker.poll() is None:
            worker.kill()
        client.close()
    for operation in operations:
        assert len(sandbox.calls(operation.crm_event_id, action="cancel")) == 1
