"""`POST /v1/events`: JSON for Flow/Apex callouts and other systems.

One event `{"action": "cancel", "crmEventId": "00U…"}` or `{"events": [...]}` (at most 100),
`Authorization: Bearer <secret>`, optional `Idempotency-Key`. Answers 202 with an outcome per
event: queued, duplicate (earlier in this request, or the whole request under a reused
`Idempotency-Key`) or rejected with the reason. Events go through the same triage as
Outbound Messages; an item that is no event at all is rejected before it, alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request

from webhooks.auth import bearer, verify_token
from webhooks.body import read_json
from webhooks.errors import answer_in_json
from webhooks.extension import edge
from webhooks.schemas import Event, EventBatch, InvalidEvent, parse
from worker.domain.notifications import Disposition, Notification, Verdict, triage
from worker.errors import MalformedRequest, QueueUnavailable
from worker.ingest import Batch
from worker.store import keys
from worker.tasks.publish import submit

log = logging.getLogger(__name__)
blueprint = Blueprint("events", __name__)
answer_in_json(blueprint)
MAX_IDEMPOTENCY_KEY = 200
API_SENDER = "api"


@blueprint.post("/v1/events")
def receive() -> tuple[Response, int]:
    current = edge()
    settings = current.settings
    verify_token(bearer(request.headers.get("Authorization")), settings.webhook_tokens)
    batch = parse(EventBatch, read_json())
    idempotency_key = _idempotency_key()

    events = [item for item in batch.events if isinstance(item, Event)]
    triaged = triage(
        [Notification("", event.crm_event_id, action=event.action) for event in events],
        None,
        settings.salesforce_id_prefixes,
        source_id=f"{API_SENDER}:{idempotency_key or uuid.uuid4().hex}",
    )
    operations = triaged.operations
    verdicts = _in_order(batch.events, triaged.verdicts)
    if operations and idempotency_key and not _first_use(idempotency_key):
        verdicts = [_as_repeated(verdict) for verdict in verdicts]
        operations = []
    try:
        with current.metrics.enqueue_seconds.time():
            submit(current.celery, Batch(API_SENDER, operations))
    except QueueUnavailable:
        if idempotency_key:  # not accepted after all: let the caller's retry through
            _forget(idempotency_key)
        raise

    results = [_shown(index, verdict) for index, verdict in enumerate(verdicts)]
    for result in results:
        current.metrics.notifications.labels(
            result.get("action", "unknown"), result["outcome"]
        ).inc()
    counts = {
        kind.value: sum(1 for verdict in verdicts if verdict.disposition is kind)
        for kind in Disposition
    }
    log.info("events: %(queued)d queued, %(duplicate)d duplicate, %(rejected)d rejected", counts)
    return jsonify({"results": results, **counts}), 202


def _in_order(items: list[Event | InvalidEvent], verdicts: list[Verdict]) -> list[Verdict]:
    """One verdict per item, in order: triage's for the events, a rejection for the rest."""
    of_events = iter(verdicts)
    return [
        next(of_events)
        if isinstance(item, Event)
        else Verdict(Disposition.REJECTED, reason=item.reason)
        for item in items
    ]


def _as_repeated(verdict: Verdict) -> Verdict:
    """The verdict under a reused `Idempotency-Key`: what would be queued was queued before."""
    if verdict.disposition is not Disposition.QUEUED:
        return verdict
    return dataclasses.replace(verdict, disposition=Disposition.DUPLICATE)


def _shown(index: int, verdict: Verdict) -> dict[str, Any]:
    shown: dict[str, Any] = {"index": index, "outcome": verdict.disposition.value}
    if verdict.operation is not None:
        shown.update(
            action=verdict.operation.action.value, crmEventId=verdict.operation.crm_event_id
        )
    if verdict.reason:
        shown["reason"] = verdict.reason
    return shown


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise MalformedRequest(
            f"Idempotency-Key must be printable and at most {MAX_IDEMPOTENCY_KEY} characters"
        )
    return key or None


def _first_use(key: str) -> bool:
    """Record `key` for the retention window; False if a request already used it."""
    current = edge()
    try:
        return bool(
            current.redis.set(
                keys.idempotency(key), "1", nx=True, ex=current.settings.get_key_ttl_seconds
            )
        )
    except redis.RedisError as exc:
        raise QueueUnavailable(f"Redis did not answer: {exc}") from exc


def _forget(key: str) -> None:
    with contextlib.suppress(redis.RedisError):
        edge().redis.delete(keys.idempotency(key))
