"""From validated notifications to queued operations, in two steps.

1. `tasks.publish.submit` (on the request path): the whole message's valid operations and
   rejections go to the broker as ONE fan-out task. The Ack is sent only after it returns.
2. `fan_out` (in the worker): quarantine the rejections, skip notifications already queued by
   an earlier delivery, record the rest as queued and publish one task per operation.

A crash between the two is safe: the fan-out message is acknowledged only after it ran, and a
redelivered fan-out re-queues what it had claimed (the claim in `effects` absorbs duplicates).
A fan-out message the broker lost is published again from the store's copy of the batch
(`store.ingests`), under the same ingest ID.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.domain.notifications import Rejection
from worker.domain.operations import MESSAGE_VERSION, Action, Operation
from worker.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """One inbound message's work: what to queue and what to quarantine.

    `organization_id` names the sender (`api` for JSON callers); `action` is the route's
    action, recorded with the rejections (operations carry their own). `received_at` is
    epoch seconds.
    """

    organization_id: str
    operations: list[Operation] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    action: Action | None = None
    received_at: float = field(default_factory=time.time)

    def to_message(self) -> dict[str, Any]:
        return {
            "v": MESSAGE_VERSION,
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


@dataclass(frozen=True)
class FanOut:
    queued: list[Operation]
    skipped: int
    quarantined: int


def fan_out(
    store: Store,
    batch: Batch,
    *,
    ingest_id: str,
    publish: Callable[[Sequence[Operation]], None],
) -> FanOut:
    """Quarantine, dedupe on notification ID, record and publish one batch."""
    quarantined = batch.rejections
    # Rejections carry received_at from the edge, so a redelivered fan-out stores the same
    # entries again rather than new ones.
    if quarantined and batch.action is not None:
        store.quarantine.add(batch.action, batch.organization_id, quarantined, at=batch.received_at)
    fresh = store.records.first_sightings(batch.operations, ingest_id)
    store.records.mark_queued(fresh)
    publish(fresh)
    store.ingests.forget(ingest_id)
    skipped = len(batch.operations) - len(fresh)
    if skipped:
        log.info("skipped %d notification(s) already queued", skipped)
    return FanOut(queued=fresh, skipped=skipped, quarantined=len(quarantined))
