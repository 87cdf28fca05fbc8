"""The idempotency store's Lua claim and settle, on a real Redis."""

from __future__ import annotations

import threading
import time

import redis

from tests.conftest import random_event_id
from tests.worker.store.conftest import cancel
from worker.domain.operations import Action, Operation, State
from worker.store import Store, keys
from worker.store.claims import Verdict


def test_first_claim_wins_and_a_second_owner_is_told_busy(store: Store) -> None:
    operation = cancel()
    first = store.claims.claim(operation, "task-1", lease_seconds=60)
    second = store.claims.claim(operation, "task-2", lease_seconds=60)
    assert (first.verdict, first.previous_state) == (Verdict.CLAIMED, "new")
    assert second.verdict is Verdict.BUSY


def test_exactly_one_of_many_concurrent_claims_wins(store: Store) -> None:
    operation = cancel()
    verdicts: list[Verdict] = []
    barrier = threading.Barrier(20)

    def contend(owner: str) -> None:
        barrier.wait()
        verdicts.append(store.claims.claim(operation, owner, lease_seconds=60).verdict)

    threads = [threading.Thread(target=contend, args=(f"task-{i}",)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert verdicts.count(Verdict.CLAIMED) == 1
    assert verdicts.count(Verdict.BUSY) == 19


def test_succeeded_operation_is_done_for_everyone(store: Store) -> None:
    operation = cancel()
    claim = store.claims.claim(operation, "task-1", lease_seconds=60)
    assert store.claims.settle(operation, claim, State.SUCCEEDED, result={"status": "CANCELLED"})
    later = store.claims.claim(operation, "task-9", lease_seconds=60)
    assert later.verdict is Verdict.DONE
    record = store.records.read(keys.operation(operation))
    assert record is not None
    assert record["state"] == "succeeded"
    assert record["result"] == {"status": "CANCELLED"}
    assert record["attempts"] == "1"


def test_expired_lease_is_taken_over_and_the_old_owner_cannot_settle(store: Store) -> None:
    operation = cancel()
    stale = store.claims.claim(operation, "killed-worker", lease_seconds=0)
    time.sleep(0.01)
    fresh = store.claims.claim(operation, "task-2", lease_seconds=60)
    assert fresh.verdict is Verdict.CLAIMED
    assert fresh.after_interruption  # the killed worker may have called ChiliPiper
    assert int(fresh.token) > int(stale.token)
    assert not store.claims.settle(operation, stale, State.SUCCEEDED)  # fenced off
    assert store.claims.settle(operation, fresh, State.SUCCEEDED)


def test_redelivery_to_the_same_owner_reclaims_as_interrupted(store: Store) -> None:
    operation = cancel()
    store.claims.claim(operation, "task-1", lease_seconds=60)
    again = store.claims.claim(operation, "task-1", lease_seconds=60)
    assert again.verdict is Verdict.CLAIMED
    assert again.after_interruption


def test_failed_and_retrying_operations_can_be_claimed_again(store: Store) -> None:
    operation = cancel()
    claim = store.claims.claim(operation, "task-1", lease_seconds=60)
    store.claims.settle(operation, claim, State.RETRYING, error="HTTP 503")
    retry = store.claims.claim(operation, "task-1", lease_seconds=60)
    assert (retry.verdict, retry.previous_state) == (Verdict.CLAIMED, "retrying")
    assert not retry.after_interruption
    store.claims.settle(operation, retry, State.FAILED, error="HTTP 404")
    record = store.records.read(keys.operation(operation))
    assert record is not None
    assert (record["state"], record["last_error"], record["attempts"]) == (
        "failed",
        "HTTP 404",
        "2",
    )


def test_keys_expire_after_their_retention(store: Store, client: redis.Redis) -> None:
    irreversible, get = cancel(), Operation(Action.GET, random_event_id(), "04l")
    store.claims.claim(irreversible, "a", lease_seconds=60)
    store.claims.claim(get, "b", lease_seconds=60)
    assert 29 * 86400 < client.ttl(keys.operation(irreversible)) <= 30 * 86400
    assert 71 * 3600 < client.ttl(keys.operation(get)) <= 72 * 3600
