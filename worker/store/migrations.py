"""One-off migrations of what earlier versions wrote, applied once per Redis.

Each migration is idempotent and recorded in one hash when done, so workers that start
together may both run it without harm, and later starts skip it. Workers apply pending
migrations in the background at start-up; `crmhook migrate` applies them by hand.

1. `event-index`: records written before the per-event index existed are added to it, and
   their times (then milliseconds) are rewritten in seconds. It scans the keyspace once;
   on Redis Cluster, run `crmhook migrate` against each primary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis

from worker.store import keys
from worker.store.connection import text
from worker.store.records import Records, seconds

log = logging.getLogger(__name__)
SCAN_BATCH = 500
# The `_at` times; `lease_until` stays in milliseconds, as every version reads it.
_TIMES = ("created_at", "updated_at", "succeeded_at", "replayed_at")


def index_events(client: redis.Redis, records: Records) -> int:
    """Index every operation record under its event; rewrite millisecond times in seconds.
    Returns how many records it saw."""
    seen = 0
    for batch in _batches(client.scan_iter(match=keys.OPERATION_PATTERN, count=SCAN_BATCH)):
        reads = client.pipeline(transaction=False)
        for key in batch:
            reads.hmget(key, ["crm_event_id", *_TIMES])
        pipe = client.pipeline(transaction=False)
        for key, (event, *times) in zip(batch, reads.execute(), strict=True):
            if not event:
                continue
            records.index(pipe, text(event), key)
            rewritten: dict[Any, Any] = {
                name: f"{seconds(value):.3f}"
                for name, value in zip(_TIMES, times, strict=True)
                if value is not None and seconds(value) != float(value)
            }
            if rewritten:
                pipe.hset(key, mapping=rewritten)
            seen += 1
        pipe.execute()
    return seen


MIGRATIONS: dict[str, Callable[[redis.Redis, Records], int]] = {"event-index": index_events}


def pending(client: redis.Redis) -> list[str]:
    """Names of the migrations not yet applied to this Redis, in order."""
    done = client.hkeys(keys.MIGRATIONS)
    return [name for name in MIGRATIONS if name not in {text(d) for d in done}]


def apply(client: redis.Redis, records: Records) -> dict[str, int]:
    """Apply every pending migration; returns what each one saw."""
    applied = {}
    for name in pending(client):
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
