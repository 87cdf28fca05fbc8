"""Long retries, kept in Redis by due time.

A retry due in minutes or hours cannot wait in the broker as a Celery countdown: the worker
holds such a message unacknowledged, and past the visibility timeout the broker hands it out
again, and again (kombu#337). So it waits here, and the dispatcher enqueues it when due.
Dispatch is at-least-once (an entry is leased, published, then removed); the claim absorbs a
duplicate.
"""

from __future__ import annotations

import json
import time
import uuid

import redis

from worker.domain.operations import Operation
from worker.store import keys, lua
from worker.store.connection import text


class Schedule:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._take_due = client.register_script(lua.TAKE_DUE)

    def add(self, operation: Operation, due: float) -> None:
        """Run `operation` again at `due` (epoch seconds). Each entry is unique, so a
        dispatcher removing an entry it dispatched never removes a newer one."""
        member = json.dumps({"operation": operation.to_message(), "nonce": uuid.uuid4().hex})
        self._redis.zadd(keys.SCHEDULE, {member: due})

    def take_due(self, lease_seconds: float, limit: int = 100) -> list[tuple[str, Operation]]:
        """Entries due now, leased for `lease_seconds`; `done(entry)` once re-enqueued."""
        members = self._take_due(keys=[keys.SCHEDULE], args=[time.time(), lease_seconds, limit])
        taken = []
        for member in members:
            entry = text(member)
            taken.append((entry, Operation.from_message(json.loads(entry)["operation"])))
        return taken

    def done(self, entry: str) -> None:
        self._redis.zrem(keys.SCHEDULE, entry)
