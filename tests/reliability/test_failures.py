"""Every requested effect happens once, through redeliveries, kills, restarts and bad minutes.

Each scenario prints the figures it asserts: calls per event, second effects, lost events.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.conftest import random_event_id
from tests.reliability.conftest import Stack, cancels_per_event, second_effects

Report = Callable[[str], None]


def test_thousand_events_delivered_three_times_concurrently(stack: Stack, report: Report) -> None:
    stack.start_worker(concurrency=32)
    events = [random_event_id() for _ in range(1000)]
    statuses = stack.post_outbound("cancel", events, deliveries=3)
    assert set(statuses) == {200}
    stack.wait_until(lambda: len(stack.sandbox.calls(action="cancel")) >= 1000)
    stack.wait_until(stack.drained)
    calls = cancels_per_event(stack.sandbox, events, "cancel")
    total = sum(calls.values())
    lost = sum(1 for n in calls.values() if n == 0)
    report(
        f"1000 events x 3 deliveries: {total} cancel calls, max {max(calls.values())} per "
        f"event, {lost} lost, {second_effects(stack.sandbox, 'cancel')} second cancels"
    )
    assert total == 1000
    assert lost == 0
    assert set(calls.values()) == {1}


def test_workers_killed_mid_call_cancel_each_meeting_once(stack: Stack, report: Report) -> None:
    stack.sandbox.set_faults(delay_seconds=0.3)  # slow answers: kills land mid-call
    events = [random_event_id() for _ in range(300)]
    stack.start_worker(concurrency=16)
    assert set(stack.post_outbound("cancel", events)) == {200}
    kills = 0
    for _ in range(3):
        time.sleep(1.5)
        kills += stack.kill_workers()
        stack.start_worker(concurrency=16)
    stack.sandbox.set_faults()
    store = stack.store()
    stack.wait_until(
        lambda: all(stack.sandbox.state.meetings.get(e) == "CANCELLED" for e in events),
        timeout=180,
    )
    stack.wait_until(stack.drained, timeout=60)
    calls = cancels_per_event(stack.sandbox, events, "cancel")
    records = [r for e in events for r in store.records.for_event(e)]
    reconciled = sum(1 for r in records if r.get("result", {}).get("reconciled"))
    gets = len(stack.sandbox.calls(action="get"))
    seconds = second_effects(stack.sandbox, "cancel")
    not_done = sum(1 for r in records if r["state"] != "succeeded")
    report(
        f"300 slow cancels, {kills} SIGKILLs: {sum(calls.values())} cancel calls, "
        f"{seconds} second cancels, {reconciled} in-doubt keys reconciled via {gets} crm-get, "
        f"{not_done} not succeeded"
    )
    assert kills == 3
    assert seconds == 0
    assert set(calls.values()) == {1}
    assert not_done == 0
    assert reconciled >= 1, "no kill landed mid-call: the scenario did not test reconciliation"


def test_bad_minutes_of_503_and_429_end_with_every_event_once(stack: Stack, report: Report) -> None:
    stack.sandbox.set_faults(rates={"503": 0.3, "429": 0.1}, retry_after=1)
    stack.start_worker(concurrency=32)
    events = [random_event_id() for _ in range(200)]
    assert set(stack.post_outbound("noshow", events)) == {200}
    stack.wait_until(
        lambda: all(stack.sandbox.state.meetings.get(e) == "NO_SHOW" for e in events),
        timeout=180,
    )
    stack.wait_until(stack.drained, timeout=60)
    calls = cancels_per_event(stack.sandbox, events, "noshow")
    served = dict(stack.sandbox.state.faults_served)
    report(
        f"200 no-shows with 30% 503 / 10% 429: faults served {served}, "
        f"{sum(calls.values())} no-show calls, max {max(calls.values())} per event, "
        f"{sum(1 for n in calls.values() if n == 0)} lost"
    )
    assert served.get(503, 0) > 0
    assert served.get(429, 0) > 0
    assert set(calls.values()) == {1}
    assert second_effects(stack.sandbox, "noshow") == 0


def test_no_meeting_linked_is_one_call_and_a_dead_letter(stack: Stack, report: Report) -> None:
    stack.start_worker(concurrency=4)
    event = random_event_id("00V")  # the sandbox links no meeting to 00V events
    assert stack.post_outbound("cancel", [event]) == [200]
    store = stack.store()
    [record] = stack.wait_until(
        lambda: [r for r in store.records.for_event(event) if r["state"] == "failed"]
    )
    time.sleep(2)  # long enough for any retry (base 0.2 s) to have happened
    calls = len(stack.sandbox.calls(event))
    report(
        f"no meeting linked: {calls} call, state {record['state']}, "
        f"dead letter {record['key'] in [key for key, _ in store.dead_letters.since()]}"
    )
    assert calls == 1
    assert record["attempts"] == "1"
    assert "No meeting linked" in record["last_error"]
    assert record["key"] in [key for key, _ in store.dead_letters.since()]


def test_redis_restart_with_500_tasks_queued_loses_nothing(stack: Stack, report: Report) -> None:
    stack.sandbox.set_faults(delay_seconds=0.05)
    events = [random_event_id() for _ in range(500)]
    assert set(stack.post_outbound("cancel", events)) == {200}  # queued before any worker
    stack.start_worker(concurrency=8)
    stack.wait_until(lambda: len(stack.sandbox.calls(action="cancel")) >= 30)
    done_before = len(stack.sandbox.calls(action="cancel"))
    stack.redis_server.stop()  # SIGTERM: Redis writes its append-only file and exits
    time.sleep(2)
    stack.redis_server.start()
    stack.wait_until(
        lambda: all(stack.sandbox.state.meetings.get(e) == "CANCELLED" for e in events),
        timeout=240,
    )
    stack.sandbox.set_faults()
    stack.wait_until(stack.drained, timeout=60)
    calls = cancels_per_event(stack.sandbox, events, "cancel")
    lost = sum(1 for n in calls.values() if n == 0)
    report(
        f"500 queued cancels, Redis restarted after {done_before}: {sum(calls.values())} "
        f"cancel calls, {lost} lost, {second_effects(stack.sandbox, 'cancel')} second "
        "cancels"
    )
    assert lost == 0
    assert set(calls.values()) == {1}


def test_long_retry_after_waits_in_redis_not_in_the_broker(stack: Stack, report: Report) -> None:
    """A retry due later than the countdown limit (visibility / 3, about 5 s) is parked in
    Redis by due time and re-enqueued by a worker's dispatcher when due."""
    stack.start_worker(concurrency=4)
    event = random_event_id()
    # Two 503s exhaust one run's in-call attempts; Retry-After 8 s then exceeds the limit.
    stack.sandbox.set_faults(fail_next=2, status=503, retry_after=8)
    assert stack.post_outbound("cancel", [event]) == [200]
    client = stack.redis()
    parked = stack.wait_until(lambda: client.zcard("crmhook:scheduled"), timeout=30)
    started = time.monotonic()
    stack.wait_until(lambda: stack.sandbox.calls(event, action="cancel"), timeout=60)
    waited = time.monotonic() - started
    stack.wait_until(stack.drained, timeout=30)
    report(
        f"Retry-After 8 s: {parked} retry parked in Redis, ran {waited:.1f} s later, "
        f"{len(stack.sandbox.calls(event, action='cancel'))} cancel call"
    )
    assert len(stack.sandbox.calls(event, action="cancel")) == 1
    assert waited >= 5
    client.close()
