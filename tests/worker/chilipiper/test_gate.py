"""The shared gate toward ChiliPiper, on a real Redis: pacing, pause, circuit."""

from __future__ import annotations

import time

import pytest
import redis

from worker.chilipiper.gate import Gate, GateSettings
from worker.errors import DeferredError, InDoubtError, RetryableError


def gate(client: redis.Redis, rate: float = 1000, threshold: int = 3) -> Gate:
    return Gate(
        client,
        GateSettings(
            rate_per_second=rate,
            max_block_seconds=1.0,
            failure_threshold=threshold,
            cooldown_seconds=0.5,
            trial_seconds=0.5,
        ),
    )


def test_requests_are_paced_at_the_rate(idle_redis: redis.Redis) -> None:
    paced = gate(idle_redis, rate=20)
    started = time.monotonic()
    for _ in range(21):
        paced.enter()
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed <= 1.4  # 20 intervals of 50 ms after the first request


def test_a_request_further_than_a_second_away_is_deferred(idle_redis: redis.Redis) -> None:
    slow = gate(idle_redis, rate=0.5)
    slow.enter()
    with pytest.raises(DeferredError, match="rate limit") as deferred:
        slow.enter()  # the next slot is two seconds away: held back, not holding the thread
    assert 1.5 < deferred.value.retry_after <= 2.0


def test_a_429_pauses_every_caller_until_retry_after(idle_redis: redis.Redis) -> None:
    first, other = gate(idle_redis), gate(idle_redis)  # two workers
    first.failed(RetryableError("HTTP 429", status=429, retry_after=2))
    with pytest.raises(DeferredError, match="paused") as deferred:
        other.enter()
    assert 1.5 < deferred.value.retry_after <= 2.0
    assert 1.5 < other.deferral() <= 2.0


def test_the_circuit_opens_after_consecutive_failures_then_one_trial_decides(
    idle_redis: redis.Redis,
) -> None:
    breaker, other = gate(idle_redis), gate(idle_redis)
    for _ in range(2):
        breaker.failed(RetryableError("HTTP 503", status=503))
    breaker.succeeded()  # not consecutive: starts again
    for _ in range(3):
        breaker.failed(InDoubtError("timeout"))
    with pytest.raises(DeferredError, match="circuit open"):
        other.enter()
    assert other.deferral() > 0
    time.sleep(0.55)
    breaker.enter()  # the trial call
    with pytest.raises(DeferredError, match="circuit half-open"):
        other.enter()  # only one trial at a time
    breaker.failed(RetryableError("HTTP 503", status=503))  # the trial failed: open again
    with pytest.raises(DeferredError, match="circuit open"):
        other.enter()
    time.sleep(0.55)
    other.enter()
    other.succeeded()  # the trial succeeded: closed
    breaker.enter()
    assert breaker.deferral() == 0
