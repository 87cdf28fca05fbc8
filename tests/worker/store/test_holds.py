"""What the safety valves hold, on a real Redis: each of these pins a sequence an outside
review found could send a held cancel behind the operator's back, twice, or never."""

from __future__ import annotations

import time

import pytest
import redis

from tests.worker.store.conftest import cancel
from worker.chilipiper.breaker import BreakerSettings
from worker.chilipiper.gate import _ENTER_KEYS, Gate, GateSettings
from worker.domain.operations import Operation
from worker.errors import Held
from worker.store import Store, keys

GUARD = 2


def gate(client: redis.Redis) -> Gate:
    return Gate(
        client,
        GateSettings(
            ceiling_per_second=None,
            max_block_seconds=1.0,
            breaker=BreakerSettings(),
            guard_per_minute=GUARD,
        ),
    )


def enter(gate: Gate, operation: Operation) -> str:
    """`go`, or the reason the gate held the operation."""
    try:
        gate.enter(operation.identity)
    except Held as held:
        return held.reason
    return "go"


def test_the_gate_holds_every_copy_of_a_held_operation_until_it_is_released(
    store: Store, client: redis.Redis
) -> None:
    """A new notification, a replay or a redelivery of a held cancel meets the gate again:
    it stays held until an operator releases it."""
    shared = gate(client)
    operation = cancel()
    assert store.holds.hold(operation, "guard")
    assert enter(shared, operation) == "held"
    assert store.holds.hold(operation, "held")  # the copy's hold keeps the first entry
    [entry] = store.holds.all()
    assert entry.reason == "guard"
    store.holds.pass_guard([entry])
    assert store.holds.take([entry]) == [entry]
    assert enter(shared, operation) == "go"


def test_a_released_operation_passes_the_guard_for_every_request_of_its_call(
    store: Store, client: redis.Redis
) -> None:
    """A release is not undone by a 429 and its retry: the exemption lasts an hour."""
    shared = gate(client)
    for _ in range(GUARD):
        assert enter(shared, cancel()) == "go"
    operation = cancel()
    assert enter(shared, operation) == "guard"
    assert store.holds.hold(operation, "guard")
    [entry] = store.holds.all()
    store.holds.pass_guard([entry])
    store.holds.take([entry])
    assert enter(shared, operation) == "go"
    assert enter(shared, operation) == "go"  # the retry after a 429
    assert enter(shared, cancel()) == "guard"  # the guard still holds everyone else


def test_the_guard_counts_operations_not_requests(client: redis.Redis) -> None:
    shared = gate(client)
    first = cancel()
    for _ in range(3):  # one operation's request, retried twice
        assert enter(shared, first) == "go"
    assert enter(shared, cancel()) == "go"
    assert enter(shared, cancel()) == "guard"


def test_a_hold_for_a_pause_lifted_meanwhile_holds_nothing(
    store: Store, client: redis.Redis
) -> None:
    """The gate answered "operator pause", then a resume ran before the hold was stored:
    the hold is refused, so the operation runs again instead of waiting for nobody."""
    operation = cancel()
    assert not store.holds.hold(operation, "paused")
    client.hset(keys.GATE_IRREVERSIBLE_PAUSE, "actor", "cli:ops")
    assert store.holds.hold(operation, "paused")
    released = cancel()
    assert not store.holds.hold(released, "held")  # its held copy was released meanwhile


def test_dropping_an_operation_whose_holder_died_mid_call_keeps_it_in_doubt(
    store: Store, client: redis.Redis
) -> None:
    """A copy claimed it, sent the cancel and died; the operator drops it: the dead letter
    is in doubt from the call's start, so a replay asks crm-get before sending again."""
    operation = cancel()
    assert store.holds.hold(operation, "guard")
    claim = store.claims.claim(operation, "killed-worker", lease_seconds=0)
    assert store.claims.mark_sending(operation, claim, lease_seconds=0)
    began = client.hget(keys.operation(operation), "call_started_at")
    time.sleep(0.01)
    [entry] = store.holds.all()
    assert store.holds.drop(entry, "cli:ops") == "running"
    record = client.hgetall(keys.operation(operation))
    assert (record["state"], record["doubt_since"]) == ("failed", began)
    assert store.holds.all() == []


def test_a_drop_leaves_a_live_claim_alone_and_keeps_it_held(store: Store) -> None:
    operation = cancel()
    assert store.holds.hold(operation, "guard")
    store.claims.claim(operation, "alive", lease_seconds=60)
    [entry] = store.holds.all()
    assert store.holds.drop(entry, "cli:ops") == "busy"
    assert store.holds.all() == [entry]


@pytest.mark.parametrize("key", [*_ENTER_KEYS, keys.HELD])
def test_the_gate_and_the_holds_share_one_cluster_slot(key: str) -> None:
    assert key.split("{", 1)[1].split("}", 1)[0] == "chilipiper"
