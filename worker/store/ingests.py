"""Inbound messages between their Ack and their fan-out.

Salesforce is acknowledged once a message's fan-out task is in the broker, but the broker
can still lose it: kombu's Redis transport pops a message before it records it as
unacknowledged, so a worker killed (or a Redis restarted) in between forgets it. The store
does not: the edge records the batch here in a pipeline ahead of the publish, the fan-out
forgets it once every operation is queued, and the dispatcher publishes again a fan-out
still recorded long after (REQUEUE_AFTER_SECONDS). The record's ID is the fan-out's task ID,
so a fan-out published again is known as the same ingest (`Records.first_sightings`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from typing import Any

import redis

from worker.errors import NotDurable
from worker.store import keys, lua
from worker.store.connection import text
from worker.store.durability import Durability

log = logging.getLogger(__name__)


class Ingests:
    def __init__(
        self, client: redis.Redis, retention_seconds: int, durability: Durability | None = None
    ) -> None:
        self._redis = client
        self._retention_seconds = retention_seconds
        self._durability = durability or Durability(client)
        self._take_due = client.register_script(lua.TAKE_DUE)

    def record(self, message: dict[str, Any]) -> str:
        """Keep a fan-out message until `forget`, and return its ingest ID (its task ID).

        The record is what the Ack promises, so it is durable before this returns: on a
        replica when the store has one (`Durability`; NotDurable when none confirmed it in
        time, and the sender is answered 503: the record is then taken back, though a copy
        left behind would be harmless, as notification IDs make its fan-out skip what a
        later delivery queued)."""
        ingest_id = uuid.uuid4().hex
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(
            keys.ingest(ingest_id),
            json.dumps(message, ensure_ascii=False),
            ex=self._retention_seconds,
        )
        pipe.zadd(keys.INGESTS, {ingest_id: time.time()})
        try:
            self._durability.execute(pipe)
        except NotDurable:
            with contextlib.suppress(redis.RedisError):
                self.forget(ingest_id)
            raise
        return ingest_id

    def forget(self, ingest_id: str) -> None:
        """The fan-out of `ingest_id` is done (or was never accepted)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(keys.INGESTS, ingest_id)
        pipe.delete(keys.ingest(ingest_id))
        pipe.execute()

    def unfinished(self, older_than: float, limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
        """(ingest ID, fan-out message) of ingests recorded or last published more than
        `older_than` seconds ago: their message may be lost. Taken atomically (stamped as
        published now), so that of several dispatchers one publishes each."""
        now = time.time()
        taken = [
            text(member)
            for member in self._take_due(
                keys=[keys.INGESTS], args=[now - older_than, older_than, limit]
            )
        ]
        if not taken:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for ingest_id in taken:  # one GET each, not MGET: each record has its own hash slot
            pipe.get(keys.ingest(ingest_id))
        messages = pipe.execute()
        found = []
        for ingest_id, message in zip(taken, messages, strict=True):
            if message is None:  # expired: nothing left to publish
                log.error("ingest %s expired before its fan-out ran; dropped", ingest_id)
                self._redis.zrem(keys.INGESTS, ingest_id)
                continue
            found.append((ingest_id, json.loads(text(message))))
        return found

    def count(self) -> int:
        return int(self._redis.zcard(keys.INGESTS))
