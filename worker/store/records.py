"""Operation records as the fan-out writes them and as operators read them.

The fan-out marks each notification as seen (the edge dedupe), creates the record as
`queued` (or reopens a dead letter for a new notification), remembers the notification among
its sources, stamps it pending, and adds its key to the event's index, all in one pipelined
round trip per message. Reading decodes a record
for people: times in epoch seconds, the `crm-get` result as JSON, sources and audit trail.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis

from worker.domain.operations import Operation
from worker.store import keys, lua
from worker.store.connection import text
from worker.store.dead_letters import DeadLetters
from worker.store.pending import Pending
from worker.store.retention import Retention


def seconds(milliseconds: Any) -> float:
    """A stored time (integer epoch milliseconds, see `lua`) as the epoch seconds that every
    interface speaks."""
    return int(float(milliseconds)) / 1000


class Records:
    def __init__(
        self,
        client: redis.Redis,
        retention: Retention,
        pending: Pending,
        dead_letters: DeadLetters,
    ) -> None:
        self._redis = client
        self._retention = retention
        self._pending = pending
        self._dead_letters = dead_letters
        self._enqueue = client.register_script(lua.ENQUEUE)

    # --- writing, by the fan-out ----------------------------------------------------------

    def first_sightings(self, operations: Iterable[Operation], ingest_id: str) -> list[Operation]:
        """The operations whose notification this ingest is the first to queue.

        Each notification gets a marker naming the ingest that queues it. A marker naming
        *this* ingest means we are its redelivery after a crash mid-fan-out, so the
        operation is queued again (over-enqueue is safe, the claim guards; under-enqueue
        would lose it). One pipelined round trip for the whole batch.
        """
        operations = list(operations)
        pipe = self._redis.pipeline(transaction=False)
        for operation in operations:
            marker = keys.seen(operation)
            pipe.set(marker, ingest_id, nx=True, ex=self._retention.notification_seconds)
            pipe.get(marker)
        replies = pipe.execute()
        fresh = []
        for index, operation in enumerate(operations):
            created, holder = replies[2 * index], replies[2 * index + 1]
            if created or holder == ingest_id:
                fresh.append(operation)
        return fresh

    def mark_queued(self, operations: Iterable[Operation]) -> None:
        """Ask for each operation: create its record as queued (or reopen a dead letter that
        this source has not asked for before, with a fresh budget: `lua.ENQUEUE`), stamp it
        pending and index it under its event. One round trip, and one more to take reopened
        dead letters off their index."""
        operations = list(operations)
        pipe = self._redis.pipeline(transaction=False)
        for operation in operations:
            key = keys.operation(operation)
            self._enqueue(
                keys=[key, keys.sources(key)],
                args=[
                    operation.action.value,
                    operation.crm_event_id,
                    operation.source_id,
                    self._retention.for_operation(operation),
                    "1" if operation.action.irreversible else "0",
                    0,
                ],
                client=pipe,
            )
            self._pending.add(pipe, key)
            self.index(pipe, operation.crm_event_id, key)
        replies = pipe.execute()
        per_operation = len(replies) // len(operations) if operations else 0
        reopened = [
            keys.operation(operation)
            for index, operation in enumerate(operations)
            if text(replies[index * per_operation]) == "reopened"
        ]
        if reopened:
            pipe = self._redis.pipeline(transaction=False)
            for key in reopened:
                self._dead_letters.remove(pipe, key)
            pipe.execute()

    def index(self, pipe: redis.client.Pipeline, crm_event_id: str, key: str) -> None:
        """Add `key` to its event's index, kept as long as the longest-kept record."""
        index = keys.event_index(crm_event_id)
        pipe.sadd(index, key)
        pipe.expire(index, self._retention.longest_seconds)

    # --- reading ----------------------------------------------------------------------------

    def read(self, key: str) -> dict[str, Any] | None:
        """The stored record of one operation key, decoded, or None."""
        return self.read_many([key])[0]

    def read_many(self, record_keys: list[str]) -> list[dict[str, Any] | None]:
        """The records of `record_keys` (None where there is none), with their sources and
        audit trail, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for key in record_keys:
            pipe.hgetall(key)
            pipe.smembers(keys.sources(key))
            pipe.lrange(keys.audit_trail(key), 0, -1)
        replies = pipe.execute()
        found: list[dict[str, Any] | None] = []
        for index, key in enumerate(record_keys):
            fields, sources, audit = replies[3 * index : 3 * index + 3]
            found.append(_decode(key, fields, sources, audit) if fields else None)
        return found

    def for_event(self, crm_event_id: str) -> list[dict[str, Any]]:
        """Every operation record of one canonical event ID (all actions), oldest first."""
        members = [text(key) for key in self._redis.smembers(keys.event_index(crm_event_id))]
        found = [record for record in self.read_many(members) if record is not None]
        # Records queued by one message share a creation time: the key breaks the tie.
        return sorted(found, key=lambda record: (record.get("created_at", 0.0), record["key"]))


# Stored times whose names do not end in `_at` (all in epoch milliseconds, see `lua`).
_TIMES = frozenset({"lease_until", "since", "doubt_since"})


def _decode(key: str, fields: dict[Any, Any], sources: Any, audit: Any) -> dict[str, Any]:
    record: dict[str, Any] = {text(name): text(value) for name, value in fields.items()}
    for name in [name for name in record if name.endswith("_at") or name in _TIMES]:
        record[name] = seconds(record[name])
    record["key"] = key
    record["sources"] = sorted(text(source) for source in sources)
    record["audit"] = [json.loads(text(entry)) for entry in audit]
    if "result" in record:
        record["result"] = json.loads(record["result"])
    return record
