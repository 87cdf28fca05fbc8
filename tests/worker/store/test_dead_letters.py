"""The dead-letter indexes: pages and totals read in Redis, one index per action beside the
index of all, trimmed of expired entries, and the migration that builds the per-action ones."""

from __future__ import annotations

import time

import redis

from tests.conftest import random_event_id
from tests.worker.store.conftest import RETENTION
from worker.domain.operations import Action, Operation, State
from worker.store import Store, keys, migrations


def fail(store: Store, operation: Operation) -> str:
    """Record `operation` as failed for good, as a worker does; its key."""
    store.records.mark_queued([operation])
    claim = store.claims.claim(operation, "worker-1", 60)
    assert store.claims.settle(operation, claim, State.FAILED, error="No meeting linked")
    return keys.operation(operation)


def dead_letters(store: Store, count: int, action: Action = Action.CANCEL) -> list[str]:
    """The keys of `count` dead letters of `action`, oldest first."""
    return [
        fail(store, Operation(action, random_event_id(), random_event_id("04l")))
        for _ in range(count)
    ]


def test_a_failure_is_indexed_under_all_and_under_its_action_and_a_success_unindexes_it(
    store: Store, client: redis.Redis
) -> None:
    operation = Operation(Action.NOSHOW, random_event_id(), random_event_id("04l"))
    key = fail(store, operation)
    assert client.zscore(keys.DEAD_LETTERS, key) == client.zscore(
        keys.dead_letters_of(Action.NOSHOW), key
    )
    assert client.zcard(keys.dead_letters_of(Action.CANCEL)) == 0
    store.claims.reopen(operation, force=False, actor="cli:test")  # a replay takes it out
    assert client.zscore(keys.DEAD_LETTERS, key) is None
    assert client.zscore(keys.dead_letters_of(Action.NOSHOW), key) is None


def test_pages_and_totals_are_read_in_redis_per_action_and_since(store: Store) -> None:
    cancels = dead_letters(store, 5, Action.CANCEL)
    noshows = dead_letters(store, 4, Action.NOSHOW)
    dead = store.dead_letters
    assert [key for key, _ in dead.page(limit=3)] == noshows[::-1][:3]
    assert [key for key, _ in dead.page(offset=3, limit=3)] == [noshows[0], *cancels[::-1][:2]]
    assert [key for key, _ in dead.page(action=Action.CANCEL, offset=1, limit=2)] == [
        cancels[3],
        cancels[2],
    ]
    assert (dead.count(), dead.count(action=Action.CANCEL), dead.count(action=Action.GET)) == (
        9,
        5,
        0,
    )
    since = dead.page(action=Action.NOSHOW, offset=1, limit=1)[0][1]  # the 3rd no-show's time
    assert dead.count(since, Action.NOSHOW) == 2
    assert [key for key, _ in dead.page(since, Action.NOSHOW)] == noshows[::-1][:2]
    assert dead.count(time.time() + 60) == 0


def test_each_write_drops_entries_older_than_the_longest_retention(
    store: Store, client: redis.Redis
) -> None:
    ancient = keys.operation(Operation(Action.CANCEL, random_event_id(), ""))
    long_ago = time.time() - RETENTION.longest_seconds - 3600  # its record is long gone
    for index in (keys.DEAD_LETTERS, keys.dead_letters_of(Action.CANCEL)):
        client.zadd(index, {ancient: long_ago})
    [key] = dead_letters(store, 1, Action.CANCEL)
    for index in (keys.DEAD_LETTERS, keys.dead_letters_of(Action.CANCEL)):
        assert list(client.zrange(index, 0, -1)) == [key]


def test_forgetting_keeps_an_entry_that_failed_again_since_it_was_read(
    store: Store, client: redis.Redis
) -> None:
    first, second = dead_letters(store, 2)
    read = dict(store.dead_letters.page())
    client.zadd(keys.DEAD_LETTERS, {second: read[second] + 5})  # failed again meanwhile
    client.zadd(keys.dead_letters_of(Action.CANCEL), {second: read[second] + 5})
    assert store.dead_letters.forget(list(read.items())) == 1
    assert [key for key, _ in store.dead_letters.page()] == [second]
    assert [key for key, _ in store.dead_letters.page(action=Action.CANCEL)] == [second]
    assert first not in dict(store.dead_letters.since())


def test_the_migration_builds_the_action_indexes_and_drops_expired_entries(
    store: Store, client: redis.Redis
) -> None:
    live = dead_letters(store, 3, Action.CANCEL) + dead_letters(store, 2, Action.GET)
    expired = keys.operation(Operation(Action.NOSHOW, random_event_id(), ""))
    client.zadd(keys.DEAD_LETTERS, {expired: time.time() - 60})  # its record ran out
    scores = {key: client.zscore(keys.DEAD_LETTERS, key) for key in live}
    for action in Action:  # as a version before the per-action indexes left it
        client.delete(keys.dead_letters_of(action))
    client.hset(keys.MIGRATIONS, "event-index", "0")

    assert migrations.apply(client, store.records) == {"dead-letter-actions": 5}

    for action, wanted in ((Action.CANCEL, live[:3]), (Action.GET, live[3:])):
        indexed = client.zrange(keys.dead_letters_of(action), 0, -1, withscores=True)
        assert indexed == [(key, scores[key]) for key in wanted]  # in order, with their times
    assert client.zcard(keys.dead_letters_of(Action.NOSHOW)) == 0
    assert client.zscore(keys.DEAD_LETTERS, expired) is None
    assert store.dead_letters.count() == 5
    assert migrations.apply(client, store.records, again=True)["dead-letter-actions"] == 5


def test_running_the_migration_again_drops_what_old_workers_took_out_of_the_index_of_all(
    store: Store, client: redis.Redis
) -> None:
    replayed, still_dead = dead_letters(store, 2)
    client.zrem(keys.DEAD_LETTERS, replayed)  # an old worker knows only the index of all
    assert migrations.index_dead_letters_by_action(client, store.records) == 1
    assert [key for key, _ in store.dead_letters.page(action=Action.CANCEL)] == [still_dead]


def test_the_migration_copies_a_large_index_in_batches(store: Store, client: redis.Redis) -> None:
    """More entries than one SCAN batch; made with plain writes, it stays fast."""
    operations = [Operation(Action.CANCEL, random_event_id(), "") for _ in range(1200)]
    pipe = client.pipeline(transaction=False)
    for index, operation in enumerate(operations):
        pipe.hset(keys.operation(operation), "state", "failed")
        pipe.zadd(keys.DEAD_LETTERS, {keys.operation(operation): 1_000_000 + index})
    pipe.execute()
    started = time.perf_counter()
    assert migrations.index_dead_letters_by_action(client, store.records) == 1200
    print(f"\n[migration] 1200 dead letters indexed in {time.perf_counter() - started:.3f} s")
    assert client.zcard(keys.dead_letters_of(Action.CANCEL)) == 1200
