"""The idempotency store in Redis: operation records and their claims, indexes, the retry
schedule, dead letters, the quarantine and the audit trail. Every key is built in `keys`."""

from __future__ import annotations

import redis

from worker.store.audit import Audit
from worker.store.claims import Claims
from worker.store.dead_letters import DeadLetters
from worker.store.durability import Durability
from worker.store.holds import Holds
from worker.store.ingests import Ingests
from worker.store.pending import Pending
from worker.store.quarantine import Quarantine
from worker.store.records import Records
from worker.store.retention import Retention
from worker.store.schedule import Schedule

__all__ = ["Retention", "Store"]


class Store:
    """The store's rooms over one Redis client: each owns its keys and its scripts."""

    def __init__(self, client: redis.Redis, retention: Retention) -> None:
        self.redis = client
        self.retention = retention
        self.pending = Pending(client)
        self.dead_letters = DeadLetters(client)
        self.durability = Durability(client)
        self.records = Records(client, retention, self.pending, self.dead_letters)
        self.claims = Claims(
            client, retention, self.pending, self.dead_letters, self.records, self.durability
        )
        self.schedule = Schedule(client)
        self.quarantine = Quarantine(client, retention.quarantine_seconds)
        self.audit = Audit(client, retention.action_seconds)
        self.ingests = Ingests(client, retention.notification_seconds, self.durability)
        self.holds = Holds(client, self.dead_letters, retention)
