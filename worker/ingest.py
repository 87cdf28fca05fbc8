"""From validated notifications to queued operations, in two steps.

1. `submit` (on the request path): the whole message's valid operations and rejections go to
   the broker as ONE fan-out task: one publish per message, not one per notification, so the
   edge answers in milliseconds. The Ack is sent only after this returns.
2. `fan_out` (in the worker): quarantine the rejections, skip notifications already queued by
   an earlier delivery, record the rest as queued and publish one task per operation.

A crash between the two is safe: the fan-out message is acknowledged only after it ran, and a
redelivered fan-out re-queues what it had claimed (the claim in `effects` absorbs duplicates).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import KombuError, OperationalError

from worker.domain.notifications import Rejection
from worker.domain.operations import Action, Operation
from worker.errors import QueueUnavailable
from worker.store.claims import Store

FAN_OUT_TASK = "crmhook.fan_out"
PERFORM_TASK = "crmhook.perform"


@dataclass(frozen=True)
class Batch:
    """One inbound message's work: what to queue and what to quarantine.

    `organization_id` names the sender (`api` for JSON callers); `action` is the route's
    action, recorded with the rejections (operations carry their own).
    """

    organization_id: str
    operations: list[Operation] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    action: Action | None = None
    received_at: float = field(default_factory=time.time)

    def to_message(self) -> dict[str, Any]:
        return {
            "action": self.action.value if self.action else None,
            "organization_id": self.organization_id,
            "received_at": self.received_at,
            "operations": [operation.to_message() for operation in self.operations],
            "rejections": [rejection.to_message() for rejection in self.rejections],
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Batch:
        return cls(
            action=Action(message["action"]) if message["action"] else None,
            organization_id=message["organization_id"],
            received_at=message["received_at"],
            operations=[Operation.from_message(m) for m in message["operations"]],
            rejections=[Rejection(**r) for r in message["rejections"]],
        )


BROKER_ERRORS = (OperationalError, KombuError, redis.RedisError, OSError)


def submit(app: Celery, batch: Batch) -> None:
    """Hand `batch` to the broker, or raise QueueUnavailable (the caller answers 503)."""
    if not batch.operations and not batch.rejections:
        return
    try:
        app.send_task(FAN_OUT_TASK, args=[batch.to_message()])
    except BROKER_ERRORS as exc:
        raise QueueUnavailable(f"the broker did not take the message: {exc}") from exc


def publish(app: Celery, operations: list[Operation]) -> None:
    """Enqueue one task per operation whose record is already written (a replay), over one
    connection; QueueUnavailable if the broker refuses (the lost-message sweeper would
    still enqueue them later, from the store)."""
    if not operations:
        return
    try:
        with app.producer_or_acquire() as producer:
            for operation in operations:
                app.send_task(PERFORM_TASK, args=[operation.to_message()], producer=producer)
    except BROKER_ERRORS as exc:
        raise QueueUnavailable(f"the broker did not take the message: {exc}") from exc


@dataclass(frozen=True)
class FanOut:
    queued: list[Operation]
    skipped: int
    quarantined: int


def fan_out(
    store: Store, batch: Batch, *, ingest_id: str, enqueue: Callable[[Operation], None]
) -> FanOut:
    """Quarantine, dedupe on notification ID, record and enqueue one batch."""
    quarantined = batch.rejections
    # Rejections carry received_at from the edge, so a redelivered fan-out stores the same
    # entries again rather than new ones.
    if quarantined and batch.action is not None:
        store.quarantine(batch.action, batch.organization_id, quarantined, at=batch.received_at)
    fresh = store.first_sightings(batch.operations, ingest_id)
    store.mark_queued(fresh)
    for operation in fresh:
        enqueue(operation)
    skipped = len(batch.operations) - len(fresh)
    if skipped:
        logging.getLogger(__name__).info("skipped %d notification(s) already queued", skipped)
    return FanOut(queued=fresh, skipped=skipped, quarantined=len(quarantined))
