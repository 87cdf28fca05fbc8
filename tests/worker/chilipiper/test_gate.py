"""The shared gate toward ChiliPiper, on a real Redis: the learnt rate, the pause, the circuit.

Rounds are shortened (tens of milliseconds) so that the limiter's decisions show in a test;
the decisions themselves are the production scripts'.
"""

from __future__ import annotations

import time

import pytest
import redis

from worker.chilipiper.breaker import BreakerSettings, CircuitBreaker
from worker.chilipiper.gate import Gate, GateSettings
from worker.chilipiper.limiter import AdaptiveLimiter, Answer, LimiterPolicy, Reservation
from worker.errors import DeferredError, InDoubtError, RetryableError
from worker.store import keys

# Long enough that a round's reservations and answers (a hundred Redis round trips) fit in it
# on a busy machine, short enough to run many rounds.
ROUND = 0.15
QUICK = LimiterPolicy(fast_start_round=ROUND, round=ROUND)


def gate(client: redis.Redis, ceiling: float | None = None, window: int = 10) -> Gate:
    return Gate(
        client,
        GateSettings(
            ceiling_per_second=ceiling,
            max_block_seconds=1.0,
            breaker=BreakerSettings(
                window_calls=window, cooldown_seconds=0.5, trial_calls=2, trial_seconds=0.5
            ),
            limiter=QUICK,
        ),
    )


def limiter(client: redis.Redis, ceiling: float | None = None, **policy: float) -> AdaptiveLimiter:
    return AdaptiveLimiter(client, ceiling, LimiterPolicy(**{**QUICK.__dict__, **policy}))


def a_round(limiter: AdaptiveLimiter, answers: list[Answer], sent: int) -> tuple[str, float]:
    """One round as the limiter sees it: `sent` reservations, then `answers`, the last one
    after the round's time is up. Returns the decision that closed it."""
    for _ in range(sent):
        limiter.reserve(max_block_seconds=3600)
    for answer in answers[:-1]:
        assert limiter.record(answer)[0] == "open"
    time.sleep(ROUND + 0.01)
    return limiter.record(answers[-1])


def stored(client: redis.Redis, field: str) -> float:
    return float(client.hget(keys.GATE_LIMITER, field) or 0)


# --- pacing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ceiling", [20.0, 30.0, 3.0])
def test_calls_are_paced_at_the_ceiling_whatever_its_interval(
    idle_redis: redis.Redis, ceiling: float
) -> None:
    """30/s and 3/s have intervals that are no whole number of milliseconds (the old limiter
    handed Redis a fractional PX and every call failed)."""
    paced = limiter(idle_redis, ceiling=ceiling, initial_rate=1000)
    calls = int(ceiling)
    started = time.monotonic()
    for _ in range(calls + 1):
        slot = paced.reserve(max_block_seconds=5)
        assert slot.granted
        time.sleep(slot.wait)
    elapsed = time.monotonic() - started
    assert 0.85 <= elapsed <= 1.35  # `calls` intervals after the first call


def test_a_slot_further_than_the_block_limit_is_deferred(idle_redis: redis.Redis) -> None:
    slow = gate(idle_redis, ceiling=0.5)
    slow.enter()
    with pytest.raises(DeferredError, match="rate limit") as deferred:
        slow.enter()  # the next slot is two seconds away: held back, not holding the thread
    assert 1.5 < deferred.value.retry_after <= 2.0


# --- learning the rate ----------------------------------------------------------------------


def test_fast_start_doubles_the_rate_each_round_while_it_is_used(idle_redis: redis.Redis) -> None:
    learning = limiter(idle_redis, initial_rate=10)
    rates = [a_round(learning, [Answer.ACCEPTED], sent=100)[1] for _ in range(5)]
    assert rates == [20, 40, 80, 160, 320]


def test_a_rate_nobody_uses_does_not_grow(idle_redis: redis.Redis) -> None:
    """RFC 7661: growth only while the allowed rate is the constraint, so a quiet hour does
    not license a burst."""
    learning = limiter(idle_redis, initial_rate=100)
    decision, rate = a_round(learning, [Answer.ACCEPTED], sent=1)  # 1 call in 160 ms ≈ 6/s
    assert (decision, rate) == ("hold", 100)


def test_a_share_of_429s_cuts_the_rate_sent_and_ends_the_fast_start(
    idle_redis: redis.Redis,
) -> None:
    learning = limiter(idle_redis, initial_rate=100)
    decision, rate = a_round(
        learning, [Answer.ACCEPTED] * 6 + [Answer.LIMITED] * 4, sent=100
    )  # more calls than the rate allowed: the rate really sent was the allowed 100/s
    assert decision == "cut"
    assert 60 <= rate <= 70  # 0.7 x min(allowed, sent)
    assert stored(idle_redis, "ssthresh") == rate
    # After a cut the rate grows by one call/s per round, no longer doubling.
    decision, grown = a_round(learning, [Answer.ACCEPTED], sent=100)
    assert (decision, grown) == ("grow", pytest.approx(rate + 1))


def test_scattered_429s_are_noise(idle_redis: redis.Redis) -> None:
    learning = limiter(idle_redis, initial_rate=100)
    answers = [Answer.ACCEPTED] * 18 + [Answer.LIMITED] * 2  # 10 %: not a limit
    decision, rate = a_round(learning, answers, sent=100)
    assert (decision, rate) == ("grow", 200)


def test_too_few_429s_to_tell_neither_grow_nor_cut_until_more_answers_come(
    idle_redis: redis.Redis,
) -> None:
    learning = limiter(idle_redis, initial_rate=4)
    decision, _ = a_round(learning, [Answer.ACCEPTED, Answer.LIMITED], sent=4)  # 50 %, 1 refusal
    assert decision == "open"
    for _ in range(2):
        decision, rate = learning.record(Answer.LIMITED)
    assert decision == "cut"
    assert rate < 4


def test_the_rate_never_falls_below_the_floor_nor_rises_above_the_ceiling(
    idle_redis: redis.Redis,
) -> None:
    capped = limiter(idle_redis, ceiling=50, initial_rate=40)
    assert a_round(capped, [Answer.ACCEPTED], sent=100)[1] == 50
    for _ in range(24):  # a cut every other round (none right after one): 50 x 0.7^12 < 1
        a_round(capped, [Answer.LIMITED] * 4, sent=100)
    assert capped.rate() == 1.0


# --- the pause ------------------------------------------------------------------------------


def test_a_429_with_retry_after_pauses_every_caller(idle_redis: redis.Redis) -> None:
    first, other = gate(idle_redis), gate(idle_redis)  # two workers
    first.failed(RetryableError("HTTP 429", status=429, retry_after=2))
    with pytest.raises(DeferredError, match="paused") as deferred:
        other.enter()
    assert 1.5 < deferred.value.retry_after <= 2.0
    assert 1.5 < other.deferral() <= 2.0


# --- the circuit ----------------------------------------------------------------------------


def test_the_circuit_opens_on_a_failure_rate_over_a_full_window(idle_redis: redis.Redis) -> None:
    breaker = CircuitBreaker(idle_redis, BreakerSettings(window_calls=10, cooldown_seconds=5))
    for _ in range(9):
        assert breaker.record(failed=True) == "closed"  # 9 calls: the window is not full yet
    assert breaker.record(failed=False) == "opened"  # 9 of 10 failed
    assert not breaker.admit().allowed


def test_thirty_percent_failures_never_open_it(idle_redis: redis.Redis) -> None:
    breaker = CircuitBreaker(idle_redis, BreakerSettings(window_calls=10, cooldown_seconds=5))
    for call in range(200):
        assert breaker.record(failed=call % 10 < 3) == "closed"
    # The window slides: the last ten ended with six successes; five failures make it 5 of 10.
    states = [breaker.record(failed=True) for _ in range(5)]
    assert states == ["closed"] * 4 + ["opened"]


def test_429s_and_permanent_errors_are_not_failures_of_chilipiper(
    idle_redis: redis.Redis,
) -> None:
    shared = gate(idle_redis, window=10)
    for _ in range(20):
        shared.failed(RetryableError("HTTP 429", status=429))
    assert shared.breaker.state() == "closed"
    assert idle_redis.llen(keys.GATE_BREAKER_WINDOW) == 0


def test_after_the_cool_down_a_few_trial_calls_decide(idle_redis: redis.Redis) -> None:
    breaker, other = gate(idle_redis, window=10), gate(idle_redis, window=10)
    for _ in range(10):
        breaker.failed(InDoubtError("timeout"))
    with pytest.raises(DeferredError, match="circuit open"):
        other.enter()
    assert other.deferral() > 0
    time.sleep(0.55)
    breaker.enter()
    other.enter()  # two trial calls
    with pytest.raises(DeferredError, match="circuit half-open"):
        other.enter()
    breaker.failed(RetryableError("HTTP 503", status=503))  # a trial failed: open again
    with pytest.raises(DeferredError, match="circuit open"):
        other.enter()
    time.sleep(0.55)
    breaker.enter()
    other.enter()
    breaker.succeeded()
    assert breaker.breaker.state() == "half-open"
    other.succeeded()  # both trials succeeded: closed
    assert breaker.breaker.state() == "closed"
    assert breaker.deferral() == 0
    breaker.enter()


def test_trial_calls_that_never_answer_are_replaced(idle_redis: redis.Redis) -> None:
    """A worker killed during its trial call must not leave the circuit half-open forever."""
    breaker = gate(idle_redis, window=10)
    for _ in range(10):
        breaker.failed(InDoubtError("timeout"))
    time.sleep(0.55)
    breaker.enter()
    breaker.enter()
    with pytest.raises(DeferredError, match="half-open"):
        breaker.enter()
    time.sleep(0.55)  # the trials' time is up without an answer
    breaker.enter()


def test_a_trial_held_back_by_the_rate_is_given_back(idle_redis: redis.Redis) -> None:
    slow = gate(idle_redis, ceiling=0.5, window=10)
    for _ in range(10):
        slow.failed(InDoubtError("timeout"))
    time.sleep(0.55)
    slow.enter()  # the first trial takes the only slot for two seconds
    with pytest.raises(DeferredError, match="rate limit"):
        slow.enter()  # the second trial's permit, then held back by the rate
    assert idle_redis.hget(keys.GATE_BREAKER, "permits") == "1"  # given back


def test_429s_of_calls_sent_before_a_cut_do_not_cut_again(idle_redis: redis.Redis) -> None:
    """One burst of refusals is one cut (TCP: one cut per window of loss), however its 429s
    straddle the rounds; a later round that is refused again cuts again."""
    learning = limiter(idle_redis, initial_rate=100)
    refusals = [Answer.ACCEPTED] * 6 + [Answer.LIMITED] * 4
    assert a_round(learning, refusals, sent=100)[0] == "cut"
    cut = stored(idle_redis, "rate")
    assert a_round(learning, refusals, sent=100) == ("hold", cut)
    assert a_round(learning, refusals, sent=100)[0] == "cut"


def test_429s_while_nobody_sent_say_nothing_about_the_rate(idle_redis: redis.Redis) -> None:
    learning = limiter(idle_redis, initial_rate=100)
    assert a_round(learning, [Answer.LIMITED] * 5, sent=0) == ("hold", 100)


def test_a_redis_clock_that_went_back_does_not_stall_the_limiter(idle_redis: redis.Redis) -> None:
    learning = limiter(idle_redis, initial_rate=100)
    learning.reserve(max_block_seconds=1)
    now_ms = time.time() * 1000
    idle_redis.hset(
        keys.GATE_LIMITER, mapping={"tat": now_ms + 120_000, "round_start": now_ms + 120_000}
    )
    assert learning.reserve(max_block_seconds=1) == Reservation(True, 0)
    assert learning.record(Answer.ACCEPTED)[0] == "open"
    assert stored(idle_redis, "round_start") <= time.time() * 1000


def test_a_state_missing_fields_starts_afresh(idle_redis: redis.Redis) -> None:
    idle_redis.hset(keys.GATE_LIMITER, "rate", "50")  # not written by this version
    learning = limiter(idle_redis, initial_rate=10)
    assert learning.reserve(max_block_seconds=1).granted
    assert learning.record(Answer.ACCEPTED)[0] == "open"
    assert stored(idle_redis, "rate") == 10


def test_a_trial_told_to_slow_down_gives_its_permit_back(idle_redis: redis.Redis) -> None:
    """A 429 decides nothing about ChiliPiper's health: the half-open circuit must not run
    out of trials (and hold every call) because its trials were asked to wait."""
    breaker = gate(idle_redis, window=10)
    for _ in range(10):
        breaker.failed(InDoubtError("timeout"))
    time.sleep(0.55)
    for _ in range(2):  # both trial permits, each answered 429
        breaker.enter()
        breaker.failed(RetryableError("HTTP 429", status=429))
    breaker.enter()
    assert breaker.breaker.state() == "half-open"


def test_time_held_back_by_a_pause_is_not_sending_slowly(idle_redis: redis.Redis) -> None:
    """A round that a `Retry-After` pause held back sent little, but not because the rate was
    low: the cut is taken from what was sent while calls could go."""
    refusals = [Answer.ACCEPTED] * 6 + [Answer.LIMITED] * 4
    learning = limiter(idle_redis, initial_rate=100)
    assert a_round(learning, refusals, sent=2)[1] < 40  # 2 calls in 160 ms: ~12/s sent
    idle_redis.delete(keys.GATE_LIMITER)
    for _ in range(2):
        learning.reserve(max_block_seconds=1)
    for answer in refusals[:-1]:
        learning.record(answer)
    time.sleep(ROUND + 0.01)
    idle_redis.set(keys.GATE_PAUSE, int(time.time() * 1000))  # held back until just now
    decision, rate = learning.record(refusals[-1])
    assert (decision, rate) == ("cut", 70)
