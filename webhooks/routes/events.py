"""`POST /v1/events`: JSON for Flow/Apex callouts and other systems.

One event `{"action": "cancel", "crmEventId": "00U…"}` or `{"events": [...]}` (at most 100),
`Authorization: Bearer <secret>`, optional `Idempotency-Key`. Answers 202 with an outcome per
event: queued, duplicate (earlier in this request) or rejected with the reason. Events go
through the same triage as Outbound Messages; an item that is no event at all is rejected
before it, alone.

Under an `Idempotency-Key` (the IETF httpapi draft, see `worker.store.idempotency`), the same
key with the same body answers the first answer again, status and body, with no new publish;
with another body 422; while the first request is still being handled 409. Keys are the
caller's own: two tokens' equal keys never meet.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from flask import Blueprint, Response, current_app, request

from webhooks.auth import bearer, verify_token
from webhooks.body import read_json
from webhooks.errors import answer_in_json
from webhooks.extension import edge
from webhooks.schemas import Event, EventBatch, InvalidEvent, parse
from worker.domain.notifications import Disposition, Notification, Verdict, triage
from worker.errors import MalformedRequest
from worker.ingest import Batch
from worker.store import idempotency
from worker.store.idempotency import API_SENDER, Answer
from worker.tasks.publish import submit

log = logging.getLogger(__name__)
blueprint = Blueprint("events", __name__)
answer_in_json(blueprint)
MAX_IDEMPOTENCY_KEY = 200
ACCEPTED = 202


@blueprint.post("/v1/events")
def receive() -> Response:
    current = edge()
    settings = current.settings
    matched = verify_token(bearer(request.headers.get("Authorization")), settings.webhook_tokens)
    document = read_json()
    batch = parse(EventBatch, document)
    idempotency_key = _idempotency_key()
    if idempotency_key is None:
        return _shown_as_json(_accept(batch, f"{API_SENDER}:{uuid.uuid4().hex}"))

    token = settings.webhook_tokens[matched].get_secret_value()
    source = idempotency.source_id(token, idempotency_key)
    records = current.idempotency
    held = records.begin(source, _fingerprint(document))
    if isinstance(held, Answer):
        log.info("events: the first answer again, for a reused Idempotency-Key")
        return _shown_as_json(held)
    try:
        answer = _accept(batch, source)
    except Exception:
        # Not accepted after all (the broker refused, or worse): give the key back so that
        # the caller's retry goes through. Had the events reached the broker, the retry's
        # copy is deduped by the fan-out, on this same source ID.
        try:
            records.release(held)
        except redis.RedisError:
            log.warning("events: could not give an Idempotency-Key back; it runs out by itself")
        raise
    try:
        if not records.settle(held, answer):
            log.warning("events: a later request under the same Idempotency-Key recorded first")
    except redis.RedisError as exc:
        # The events are in the broker: say so. The claim runs out, and a retry publishes
        # again, which the fan-out dedupes.
        log.warning("events: queued, but the Idempotency-Key's answer was not recorded: %s", exc)
    return _shown_as_json(answer)


def _accept(batch: EventBatch, source_id: str) -> Answer:
    """Triage `batch`, hand its operations to the broker and say what became of each event."""
    current = edge()
    events = [item for item in batch.events if isinstance(item, Event)]
    triaged = triage(
        [Notification("", event.crm_event_id, action=event.action) for event in events],
        None,
        current.settings.salesforce_id_prefixes,
        source_id=source_id,
    )
    verdicts = _in_order(batch.events, triaged.verdicts)
    with current.metrics.enqueue_seconds.time():
        submit(current.celery, Batch(API_SENDER, triaged.operations), current.ingests)

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
    return Answer(ACCEPTED, current_app.json.dumps({"results": results, **counts}))


def _shown_as_json(answer: Answer) -> Response:
    """One way to write an answer, so that a replayed one is the first, byte for byte."""
    return Response(answer.body, status=answer.status, mimetype="application/json")


def _in_order(items: list[Event | InvalidEvent], verdicts: list[Verdict]) -> list[Verdict]:
    """One verdict per item, in order: triage's for the events, a rejection for the rest."""
    of_events = iter(verdicts)
    return [
        next(of_events)
        if isinstance(item, Event)
        else Verdict(Disposition.REJECTED, reason=item.reason)
        for item in items
    ]


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


def _fingerprint(document: Any) -> str:
    try:
        return idempotency.fingerprint(document)
    except RecursionError:  # read, but too deep to write out again
        raise MalformedRequest("body nests too deeply to be read") from None
