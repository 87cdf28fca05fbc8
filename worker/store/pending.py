"""The index of unsettled operations, scored by when each was last handed to the broker.

The broker can lose a message (kombu's Redis transport pops it before recording it as
unacknowledged, so a Redis restart in between leaves it only in a worker's memory); this
index cannot. The dispatcher enqueues again whatever stays unsettled here for too long.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis

from worker.domain.operations import UNSETTLED, Action, Operation
from worker.store import keys
from worker.store.connection import text


class Pending:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def stamp(self, operations: Iterable[Operation], *, at: float | None = None) -> None:
        """Mark `operations` as handed to the broker now (the sweeper counts from here)."""
        moment = time.time() if at is None else at
        stamps = {keys.operation(operation): moment for operation in operations}
        if stamps:
            self._redis.zadd(keys.PENDING, stamps)

    def add(self, pipe: redis.client.Pipeline, key: str) -> None:
        pipe.zadd(keys.PENDING, {key: time.time()})

    def remove(self, pipe: redis.client.Pipeline, key: str) -> None:
        pipe.zrem(keys.PENDING, key)

    def due(self, pipe: redis.client.Pipeline, key: str) -> None:
        """Read when `key` was stamped (or is due), None when it is not in the index."""
        pipe.zscore(keys.PENDING, key)

    def restore(self, pipe: redis.client.Pipeline, key: str, *, due: float | None) -> None:
        """Put `key` back at the stamp `due` it had; when that is not known, stamp it now
        unless it is back in the index already (a newer stamp is not overwritten)."""
        if due is not None:
            pipe.zadd(keys.PENDING, {key: due})
        else:
            pipe.zadd(keys.PENDING, {key: time.time()}, nx=True)

    def stale(self, older_than: float, limit: int = 100) -> list[Operation]:
        """Unsettled operations last enqueued more than `older_than` seconds ago: their
        message may be lost. Settled ones found on the way are dropped from the index; the
        returned ones are stamped as enqueued now (the caller enqueues them)."""
        now = time.time()
        found = []
        for key in map(
            text, self._redis.zrangebyscore(keys.PENDING, "-inf", now - older_than, 0, limit)
        ):
            state, action, event, source = self._redis.hmget(
                key, ["state", "action", "crm_event_id", "source_id"]
            )
            if state is None or text(state) not in UNSETTLED or not (action and event and source):
                self._redis.zrem(keys.PENDING, key)
                continue
            self._redis.zadd(keys.PENDING, {key: now})
            found.append(Operation(Action(text(action)), text(event), text(source)))
        return found
