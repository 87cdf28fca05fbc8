"""RabbitMQ as the broker (quorum queues), the store on Redis: every effect still happens once.

A private RabbitMQ node (tests/ha/rabbitmq.py), shared by the module's tests; each test has
its own Redis for the store, the web app on loopback and real worker processes started from
the Procfile's line with `CELERY_BROKER_URL=amqp://…`. RabbitMQ cannot come from pip: where
`rabbitmq-server` is not installed these tests skip and say so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import SandboxServer, make_settings, random_event_id, serve
from tests.ha.rabbitmq import NOT_INSTALLED, RabbitNode, rabbitmq_installed
from tests.reliability.conftest import FAST, Stack, cancels_per_event
from webhooks import create_app
from worker.dev.redis_server import RedisServer
from worker.domain.operations import UNSETTLED
from worker.store import keys
from worker.store.connection import text
from worker.tasks.app import QUEUE

pytestmark = pytest.mark.reliability

Report = Callable[[str], None]


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitNode]:
    if not rabbitmq_installed():
        pytest.skip(NOT_INSTALLED)
    with RabbitNode() as node:
        yield node


@pytest.fixture
def amqp_stack(
    rabbit: RabbitNode, own_redis: RedisServer, sandbox: SandboxServer, tmp_path: Path
) -> Iterator[Stack]:
    """The reliability tests' Stack, with RabbitMQ as its broker: the edge publishes to the
    node, `stack.start_worker()` starts workers consuming from it, the store is `own_redis`."""
    settings = make_settings(own_redis.url, sandbox.url, celery_broker_url=rabbit.url, **FAST)
    assert settings.broker_is_amqp
    web = serve(create_app(settings))
    stack = Stack(own_redis, sandbox, settings, web, tmp_path)
    try:
        yield stack
    finally:
        stack.close()


def start_amqp_worker(stack: Stack, rabbit: RabbitNode, concurrency: int) -> None:
    stack.start_worker(concurrency=concurrency, celery_broker_url=rabbit.url, log_format="json")


def store_idle(stack: Stack) -> bool:
    """Nothing unsettled pending, nothing parked or unpublished in the store. (The pending
    index may still name a settled operation, stamped by a late copy of its fan-out; the
    sweeper drops such entries when it meets them.)"""
    client = stack.redis()
    try:
        states = [client.hget(key, "state") for key in client.zrange(keys.PENDING, 0, -1)]
        return (
            not any(state is not None and text(state) in UNSETTLED for state in states)
            and client.zcard(keys.SCHEDULE) == 0
            and client.zcard(keys.INGESTS) == 0
        )
    finally:
        client.close()


def broker_idle(rabbit: RabbitNode) -> bool:
    """The task queue holds no message, ready or unacknowledged."""
    queue = rabbit.queues().get(QUEUE)
    return queue is not None and queue.messages == 0


def broker_etas(stack: Stack) -> list[str]:
    """ETAs of the task messages the workers received (Celery logs each one): a retry
    held by the broker as a countdown would carry one."""
    etas = []
    for log in stack.log_dir.glob("worker-*.log"):
        for line in log.read_text().splitlines():
            if '"eta"' in line:
                eta = json.loads(line).get("data", {}).get("eta")
                if eta is not None:
                    etas.append(eta)
    return etas


def test_worker_killed_mid_call_on_quorum_queues_cancels_each_meeting_once(
    amqp_stack: Stack, rabbit: RabbitNode, report: Report
) -> None:
    """SIGKILL closes the worker's connection, so RabbitMQ hands its unacknowledged
    messages to the next worker at once; the claims in Redis make those copies wait for
    the abandoned calls to settle and ask crm-get before anything is sent again."""
    stack = amqp_stack
    stack.sandbox.set_faults(delay_seconds=0.3)  # slow answers: the kill lands mid-call
    events = [random_event_id() for _ in range(80)]
    start_amqp_worker(stack, rabbit, concurrency=16)
    assert set(stack.post_outbound("cancel", events)) == {200}
    mine = set(events)

    def cancels() -> int:
        return sum(1 for c in stack.sandbox.calls(action="cancel") if c["crmEventId"] in mine)

    stack.wait_until(lambda: cancels() >= 16, timeout=30)
    in_flight = stack.sandbox.state.in_flight
    assert stack.kill_workers() == 1
    killed_at, done_at_kill = time.monotonic(), cancels()
    start_amqp_worker(stack, rabbit, concurrency=16)
    client = stack.redis()
    parked = 0

    def all_cancelled() -> bool:
        nonlocal parked
        parked = max(parked, int(client.zcard(keys.SCHEDULE)))
        return all(stack.sandbox.state.meetings.get(e) == "CANCELLED" for e in events)

    stack.wait_until(all_cancelled, timeout=120)
    finished = time.monotonic() - killed_at
    stack.sandbox.set_faults()
    stack.wait_until(lambda: store_idle(stack) and broker_idle(rabbit), timeout=60)
    client.close()

    calls = cancels_per_event(stack.sandbox, events, "cancel")
    mine_calls = [c for e in events for c in stack.sandbox.calls(e)]
    seconds = sum(1 for c in mine_calls if c["action"] == "cancel" and c["before"] != "BOOKED")
    gets = sum(1 for c in mine_calls if c["action"] == "get")
    store = stack.store()
    records = [r for e in events for r in store.records.for_event(e)]
    reconciled = sum(1 for r in records if r.get("result", {}).get("reconciled"))
    not_done = sum(1 for r in records if r["state"] != "succeeded")
    queue = rabbit.queues()[QUEUE]
    report(
        f"RabbitMQ quorum queue, 80 slow cancels, SIGKILL with {in_flight} calls in flight "
        f"after {done_at_kill} cancels: {sum(calls.values())} cancel calls, max "
        f"{max(calls.values())} per event, {sum(1 for n in calls.values() if n == 0)} lost, "
        f"{seconds} second cancels; {gets} crm-get reconciliations, {reconciled} found "
        f"already cancelled; up to {parked} retries parked in Redis; all done "
        f"{finished:.1f} s after the kill; queue {queue.name!r} type {queue.type}"
    )
    assert queue.type == "quorum"
    assert set(calls.values()) == {1}
    assert seconds == 0
    assert not_done == 0
    assert len(records) == len(events)
    assert gets >= 1, "no kill landed mid-call: the scenario did not test reconciliation"
    assert broker_etas(stack) == [], "a retry waited in the broker as a countdown"


def test_retry_on_amqp_waits_in_the_store_not_in_the_broker(
    amqp_stack: Stack, rabbit: RabbitNode, report: Report
) -> None:
    """A retry due in 1 s, which on a Redis broker would be a Celery countdown (the limit
    is visibility / 3, about 5 s), is parked in the store's schedule on RabbitMQ."""
    stack = amqp_stack
    start_amqp_worker(stack, rabbit, concurrency=4)
    event = random_event_id()
    # Two 503s exhaust one run's in-call attempts; Retry-After 1 s sets the retry's delay.
    stack.sandbox.set_faults(fail_next=2, status=503, retry_after=1)
    assert stack.post_outbound("cancel", [event]) == [200]
    client = stack.redis()
    parked = stack.wait_until(lambda: client.zcard(keys.SCHEDULE), timeout=30)
    stack.wait_until(lambda: stack.sandbox.calls(event, action="cancel"), timeout=30)
    stack.wait_until(lambda: store_idle(stack) and broker_idle(rabbit), timeout=30)
    client.close()
    queues = rabbit.queues()
    delayed = sorted(name for name in queues if name.startswith("celery_delayed"))
    report(
        f"RabbitMQ, Retry-After 1 s: {parked} retry parked in Redis, "
        f"{len(stack.sandbox.calls(event, action='cancel'))} cancel call, broker ETAs "
        f"{broker_etas(stack)}, queues {sorted(queues)}"
    )
    assert parked == 1
    assert len(stack.sandbox.calls(event, action="cancel")) == 1
    assert broker_etas(stack) == []
    assert queues[QUEUE].type == "quorum"
    assert delayed == [], "the worker declared native delayed delivery's queues"


def test_broker_in_a_memory_alarm_gets_a_503_in_seconds_and_the_resend_acts_once(
    amqp_stack: Stack, rabbit: RabbitNode, report: Report
) -> None:
    """In a memory (or disk) alarm RabbitMQ stops reading from publishers and no confirm
    comes; the edge must answer 503 within seconds rather than hold Salesforce's request.
    The copies it had written still land once the alarm clears; with Salesforce's resend
    they make one cancel call."""
    stack = amqp_stack
    event = random_event_id()
    rabbit.set_memory_alarm(True)
    try:
        started = time.monotonic()
        during = stack.post_outbound("cancel", [event])
        answered_in = time.monotonic() - started
    finally:
        rabbit.set_memory_alarm(False)
    start_amqp_worker(stack, rabbit, concurrency=4)
    after = stack.post_outbound("cancel", [event])  # Salesforce sends again after a 503
    stack.wait_until(lambda: stack.sandbox.calls(event, action="cancel"), timeout=30)
    stack.wait_until(lambda: store_idle(stack) and broker_idle(rabbit), timeout=30)
    calls = len(stack.sandbox.calls(event, action="cancel"))
    fan_outs = sum(
        log.read_text().count("crmhook.fan_out[") // 2 for log in stack.log_dir.glob("worker-*.log")
    )
    client = stack.redis()
    settled_in_index = client.zcard(keys.PENDING)
    client.close()
    report(
        f"RabbitMQ memory alarm: the edge answered {during} in {answered_in:.1f} s; after it "
        f"cleared, the resend got {after}, {fan_outs} fan-out runs, {calls} cancel call "
        f"({settled_in_index} settled operation left in the pending index for the sweeper)"
    )
    assert during == [503]
    assert answered_in < 20
    assert after == [200]
    assert calls == 1
