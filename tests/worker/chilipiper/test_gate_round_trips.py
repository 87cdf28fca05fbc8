"""What the gate costs in Redis round trips, and that composing its steps into one script each
kept their order: a pause takes no trial permit, a trial held back gives its permit back.

A round trip is one request written to Redis: a client whose connections count their sends
sees each script call (or pipeline) as one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import redis

from tests.conftest import IDLE_DB, db_url
from tests.worker.chilipiper.test_gate import gate
from tests.worker.store.conftest import RETENTION, cancel
from worker.chilipiper.gate import Gate, OpenGate
from worker.dev.redis_server import RedisServer
from worker.domain.operations import State
from worker.errors import DeferredError, InDoubtError, RetryableError
from worker.store import Store, keys
from worker.store.claims import Verdict


class Sends:
    """Requests written to Redis by one client's connections."""

    def __init__(self) -> None:
        self.count = 0

    def during(self, step: Callable[[], Any]) -> int:
        """Round trips `step` made (whether it returned or raised)."""
        before = self.count
        with contextlib.suppress(DeferredError):
            step()
        return self.count - before


@pytest.fixture
def sends() -> Sends:
    return Sends()


@contextlib.contextmanager
def counting_client(url: str, sends: Sends) -> Iterator[redis.Redis]:
    """A client on `url` whose connections count their round trips in `sends`."""

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sends.count += 1
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    pool = redis.ConnectionPool.from_url(
        url, connection_class=CountingConnection, decode_responses=True
    )
    client = redis.Redis(connection_pool=pool)
    try:
        yield client
    finally:
        client.close()
        pool.disconnect()


@pytest.fixture
def counted_redis(
    redis_server: RedisServer, idle_redis: redis.Redis, sends: Sends
) -> Iterator[redis.Redis]:
    """A client on the idle database (flushed by `idle_redis`) that counts its round trips."""
    with counting_client(db_url(redis_server, IDLE_DB), sends) as client:
        yield client


def warmed(client: redis.Redis, ceiling: float | None = None) -> Gate:
    """A gate whose connection is open and whose scripts Redis already holds (the first call
    of a script loads it: two more round trips, once per Redis)."""
    warm = gate(client, ceiling=ceiling, window=10)
    warm.enter()
    warm.succeeded()
    warm.failed(RetryableError("connection refused"))
    warm.deferral()
    client.delete(keys.GATE_LIMITER, keys.GATE_BREAKER, keys.GATE_BREAKER_WINDOW)
    return warm


def open_then_cooled(shared: Gate) -> None:
    """Open the circuit (ten failures of a window of ten), then wait out its cool-down."""
    for _ in range(10):
        shared.failed(InDoubtError("timeout"))
    time.sleep(0.55)


def paused(shared: Gate) -> None:
    shared.failed(RetryableError("HTTP 429", status=429, retry_after=2))


def circuit_open(shared: Gate) -> None:
    for _ in range(10):
        shared.failed(InDoubtError("timeout"))


def out_of_trials(shared: Gate) -> None:
    open_then_cooled(shared)
    shared.enter()
    shared.enter()


def slot_taken(shared: Gate) -> None:
    shared.enter()  # at 0.5/s the next slot is two seconds away


def trial_slot_taken(shared: Gate) -> None:
    open_then_cooled(shared)
    shared.enter()  # the next trial will take a permit, then give it back for the rate


# --- round trips ----------------------------------------------------------------------------


def test_entering_and_each_outcome_take_one_round_trip(
    counted_redis: redis.Redis, sends: Sends
) -> None:
    shared = warmed(counted_redis)
    assert sends.during(shared.enter) == 1
    assert sends.during(shared.succeeded) == 1
    for error in (
        RetryableError("HTTP 503", status=503),
        RetryableError("connection refused"),
        InDoubtError("timeout"),
    ):
        shared.enter()
        assert sends.during(partial(shared.failed, error)) == 1


@pytest.mark.parametrize(
    ("hold", "ceiling", "why"),
    [
        (paused, None, "paused"),
        (circuit_open, None, "circuit open"),
        (out_of_trials, None, "circuit half-open"),
        (slot_taken, 0.5, "rate limit"),
        (trial_slot_taken, 0.5, "rate limit"),
    ],
)
def test_a_deferred_entry_takes_one_round_trip(
    counted_redis: redis.Redis,
    sends: Sends,
    hold: Callable[[Gate], None],
    ceiling: float | None,
    why: str,
) -> None:
    shared = warmed(counted_redis, ceiling)
    hold(shared)
    with pytest.raises(DeferredError, match=why):
        shared.enter()
    assert sends.during(shared.enter) == 1


def test_the_check_before_a_claim_is_free_while_the_gate_is_in_use(
    counted_redis: redis.Redis, sends: Sends
) -> None:
    shared = warmed(counted_redis)
    shared.enter()
    shared.succeeded()
    assert sends.during(shared.recent_deferral) == 0
    assert shared.recent_deferral() == 0
    time.sleep(0.06)
    assert sends.during(partial(shared.recent_deferral, max_age=0.05)) == 1  # too old: asked


def test_a_hold_any_script_answered_is_remembered_and_counts_down(
    counted_redis: redis.Redis, sends: Sends
) -> None:
    shared, other = warmed(counted_redis), gate(counted_redis)
    shared.enter()  # saw no hold
    other.failed(RetryableError("HTTP 429", status=429, retry_after=2))  # another worker
    assert shared.recent_deferral() == 0  # stale, and harmless: `enter` is the authority
    with pytest.raises(DeferredError, match="paused"):
        shared.enter()
    before = sends.count
    first = shared.recent_deferral()
    time.sleep(0.1)
    second = shared.recent_deferral()
    assert sends.count == before
    assert 1.5 < first <= 2.0
    assert first - 0.2 < second < first
    assert 1.5 < other.recent_deferral() <= 2.0  # the pause's own answer


def test_the_outcome_that_opens_the_circuit_tells_its_hold(counted_redis: redis.Redis) -> None:
    shared = warmed(counted_redis)
    for _ in range(10):
        shared.failed(InDoubtError("timeout"))
    assert 0.4 < shared.recent_deferral() <= 0.5  # the cool-down, without asking again


# --- successes deferred into the settle's round trip ----------------------------------------


def warmed_store(client: redis.Redis) -> Store:
    """A store on `client` whose claim and settle scripts Redis already holds."""
    store = Store(client, RETENTION)
    operation = cancel()
    store.claims.settle(operation, store.claims.claim(operation, "warm", 60), State.SUCCEEDED)
    return store


def window(client: redis.Redis) -> list[str]:
    """The circuit's window of outcomes, newest first: '0' a success, '1' a failure."""
    return [str(outcome) for outcome in client.lrange(keys.GATE_BREAKER_WINDOW, 0, -1)]


def test_a_settled_success_takes_one_round_trip_with_the_gates_record_of_it(
    counted_redis: redis.Redis, sends: Sends
) -> None:
    shared, store = warmed(counted_redis), warmed_store(counted_redis)
    operation = cancel()
    key = keys.operation(operation)
    counted_redis.zadd(keys.PENDING, {key: 1.0})
    claim = store.claims.claim(operation, "execution-1", lease_seconds=60)
    with shared.deferring_successes() as successes:
        shared.enter()
        assert sends.during(shared.succeeded) == 0
        assert window(counted_redis) == []
        settle = partial(
            store.claims.settle,
            operation,
            claim,
            State.SUCCEEDED,
            result={"status": "CANCELLED"},
            also=successes.record_into,
        )
        assert sends.during(settle) == 1
        before = sends.count
    assert sends.count == before  # taken by the settle: nothing left to record
    assert window(counted_redis) == ["0"]
    assert int(counted_redis.hget(keys.GATE_LIMITER, "accepted") or 0) == 1
    assert counted_redis.hget(key, "state") == "succeeded"
    assert counted_redis.zscore(keys.PENDING, key) is None
    assert key in counted_redis.smembers(keys.event_index(operation.crm_event_id))


def test_a_settle_whose_scripts_redis_lost_loads_and_runs_them(
    counted_redis: redis.Redis, sends: Sends
) -> None:
    """After a Redis restart the settle's EVALSHAs are refused (NOSCRIPT, nothing ran): each
    is loaded and run again, once."""
    shared, store = warmed(counted_redis), warmed_store(counted_redis)
    operation = cancel()
    claim = store.claims.claim(operation, "execution-1", lease_seconds=60)
    counted_redis.script_flush()
    with shared.deferring_successes() as successes:
        shared.enter()  # loads the entry script again (and not the outcome's)
        shared.succeeded()
        settle = partial(
            store.claims.settle, operation, claim, State.SUCCEEDED, also=successes.record_into
        )
        # The pipeline, then for each refused script: EVALSHA, SCRIPT LOAD, EVALSHA again.
        assert sends.during(settle) == 1 + 3 + 3
    assert store.claims.claim(operation, "execution-2", 60).verdict is Verdict.DONE
    assert counted_redis.hget(keys.operation(operation), "state") == "succeeded"
    assert window(counted_redis) == ["0"]


def test_successes_not_taken_are_recorded_when_the_block_ends(
    counted_redis: redis.Redis, sends: Sends
) -> None:
    shared = warmed(counted_redis)
    with shared.deferring_successes():
        shared.enter()
        assert sends.during(shared.succeeded) == 0
        before = sends.count
    assert sends.count == before + 1
    assert window(counted_redis) == ["0"]

    def ends_badly() -> None:
        with shared.deferring_successes():
            shared.enter()
            shared.succeeded()
            raise RuntimeError("the execution ended badly")

    with pytest.raises(RuntimeError):
        ends_badly()
    assert window(counted_redis) == ["0", "0"]
    assert sends.during(shared.succeeded) == 1  # outside the block: at once, as ever


def test_a_deferred_success_is_recorded_before_the_gates_next_step(
    counted_redis: redis.Redis, sends: Sends
) -> None:
    """The limiter and the circuit hear the outcomes in the order they came: a crm-get's
    success before the cancel that follows it enters, or before its failure."""
    shared = warmed(counted_redis)
    with shared.deferring_successes() as successes:
        shared.enter()
        shared.succeeded()
        shared.enter()
        assert (successes.count, window(counted_redis)) == (0, ["0"])
        shared.succeeded()
        assert sends.during(partial(shared.failed, InDoubtError("timeout"))) == 2
        assert window(counted_redis) == ["1", "0", "0"]


def test_a_trials_success_is_recorded_at_once(counted_redis: redis.Redis, sends: Sends) -> None:
    """It may close the circuit that holds every worker back: no waiting for a settle."""
    shared = warmed(counted_redis)
    open_then_cooled(shared)
    with shared.deferring_successes() as successes:
        shared.enter()  # a trial
        assert sends.during(shared.succeeded) == 1
        assert successes.count == 0
    assert counted_redis.hget(keys.GATE_BREAKER, "passed") == "1"


def test_an_open_gate_defers_nothing() -> None:
    gate = OpenGate()
    with gate.deferring_successes() as successes:
        gate.succeeded()
        assert successes.count == 0


# --- order kept inside the scripts ----------------------------------------------------------


def test_a_paused_gate_takes_no_trial_permit(idle_redis: redis.Redis) -> None:
    shared = gate(idle_redis, window=10)
    open_then_cooled(shared)
    shared.failed(RetryableError("HTTP 429", status=429, retry_after=0.3))
    for _ in range(3):
        with pytest.raises(DeferredError, match="paused"):
            shared.enter()
    time.sleep(0.35)
    shared.enter()
    shared.enter()  # both trials are still there
    with pytest.raises(DeferredError, match="half-open"):
        shared.enter()


def test_an_abandoned_trial_gives_its_permit_back(idle_redis: redis.Redis) -> None:
    shared = gate(idle_redis, window=10)
    open_then_cooled(shared)
    shared.enter()
    shared.abandon()  # its claim ran out before the call left
    assert idle_redis.hget(keys.GATE_BREAKER, "permits") == "2"
    shared.enter()
    assert idle_redis.hget(keys.GATE_BREAKER, "permits") == "1"


@pytest.mark.parametrize(
    ("error", "counted"),
    [
        (RetryableError("HTTP 503", status=503), 1),
        (InDoubtError("timeout"), 1),
        (RetryableError("connection refused"), 0),  # never reached ChiliPiper
    ],
)
def test_only_an_answer_is_news_for_the_rate_while_every_failure_counts_for_the_circuit(
    idle_redis: redis.Redis, error: RetryableError | InDoubtError, counted: int
) -> None:
    shared = gate(idle_redis, window=10)
    shared.enter()
    shared.failed(error)
    assert int(idle_redis.hget(keys.GATE_LIMITER, "accepted") or 0) == counted
    assert idle_redis.lrange(keys.GATE_BREAKER_WINDOW, 0, -1) == ["1"]


def test_a_pause_that_began_while_a_call_waited_for_its_slot_holds_it_back(
    idle_redis: redis.Redis,
) -> None:
    paced, other = gate(idle_redis, ceiling=2), gate(idle_redis)
    paced.enter()  # the next slot is half a second away
    outcome: list[BaseException | None] = []

    def waiting() -> None:
        try:
            paced.enter()
            outcome.append(None)
        except DeferredError as deferred:
            outcome.append(deferred)

    thread = threading.Thread(target=waiting)
    thread.start()
    time.sleep(0.15)
    other.failed(RetryableError("HTTP 429", status=429, retry_after=2))
    thread.join(timeout=5)
    assert len(outcome) == 1
    assert isinstance(outcome[0], DeferredError)
    assert "paused" in str(outcome[0])
