"""The limits toward ChiliPiper hold across worker processes: one rate, one pause."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.conftest import TOKEN, random_event_id
from tests.reliability.conftest import Stack

Report = Callable[[str], None]


def post_gets(stack: Stack, count: int) -> None:
    """`count` crm-get operations through the JSON route, 100 per request."""
    with httpx.Client(timeout=30) as client:
        for start in range(0, count, 100):
            events = [
                {"action": "get", "crmEventId": random_event_id()}
                for _ in range(min(100, count - start))
            ]
            response = client.post(
                f"{stack.url}/v1/events",
                json={"events": events},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.status_code == 202


def test_two_workers_share_one_rate_limit(stack: Stack, report: Report) -> None:
    limit, window = 10.0, 20.0
    post_gets(stack, 400)  # more than the window can take: the queue never runs dry
    for _ in range(2):
        stack.start_worker(concurrency=8, chilipiper_rate_limit=f"{limit:g}/s")
    first = stack.wait_until(lambda: stack.sandbox.calls(tool="crm-get"), timeout=60)[0]["at"]
    start = first + 1.0  # past the start-up burst of one interval
    time.sleep(max(0.0, start + window - time.time()) + 0.5)
    calls = [c["at"] for c in stack.sandbox.calls(tool="crm-get")]
    achieved = sum(1 for at in calls if start <= at < start + window) / window
    report(
        f"rate limit {limit:g}/s, 2 worker processes x 8 threads: {achieved:.2f} calls/s "
        f"over {window:g} s ({(achieved / limit - 1) * 100:+.1f} %)"
    )
    assert abs(achieved - limit) <= 0.1 * limit


def test_one_429_pauses_every_worker(stack: Stack, report: Report) -> None:
    post_gets(stack, 300)
    for _ in range(2):
        stack.start_worker(concurrency=8, chilipiper_rate_limit="20/s")
    stack.wait_until(lambda: len(stack.sandbox.calls(tool="crm-get")) >= 20, timeout=60)
    stack.sandbox.set_faults(fail_next=1, status=429, retry_after=3)
    stack.wait_until(lambda: stack.sandbox.state.fault_times, timeout=30)
    paused_at = stack.sandbox.state.fault_times[0]
    time.sleep(4.5)
    after = [
        c["at"] - paused_at for c in stack.sandbox.calls(tool="crm-get") if c["at"] > paused_at
    ]
    # Requests that had passed the gate before the 429 came back still land, within the
    # time one request takes; after that, nothing until Retry-After has passed.
    in_flight = [t for t in after if t < 0.5]
    during = [t for t in after if 0.5 <= t < 2.9]
    resumed = min((t for t in after if t >= 2.9), default=float("inf"))
    report(
        f"one 429 with Retry-After 3 s: {len(in_flight)} call(s) already in flight, "
        f"{len(during)} during the pause, calls resumed {resumed:.2f} s after"
    )
    assert during == []
    assert len(in_flight) <= 4
    assert resumed < 4.5
