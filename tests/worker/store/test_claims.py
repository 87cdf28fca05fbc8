"""The idempotency store's Lua claim and settle, on a real Redis."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
import redis
from redis.commands.core import Script

from tests.conftest import random_event_id
from tests.worker.store.conftest import cancel
from worker.domain.operations import Action, Operation, State
from worker.store import Store, keys, lua
from worker.store.claims import Claim, Doubt, Settled, Verdict


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


def test_a_holder_that_died_before_sending_leaves_it_queued(store: Store) -> None:
    operation = cancel()
    stale = store.claims.claim(operation, "killed-worker", lease_seconds=0)
    time.sleep(0.01)
    fresh = store.claims.claim(operation, "execution-2", lease_seconds=60)
    assert (fresh.verdict, fresh.previous_state) == (Verdict.CLAIMED, "queued")
    assert not fresh.in_doubt  # its call never left: nothing to reconcile
    assert int(fresh.token) > int(stale.token)
    assert not store.claims.settle(operation, stale, State.SUCCEEDED)  # fenced off
    assert store.claims.settle(operation, fresh, State.SUCCEEDED)


def test_a_holder_that_died_while_calling_leaves_it_in_doubt_since_its_call_began(
    store: Store,
) -> None:
    operation = cancel()
    stale = store.claims.claim(operation, "killed-worker", lease_seconds=0)
    assert store.claims.mark_sending(operation, stale, lease_seconds=0)
    began = _field(store, operation, "call_started_at")
    time.sleep(0.01)
    fresh = store.claims.claim(operation, "execution-2", lease_seconds=60)
    assert fresh.in_doubt
    assert fresh.doubt_since == began
    assert 149 < fresh.settle_wait(150) <= 150


def test_a_holder_that_died_while_reconciling_leaves_it_as_doubtful_as_before(
    store: Store,
) -> None:
    operation = cancel()
    first = store.claims.claim(operation, "e1", lease_seconds=60)
    assert store.claims.mark_sending(operation, first, lease_seconds=60)
    store.claims.settle(operation, first, State.IN_DOUBT, doubt=Doubt.CALL, error="timeout")
    doubt = _field(store, operation, "doubt_since")
    reconciling = store.claims.claim(operation, "e2", lease_seconds=0)  # dies in crm-get
    assert reconciling.doubt_since == doubt
    time.sleep(0.01)
    third = store.claims.claim(operation, "e3", lease_seconds=60)
    assert (third.in_doubt, third.doubt_since) == (True, doubt)


def test_a_live_lease_is_busy_for_everyone_even_the_same_task(store: Store) -> None:
    """A redelivered message keeps its task ID; each execution has an owner of its own."""
    operation = cancel()
    store.claims.claim(operation, "task-1:a", lease_seconds=60)
    again = store.claims.claim(operation, "task-1:b", lease_seconds=60)
    assert again.verdict is Verdict.BUSY
    assert 59 < again.busy_for <= 60
    assert _field(store, operation, "attempts") == "1"


def test_renew_and_settle_check_the_owner_as_well_as_the_token(store: Store) -> None:
    operation = cancel()
    claim = store.claims.claim(operation, "e1", lease_seconds=60)
    impostor = dataclasses.replace(claim, owner="e2")
    assert store.claims.renew(operation, impostor, 60) is None
    assert not store.claims.mark_sending(operation, impostor, 60)
    assert not store.claims.settle(operation, impostor, State.SUCCEEDED)
    assert store.claims.renew(operation, claim, 60) is not None


def test_release_puts_back_everything_the_claim_changed(store: Store) -> None:
    operation = cancel()
    first = store.claims.claim(operation, "e1", lease_seconds=60)
    assert store.claims.mark_sending(operation, first, 60)
    store.claims.settle(operation, first, State.IN_DOUBT, doubt=Doubt.CALL, error="timeout")
    before = _fields(store, operation, "state", "attempts", "last_source", "doubt_since")
    other = dataclasses.replace(operation, source_id="04lOTHERSOURCE0001")
    held_back = store.claims.claim(other, "e2", lease_seconds=60)
    assert store.claims.release(other, held_back)
    assert _fields(store, operation, "state", "attempts", "last_source", "doubt_since") == before
    assert _field(store, operation, "call_started_at") is None


def test_settle_records_whether_the_operation_stays_in_doubt(store: Store) -> None:
    operation = cancel()
    claim = store.claims.claim(operation, "e1", lease_seconds=60)
    assert store.claims.mark_sending(operation, claim, 60)
    began = _field(store, operation, "call_started_at")
    store.claims.settle(operation, claim, State.FAILED, doubt=Doubt.CALL, error="gave up")
    assert (_field(store, operation, "doubt_since"), _field(store, operation, "state")) == (
        began,
        "failed",
    )  # a dead letter whose last attempt was in doubt stays marked
    store.records.mark_queued([dataclasses.replace(operation, source_id="04lNEWNOTICE00001")])
    retry = store.claims.claim(operation, "e2", lease_seconds=60)
    assert (retry.in_doubt, retry.doubt_since, retry.attempts) == (True, began, 1)
    store.claims.settle(operation, retry, State.RETRYING, doubt=Doubt.NONE, error="HTTP 429")
    assert _field(store, operation, "doubt_since") is None


def test_a_dead_letter_stays_dead_for_its_sources_and_reopens_for_a_new_one(
    store: Store,
) -> None:
    operation = cancel()
    store.records.mark_queued([operation])
    claim = store.claims.claim(operation, "e1", lease_seconds=60)
    store.claims.settle(operation, claim, State.FAILED, error="HTTP 404")
    assert store.claims.claim(operation, "e2", lease_seconds=60).verdict is Verdict.FAILED
    store.records.mark_queued([operation])  # a redelivery of the same notification
    assert _field(store, operation, "state") == "failed"
    time.sleep(0.01)
    store.records.mark_queued([dataclasses.replace(operation, source_id="04lNEWNOTICE00002")])
    state, attempts, since, created = _fields(
        store, operation, "state", "attempts", "since", "created_at"
    )
    assert (state, attempts) == ("queued", "0")  # not in doubt: the 404 was an answer
    assert int(since) > int(created)  # a fresh age budget
    assert keys.operation(operation) not in [key for key, _ in store.dead_letters.since()]


def test_a_redelivered_message_whose_holder_died_unmarked_is_in_doubt(store: Store) -> None:
    """The broker delivers the message again: a holder gone without a send marker may have
    sent all the same, had a Redis crash lost the marker. A settled record says what
    happened: no doubt there."""
    died, settled = cancel(), cancel()
    store.claims.claim(died, "task-1:a", lease_seconds=0)
    time.sleep(0.01)
    again = store.claims.claim(died, "task-1:b", lease_seconds=60, redelivered=True)
    assert again.in_doubt
    assert again.settle_wait(150) > 149  # from when its lease ended: just now
    claim = store.claims.claim(settled, "task-2:a", lease_seconds=60)
    store.claims.settle(settled, claim, State.RETRYING, error="HTTP 429")
    assert not store.claims.claim(settled, "task-2:b", 60, redelivered=True).in_doubt


def test_records_of_the_previous_release_are_read_conservatively(
    store: Store, client: redis.Redis
) -> None:
    """Version 1 kept no send marker and no doubt marker: its dead holder may have been
    calling, and its irreversible dead letters may have been in doubt."""
    running, dead = cancel(), cancel()
    long_ago = int(time.time() * 1000) - 3_600_000
    for operation, state in ((running, "running"), (dead, "failed")):
        client.hset(
            keys.operation(operation),
            mapping={
                "state": state,
                "owner": "task-id-of-v1",
                "token": "3",
                "attempts": "3",
                "lease_until": long_ago + 60_000,
                "created_at": long_ago,
                "updated_at": long_ago,
                "action": "cancel",
                "crm_event_id": operation.crm_event_id,
                "last_source": operation.source_id,
            },
        )
    taken_over = store.claims.claim(running, "e1", lease_seconds=60)
    # In doubt since its last renewal at the latest: version 1 renewed right before a call.
    assert (taken_over.in_doubt, taken_over.doubt_since) == (True, long_ago / 1000 + 60)
    assert taken_over.since == long_ago / 1000
    assert taken_over.settle_wait(150) == 0  # an hour ago: reconcile now
    assert store.claims.reopen(dead, force=False, actor="cli:test") == ("failed", 3)
    assert _field(store, dead, "state") == "in_doubt"


def test_a_notification_during_a_run_that_dead_letters_gets_its_fresh_budget(
    store: Store,
) -> None:
    """Found by review: the notification was absorbed by the running execution's record and
    then stood down as "already failed"."""
    operation = cancel()
    store.records.mark_queued([operation])
    claim = store.claims.claim(operation, "e1", lease_seconds=60)
    store.records.mark_queued([dataclasses.replace(operation, source_id="04lDURINGTHERUN1")])
    settled = store.claims.settle(operation, claim, State.FAILED, error="gave up")
    assert settled is Settled.REOPENED
    assert _fields(store, operation, "state", "attempts") == ("queued", "0")
    assert keys.operation(operation) not in [key for key, _ in store.dead_letters.since()]
    again = store.claims.claim(operation, "e2", lease_seconds=60)
    assert store.claims.settle(operation, again, State.FAILED, error="gave up again")
    assert _field(store, operation, "state") == "failed"  # once: no loop


def test_a_version_1_record_in_doubt_waits_from_its_last_update(
    store: Store, client: redis.Redis
) -> None:
    operation = cancel()
    just_now = int(time.time() * 1000)
    client.hset(
        keys.operation(operation),
        mapping={
            "state": "in_doubt",
            "token": "2",
            "attempts": "2",
            "updated_at": just_now,
            "created_at": just_now - 5000,
            "action": "cancel",
            "crm_event_id": operation.crm_event_id,
        },
    )
    claim = store.claims.claim(operation, "e1", lease_seconds=60)
    assert (claim.in_doubt, claim.doubt_since) == (True, just_now / 1000)
    assert claim.settle_wait(150) > 149


def _field(store: Store, operation: Operation, name: str) -> Any:
    value = store.redis.hget(keys.operation(operation), name)
    if value is not None and name.endswith(("_at", "_since")):
        return int(value) / 1000
    return value


def _fields(store: Store, operation: Operation, *names: str) -> tuple[Any, ...]:
    return tuple(store.redis.hmget(keys.operation(operation), list(names)))


def test_keys_expire_after_their_retention(store: Store, client: redis.Redis) -> None:
    irreversible, get = cancel(), Operation(Action.GET, random_event_id(), "04l")
    store.claims.claim(irreversible, "a", lease_seconds=60)
    store.claims.claim(get, "b", lease_seconds=60)
    assert 29 * 86400 < client.ttl(keys.operation(irreversible)) <= 30 * 86400
    assert 71 * 3600 < client.ttl(keys.operation(get)) <= 72 * 3600


# --- a success's index writes, sent before the script's answer ------------------------------


def _indexed(store: Store, operation: Operation) -> tuple[bool, bool]:
    """Whether the operation is in the pending index, and in the dead letters'."""
    key = keys.operation(operation)
    pending = store.redis.zscore(keys.PENDING, key) is not None
    return pending, key in [entry for entry, _ in store.dead_letters.since()]


def _taken_over(store: Store, operation: Operation) -> tuple[Claim, Claim]:
    """An execution's claim that ran out, and the claim of the execution that took over."""
    store.records.mark_queued([operation])
    stale = store.claims.claim(operation, "slow-execution", lease_seconds=0)
    time.sleep(0.01)
    fresh = store.claims.claim(operation, "execution-2", lease_seconds=60)
    assert fresh.verdict is Verdict.CLAIMED
    return stale, fresh


def test_a_success_leaves_the_pending_and_dead_letter_indexes(store: Store) -> None:
    operation = cancel()
    store.records.mark_queued([operation])
    claim = store.claims.claim(operation, "e1", lease_seconds=60)
    assert store.claims.settle(operation, claim, State.SUCCEEDED) is Settled.RECORDED
    assert _indexed(store, operation) == (False, False)


def test_a_lost_success_puts_back_the_dead_letter_that_the_execution_taking_over_wrote(
    store: Store,
) -> None:
    """The success's pipeline takes the key off both indexes before it knows the claim was
    lost; here the execution that took over had dead-lettered it already."""
    operation = cancel()
    stale, fresh = _taken_over(store, operation)
    assert store.claims.settle(operation, fresh, State.FAILED, error="HTTP 404")
    assert _indexed(store, operation) == (False, True)
    assert store.claims.settle(operation, stale, State.SUCCEEDED) is Settled.LOST
    assert _field(store, operation, "state") == "failed"
    assert _indexed(store, operation) == (True, True)
    # The pending entry of a settled operation is harmless: the sweeper drops it.
    assert store.pending.stale(older_than=0) == []
    assert _indexed(store, operation) == (False, True)


def test_a_lost_success_leaves_the_operation_pending_for_its_holder(store: Store) -> None:
    operation = cancel()
    stale, fresh = _taken_over(store, operation)
    assert store.claims.settle(operation, stale, State.SUCCEEDED) is Settled.LOST
    assert _indexed(store, operation) == (True, False)
    assert _field(store, operation, "state") == "running"
    assert store.claims.settle(operation, fresh, State.SUCCEEDED) is Settled.RECORDED
    assert _indexed(store, operation) == (False, False)


def test_a_lost_success_carries_what_the_caller_added_all_the_same(store: Store) -> None:
    """The gate's record of the call's success: the call was answered, whoever settles."""
    operation = cancel()
    stale, _ = _taken_over(store, operation)

    def also(pipe: redis.client.Pipeline) -> None:
        pipe.incr("also-sent")

    assert store.claims.settle(operation, stale, State.SUCCEEDED, also=also) is Settled.LOST
    assert store.redis.get("also-sent") == "1"
    assert store.claims.settle(operation, stale, State.RETRYING, also=also) is Settled.LOST
    assert store.redis.get("also-sent") == "2"


def test_a_success_whose_script_fails_twice_leaves_the_operation_pending(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis restarted (no scripts cached: NOSCRIPT, while the index writes ran) and went
    away again before the script could run on its own: the sweeper must still find the
    operation, as it did when nothing but the script went first."""
    operation = cancel()
    store.records.mark_queued([operation])
    claim = store.claims.claim(operation, "e1", lease_seconds=60)
    stamped = store.redis.zscore(keys.PENDING, keys.operation(operation))
    store.redis.script_flush()
    run = Script.__call__

    def gone_again(self: Script, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        if client is None and self.script == lua.SETTLE:  # the script's run on its own
            raise redis.ConnectionError("Redis went away again")
        return run(self, keys, args, client)

    monkeypatch.setattr(Script, "__call__", gone_again)
    with pytest.raises(redis.ConnectionError):
        store.claims.settle(operation, claim, State.SUCCEEDED)
    monkeypatch.undo()
    assert _field(store, operation, "state") == "running"
    assert store.redis.zscore(keys.PENDING, keys.operation(operation)) == stamped
    assert [keys.operation(found) for found in store.pending.stale(older_than=0)] == [
        keys.operation(operation)
    ]


def test_a_lost_success_puts_the_pending_entry_back_at_its_own_due_time(store: Store) -> None:
    """The execution that took over parked a retry: its due time, not now, is put back."""
    operation = cancel()
    stale, _ = _taken_over(store, operation)
    due = time.time() + 3600
    store.pending.stamp([operation], at=due)
    assert store.claims.settle(operation, stale, State.SUCCEEDED) is Settled.LOST
    assert store.redis.zscore(keys.PENDING, keys.operation(operation)) == pytest.approx(due)


def test_a_lost_success_puts_back_before_raising_a_failed_index_write(store: Store) -> None:
    """An index or gate write refused (a full Redis answers OOM) is raised, but only after
    the lost success's removals were undone."""
    operation = cancel()
    stale, fresh = _taken_over(store, operation)
    assert store.claims.settle(operation, fresh, State.FAILED, error="HTTP 404")

    def refused(pipe: redis.client.Pipeline) -> None:
        pipe.incr("not-a-number-key")

    store.redis.set("not-a-number-key", "x")
    with pytest.raises(redis.ResponseError):
        store.claims.settle(operation, stale, State.SUCCEEDED, also=refused)
    assert _indexed(store, operation) == (True, True)
