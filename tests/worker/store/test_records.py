"""Records as the fan-out writes them and operators read them; the per-event index and the
one-off migration that indexes records written before it existed."""

from __future__ import annotations

import time

import redis

from tests.conftest import random_event_id
from tests.worker.store.conftest import cancel
from worker.domain.operations import Action, Operation, State
from worker.store import Store, keys, migrations


def test_first_sightings_skip_queued_notifications_but_not_our_own_redelivery(store: Store) -> None:
    operations = [cancel(), cancel()]
    assert store.records.first_sightings(operations, "ingest-1") == operations
    assert store.records.first_sightings(operations, "ingest-2") == []  # Salesforce redelivered
    assert store.records.first_sightings(operations, "ingest-1") == operations  # we crashed mid-way


def test_mark_queued_records_state_and_sources(store: Store) -> None:
    event = random_event_id()
    first = Operation(Action.CANCEL, event, "04lAAAAAAAAAAAAAAA")
    second = Operation(Action.CANCEL, event, "04lBBBBBBBBBBBBBBB")
    store.records.mark_queued([first, second])
    record = store.records.read(keys.operation(first))
    assert record is not None
    assert record["state"] == "queued"
    assert record["sources"] == ["04lAAAAAAAAAAAAAAA", "04lBBBBBBBBBBBBBBB"]
    assert [r["key"] for r in store.records.for_event(event)] == [keys.operation(first)]


def test_every_operation_of_an_event_is_found_through_its_index_without_a_scan(
    store: Store, client: redis.Redis
) -> None:
    event = random_event_id()
    operations = [
        Operation(Action.GET, event, "04lAAAAAAAAAAAAAAA"),
        Operation(Action.CANCEL, event, "04lAAAAAAAAAAAAAAA"),
        Operation(Action.GET, event, "04lBBBBBBBBBBBBBBB"),
    ]
    store.records.mark_queued(operations)
    store.records.mark_queued([cancel()])  # another event: not listed
    assert sorted(client.smembers(keys.event_index(event))) == sorted(
        keys.operation(operation) for operation in operations
    )
    assert client.ttl(keys.event_index(event)) > 29 * 86400  # as long as the longest record
    found = [record["key"] for record in store.records.for_event(event)]
    assert sorted(found) == sorted(keys.operation(operation) for operation in operations)


def test_an_expired_record_drops_out_of_its_event_listing(
    store: Store, client: redis.Redis
) -> None:
    operation = cancel()
    store.records.mark_queued([operation])
    client.delete(keys.operation(operation))  # its retention ran out; the index still names it
    assert store.records.for_event(operation.crm_event_id) == []


def test_times_are_epoch_seconds(store: Store) -> None:
    operation = cancel()
    before = time.time()
    store.records.mark_queued([operation])
    claim = store.claims.claim(operation, "task-1", lease_seconds=60)
    store.claims.settle(operation, claim, State.SUCCEEDED)
    record = store.records.read(keys.operation(operation))
    assert record is not None
    for name in ("created_at", "updated_at", "succeeded_at"):
        assert before - 1 <= record[name] <= time.time() + 1, name
    assert before - 1 <= claim.since <= time.time() + 1


def legacy_record(client: redis.Redis, operation: Operation, *, created_ms: int) -> str:
    """A record as a version before the per-event index wrote it: not indexed."""
    key = keys.operation(operation)
    client.hset(
        key,
        mapping={
            "state": "running",
            "action": operation.action.value,
            "crm_event_id": operation.crm_event_id,
            "source_id": operation.source_id,
            "created_at": created_ms,
            "updated_at": created_ms,
            "lease_until": created_ms + 60_000,
            "owner": "old-worker",
            "token": "1",
            "attempts": "1",
        },
    )
    client.expire(key, 3600)
    client.sadd(keys.sources(key), operation.source_id)
    return key


def test_the_migration_indexes_old_records_without_touching_them(
    store: Store, client: redis.Redis
) -> None:
    old = [cancel() for _ in range(3)]
    created_ms = int(time.time() * 1000) - 120_000
    for operation in old:
        legacy_record(client, operation, created_ms=created_ms)
    before = {keys.operation(op): client.hgetall(keys.operation(op)) for op in old}
    assert store.records.for_event(old[0].crm_event_id) == []  # not indexed: invisible
    assert migrations.pending(client) == ["event-index", "dead-letter-actions"]

    assert migrations.apply(client, store.records) == {"event-index": 3, "dead-letter-actions": 0}

    for operation in old:
        [record] = store.records.for_event(operation.crm_event_id)
        assert record["created_at"] == created_ms / 1000  # epoch seconds, as every interface
    assert {key: client.hgetall(key) for key in before} == before  # records untouched
    assert all(0 < client.ttl(key) <= 3600 for key in before)  # and their expiry too
    assert migrations.pending(client) == []
    assert migrations.apply(client, store.records) == {}  # once per Redis
    assert migrations.apply(client, store.records, again=True)["event-index"] == 3


def test_old_and_new_workers_agree_on_a_lease(store: Store, client: redis.Redis) -> None:
    """During a rolling upgrade old and new workers share records: both keep the lease in
    milliseconds, so an expired one is taken over and a live one is respected."""
    expired, live = cancel(), cancel()
    now_ms = int(time.time() * 1000)
    legacy_record(client, expired, created_ms=now_ms - 120_000)  # lease ended a minute ago
    legacy_record(client, live, created_ms=now_ms)  # lease runs for another minute
    assert store.claims.claim(expired, "new-worker", lease_seconds=60).verdict == "claimed"
    assert store.claims.claim(live, "new-worker", lease_seconds=60).verdict == "busy"
    lease_ms = int(client.hget(keys.operation(expired), "lease_until"))  # as old workers read it
    assert abs(lease_ms - (time.time() + 60) * 1000) < 5000


def test_settling_late_keeps_the_event_index_as_long_as_the_record(
    store: Store, client: redis.Redis
) -> None:
    """A retry or replay settles long after the fan-out and renews the record's time to
    live; the index must not expire before the record it lists."""
    operation = cancel()
    store.records.mark_queued([operation])
    client.expire(keys.event_index(operation.crm_event_id), 5)  # as if queued a month ago
    claim = store.claims.claim(operation, "task-1", lease_seconds=60)
    store.claims.settle(operation, claim, State.FAILED, error="gave up")
    assert client.ttl(keys.event_index(operation.crm_event_id)) > 29 * 86400
    client.expire(keys.event_index(operation.crm_event_id), 5)
    store.claims.reopen(operation, force=False, actor="cli:test")
    assert client.ttl(keys.event_index(operation.crm_event_id)) > 29 * 86400
