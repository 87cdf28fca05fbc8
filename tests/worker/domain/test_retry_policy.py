"""When an operation runs again: the back-off and the choice between a countdown and a
retry parked in Redis, as tables."""

from __future__ import annotations

import random

import pytest

from worker.domain.retry_policy import Draw, NextRun, RetryPolicy, backoff

# Base 5 s, cap 1 h; the visibility timeout is 90 s, so waits of 30 s or more are parked.
POLICY = RetryPolicy(base_seconds=5.0, cap_seconds=3600.0, countdown_limit_seconds=30.0)


def highest(low: float, high: float) -> float:
    """The jitter at its ceiling, so the table shows the largest wait of each row."""
    return high


def lowest(low: float, high: float) -> float:
    return low


@pytest.mark.parametrize("attempts", [1, 2, 5, 10, 40])
def test_backoff_is_full_jitter_under_an_exponential_ceiling(attempts: int) -> None:
    ceiling = min(3600.0, 5.0 * 2 ** (attempts - 1))
    delays = [backoff(attempts, base=5.0, cap=3600.0) for _ in range(500)]
    assert all(0 <= delay <= ceiling for delay in delays)
    assert max(delays) > ceiling / 2  # spread over the range, not pinned to it
    assert min(delays) < ceiling / 2


@pytest.mark.parametrize(
    ("attempts", "held_for", "retry_after", "draw", "expected"),
    [
        # A failure backs off exponentially: 5 s, 10 s, 20 s wait as countdowns...
        (1, None, None, highest, NextRun(5.0, parked=False)),
        (3, None, None, highest, NextRun(20.0, parked=False)),
        # ...40 s is past a third of the visibility timeout: parked in Redis.
        (4, None, None, highest, NextRun(40.0, parked=True)),
        (30, None, None, highest, NextRun(3600.0, parked=True)),  # capped at an hour
        # Full jitter may draw a short wait even late in the series.
        (30, None, None, lowest, NextRun(0.0, parked=False)),
        # Never sooner than the server's Retry-After.
        (1, None, 12.0, lowest, NextRun(12.0, parked=False)),
        (1, None, 45.0, highest, NextRun(45.0, parked=True)),
        (4, None, 3.0, highest, NextRun(40.0, parked=True)),
        # Held back by the shared limits: their own time plus up to a second of spread,
        # whatever the attempts so far; a Retry-After is the limits' business then.
        (7, 2.0, None, lowest, NextRun(2.0, parked=False)),
        (7, 2.0, 60.0, highest, NextRun(3.0, parked=False)),
        (0, 29.5, None, highest, NextRun(30.5, parked=True)),
        (0, 120.0, None, lowest, NextRun(120.0, parked=True)),
    ],
)
def test_next_run(
    attempts: int,
    held_for: float | None,
    retry_after: float | None,
    draw: Draw,
    expected: NextRun,
) -> None:
    next_run = POLICY.next_run(attempts, held_for=held_for, retry_after=retry_after, draw=draw)
    assert next_run == expected


def test_next_run_draws_its_jitter_at_random_by_default() -> None:
    random.seed(7)
    waits = {POLICY.next_run(6).delay for _ in range(50)}
    assert len(waits) > 40
    assert all(0 <= wait <= 160 for wait in waits)
