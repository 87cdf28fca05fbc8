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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

import redis

from worker.store import keys
from worker.store.connection import text
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


MIGRATIONS: dict[str, Callable[[redis.Redis, Records], int]] = {"event-index": index_events}


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
