"""`POST /v1/events`: JSON for Flow/Apex callouts and other systems.

One event `{"action": "cancel", "crmEventId": "00U…"}` or `{"events": [...]}` (at most 100),
`Authorization: Bearer <secret>`, optional `Idempotency-Key`. Answers 202 with an outcome per
event: queued, duplicate (earlier in this request, or the whole request under a reused
`Idempotency-Key`) or rejected with the reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request

from webhooks.app import edge
from webhooks.auth import bearer, verify_token
from webhooks.body import read_body
from worker.domain.operations import Operation, parse_action
from worker.domain.salesforce_ids import canonical_id, require_prefix
from worker.errors import IngressError, MalformedRequest, QueueUnavailable
from worker.ingest import Batch
from worker.store import keys
from worker.tasks.publish import submit

log = logging.getLogger(__name__)
blueprint = Blueprint("events", __name__)
MAX_EVENTS = 100
MAX_IDEMPOTENCY_KEY = 200
API_SENDER = "api"


@blueprint.post("/v1/events")
def receive() -> tuple[Response, int]:
    current = edge()
    settings = current.settings
    verify_token(bearer(request.headers.get("Authorization")), settings.webhook_tokens)
    items = _events(read_body())
    idempotency_key = _idempotency_key()
    source_id = f"api:{idempotency_key or uuid.uuid4().hex}"

    results: list[dict[str, Any]] = []
    operations: list[Operation] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        outcome: dict[str, Any] = {"index": index}
        try:
            action = parse_action(_string(item, "action"))
            event_id = require_prefix(
                canonical_id(_string(item, "crmEventId")), settings.salesforce_id_prefixes
            )
        except ValueError as exc:  # InvalidSalesforceId is a ValueError too
            outcome.update(outcome="rejected", reason=str(exc))
            results.append(outcome)
            continue
        operation = Operation(action, event_id, source_id)
        outcome.update(action=action.value, crmEventId=event_id)
        if operation.identity in seen:
            outcome["outcome"] = "duplicate"
        else:
            seen.add(operation.identity)
            operations.append(operation)
            outcome["outcome"] = "queued"
        results.append(outcome)

    if operations and idempotency_key and not _first_use(idempotency_key):
        for outcome in results:
            if outcome["outcome"] == "queued":
                outcome["outcome"] = "duplicate"
        operations = []
    try:
        with current.metrics.enqueue_seconds.time():
            submit(current.celery, Batch(API_SENDER, operations))
    except QueueUnavailable:
        if idempotency_key:  # not accepted after all: let the caller's retry through
            _forget(idempotency_key)
        raise
    for outcome in results:
        current.metrics.notifications.labels(
            outcome.get("action", "unknown"), outcome["outcome"]
        ).inc()
    counts = {
        name: sum(1 for r in results if r["outcome"] == name)
        for name in ("queued", "duplicate", "rejected")
    }
    log.info("events: %(queued)d queued, %(duplicate)d duplicate, %(rejected)d rejected", counts)
    return _json({"results": results, **counts}, 202)


def _events(body: bytes) -> list[Any]:
    try:
        document = json.loads(body)
    except ValueError:
        raise MalformedRequest("body is not JSON") from None
    except RecursionError:
        raise MalformedRequest("body nests too deeply to be an event list") from None
    if not isinstance(document, dict):
        raise MalformedRequest('expected a JSON object: one event or {"events": [...]}')
    items = document.get("events", [document])
    if not isinstance(items, list) or not items:
        raise MalformedRequest('"events" must be a non-empty list')
    if len(items) > MAX_EVENTS:
        raise MalformedRequest(f"at most {MAX_EVENTS} events per request, got {len(items)}")
    return items


def _string(item: Any, name: str) -> str:
    value = item.get(name) if isinstance(item, dict) else None
    if not isinstance(value, str):
        raise ValueError(f"{name!r} is required and must be a string")
    return value


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


@blueprint.errorhandler(IngressError)
def refuse(error: IngressError) -> tuple[Response, int]:
    response, status = _json({"error": error.message}, error.status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="crmhook"'
    return response, status


@blueprint.errorhandler(QueueUnavailable)
def unavailable(error: QueueUnavailable) -> tuple[Response, int]:
    log.error("events not queued: %s", error)
    response, status = _json({"error": "temporarily unable to queue events; retry later"}, 503)
    response.headers["Retry-After"] = "5"
    return response, status


def _json(body: dict[str, Any], status: int) -> tuple[Response, int]:
    edge().metrics.requests.labels("events", str(status)).inc()
    return jsonify(body), status
