"""One-off migrations of what earlier versions wrote, applied once per Redis.

Each migration only adds what is missing and is recorded in one hash when done, so workers
that start together may both run it without harm, and later starts skip it. Workers apply
pending migrations in a background thread at start-up; `crmhook migrate` applies them by
hand, and `crmhook migrate --again` runs them once more (after a rolling upgrade, for what
old workers wrote meanwhile).

1. `event-index`: records written before the per-event index existed are added to it. It
   reads the event ID of each record and writes only to the index, never to the record, so
   it cannot bring back a record that expires meanwhile. It scans the keyspace once; on Redis
   Cluster, run `crmhook migrate` against each primary (a SCAN sees one node).
2. `dead-letter-actions`: the per-action indexes of dead letters are built from the index of
   all, each entry with its score; entries whose record has expired are dropped from the
   index of all instead. An entry that is not (or no longer) in the index of all, replayed
   while it was copied or by a worker of the older version (`--again`), is taken out of its
   action's index, so the two agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

import redis

from worker.domain.operations import Action
from worker.store import keys
from worker.store.connection import text
from worker.store.dead_letters import DeadLetters
from worker.store.records import Records

log = logging.getLogger(__name__)
SCAN_BATCH = 500


def index_events(client: redis.Redis, records: Records) -> int:
    """Index every operation record under its event. Returns how many it indexed."""
    indexed = 0
    for batch in _batches(client.scan_iter(match=keys.OPERATION_PATTERN, count=SCAN_BATCH)):
        reads = client.pipeline(transaction=False)
        for key in batch:
            reads.hget(key, "crm_event_id")
        pipe = client.pipeline(transaction=False)
        for key, event in zip(batch, reads.execute(), strict=True):
            if event:  # a record that expired since the scan saw it has none: skipped
                records.index(pipe, text(event), key)
                indexed += 1
        pipe.execute()
    return indexed


def index_dead_letters_by_action(client: redis.Redis, _records: Records) -> int:
    """Copy every dead letter whose record still exists into its action's index, keeping
    its score (when it failed). Returns how many it indexed."""
    dead_letters = DeadLetters(client)
    indexed = 0
    scanned = client.zscan_iter(keys.DEAD_LETTERS, count=SCAN_BATCH)
    for batch in _batches_of_entries(scanned):
        exists = client.pipeline(transaction=False)
        for key, _ in batch:
            exists.exists(key)
        found = exists.execute()
        live = [entry for entry, there in zip(batch, found, strict=True) if there]
        dead_letters.forget([entry for entry, there in zip(batch, found, strict=True) if not there])
        copy = client.pipeline(transaction=False)
        for key, failed_at in live:
            action = keys.action_of(key)
            if action is not None:  # never otherwise: only operation keys are indexed
                copy.zadd(keys.dead_letters_of(action), {key: failed_at}, nx=True)
                indexed += 1
        copy.execute()
        # Replayed while we copied: out of the index of all, so out of its action's too.
        indexed -= _forget_unlisted(client, dead_letters, live)
    for action in Action:  # what workers of the older version took out of the index of all
        scanned = client.zscan_iter(keys.dead_letters_of(action), count=SCAN_BATCH)
        for batch in _batches_of_entries(scanned):
            _forget_unlisted(client, dead_letters, batch)
    return indexed


def _forget_unlisted(
    client: redis.Redis, dead_letters: DeadLetters, entries: list[tuple[str, float]]
) -> int:
    """Take out of their action's index the `entries` no longer in the index of all (unless
    failed again meanwhile, with a new score). Returns how many were not listed."""
    check = client.pipeline(transaction=False)
    for key, _ in entries:
        check.zscore(keys.DEAD_LETTERS, key)
    gone = [entry for entry, score in zip(entries, check.execute(), strict=True) if score is None]
    dead_letters.forget(gone)
    return len(gone)


MIGRATIONS: dict[str, Callable[[redis.Redis, Records], int]] = {
    "event-index": index_events,
    "dead-letter-actions": index_dead_letters_by_action,
}


def pending(client: redis.Redis) -> list[str]:
    """Names of the migrations not yet applied to this Redis, in order."""
    done = {text(name) for name in client.hkeys(keys.MIGRATIONS)}
    return [name for name in MIGRATIONS if name not in done]


def apply(client: redis.Redis, records: Records, *, again: bool = False) -> dict[str, int]:
    """Apply every pending migration (every migration with `again`); returns what each did."""
    applied = {}
    for name in list(MIGRATIONS) if again else pending(client):
        count = MIGRATIONS[name](client, records)
        client.hset(keys.MIGRATIONS, name, f"{time.time():.3f}")
        log.info("migration %s applied: %d record(s)", name, count)
        applied[name] = count
    return applied


def _batches(items: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(text(item))
        if len(batch) == SCAN_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _batches_of_entries(
    entries: Iterable[tuple[bytes | str, float]],
) -> Iterator[list[tuple[str, float]]]:
    batch: list[tuple[str, float]] = []
    for member, score in entries:
        batch.append((text(member), float(score)))
        if len(batch) == SCAN_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
