"""`/admin/…`: the operator's commands as JSON, for dashboards and runbooks that cannot shell in.

The same `Operator` as `crmhook` does the work, so the CLI and the API cannot drift apart.
`Authorization: Bearer` with a token from ADMIN_TOKENS: 401 without one or with an unknown
one, 403 when its scope (`read`) does not allow a change (RFC 6750). The token's name is the
actor in the audit trail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request

from webhooks.app import edge
from webhooks.auth import verify_admin
from webhooks.body import read_body
from worker.errors import (
    IngressError,
    InsufficientScope,
    InvalidSalesforceId,
    MalformedRequest,
    MissingToken,
    NotFound,
    QueueUnavailable,
)
from worker.operator import Filters, Operator, Result, summarize
from worker.settings import AdminScope
from worker.tasks.runtime import build_store

log = logging.getLogger(__name__)
blueprint = Blueprint("admin", __name__, url_prefix="/admin")
DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_TARGETS = 1000


def _operator(scope: AdminScope) -> Operator:
    """The authenticated operator, or 401/403."""
    current = edge()
    token = verify_admin(
        request.headers.get("Authorization"), current.settings.admin_credentials, scope
    )
    store = build_store(current.settings, current.redis)
    return Operator(current.settings, store, current.celery, f"admin:{token.name}")


# --- reading -----------------------------------------------------------------------------


@blueprint.get("/operations/<path:key_or_event_id>")
def operations(key_or_event_id: str) -> Response:
    try:
        records = _operator("read").status(key_or_event_id)
    except InvalidSalesforceId as exc:
        raise MalformedRequest(str(exc)) from None
    if not records:
        raise NotFound(f"nothing recorded for {key_or_event_id[:100]}")
    return jsonify({"operations": records})


@blueprint.get("/failed")
def failed() -> Response:
    operator = _operator("read")
    offset, limit = _page()
    filters = _filters(request.args.get("action"), request.args.get("since"))
    items, total = operator.failed(filters, offset=offset, limit=limit)
    return jsonify(_paged(items, total, offset, limit))


@blueprint.get("/quarantine")
def quarantine() -> Response:
    operator = _operator("read")
    offset, limit = _page()
    entries = operator.store.quarantine.list(limit, offset)
    items = [{name: value for name, value in e.items() if name != "entry"} for e in entries]
    return jsonify(_paged(items, operator.store.quarantine.count(), offset, limit))


@blueprint.get("/audit")
def audit_log() -> Response:
    operator = _operator("read")
    _, limit = _page()
    cursor = request.args.get("cursor") or None
    if cursor is not None and not _is_stream_id(cursor):
        raise MalformedRequest("cursor: use the next_cursor of the previous page")
    items, next_cursor = operator.audit_log(limit=limit, before=cursor)
    return jsonify({"items": items, "next_cursor": next_cursor})


# --- changes -----------------------------------------------------------------------------


@blueprint.post("/replay")
def replay() -> Response:
    operator = _operator("write")
    body = _json_object()
    targets = body.get("targets")
    if (
        not isinstance(targets, list)
        or not targets
        or len(targets) > MAX_TARGETS
        or not all(isinstance(t, str) and t.strip() for t in targets)
    ):
        raise MalformedRequest(
            f'"targets" must be a list of 1 to {MAX_TARGETS} operation keys or event IDs'
        )
    force, dry_run = _flag(body, "force"), _flag(body, "dry_run")
    return _results(lambda: operator.replay(targets, force=force, dry_run=dry_run))


@blueprint.post("/replay/failed")
def replay_failed() -> Response:
    operator = _operator("write")
    body = _json_object()
    filters = _filters(_optional_string(body, "action"), _optional_string(body, "since"))
    dry_run = _flag(body, "dry_run")
    return _results(lambda: operator.replay_failed(filters, dry_run=dry_run))


@blueprint.post("/replay/quarantined")
def replay_quarantined() -> Response:
    operator = _operator("write")
    dry_run = _flag(_json_object(), "dry_run")
    return _results(lambda: operator.replay_quarantined(dry_run=dry_run))


@blueprint.post("/enqueue")
def enqueue() -> Response:
    operator = _operator("write")
    body = _json_object()
    action = _optional_string(body, "action")
    event_ids = body.get("crmEventIds")
    if action is None:
        raise MalformedRequest('"action" is required: get, noshow or cancel')
    _filters(action, None)  # a clear 400 for an unknown action
    if (
        not isinstance(event_ids, list)
        or not event_ids
        or len(event_ids) > MAX_TARGETS
        or not all(isinstance(e, str) for e in event_ids)
    ):
        raise MalformedRequest(f'"crmEventIds" must be a list of 1 to {MAX_TARGETS} strings')
    return _results(lambda: operator.enqueue(action, event_ids))


# --- helpers -----------------------------------------------------------------------------


def _results(run: Callable[[], list[Result]]) -> Response:
    results = run()
    return jsonify({"results": [r.to_json() for r in results], "summary": summarize(results)})


def _json_object() -> dict[str, Any]:
    body = read_body()
    if not body.strip():
        return {}
    try:
        document = request.get_json(force=True, silent=False)
    except Exception:  # werkzeug raises BadRequest with HTML; answer in JSON instead
        raise MalformedRequest("body is not JSON") from None
    if not isinstance(document, dict):
        raise MalformedRequest("expected a JSON object")
    return document


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise MalformedRequest(f'"{name}" must be true or false')
    return value


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise MalformedRequest(f'"{name}" must be a string')
    return value


def _filters(action: str | None, since: str | None) -> Filters:
    try:
        return Filters.parse(action, since)
    except ValueError as exc:
        raise MalformedRequest(str(exc)) from None


def _page() -> tuple[int, int]:
    """`offset` and `limit` from the query string, bounded."""
    values = []
    for name, default, low, high in (
        ("offset", 0, 0, 10**9),
        ("limit", DEFAULT_PAGE, 1, MAX_PAGE),
    ):
        raw = request.args.get(name, str(default))
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise MalformedRequest(f"{name} must be a whole number from {low} to {high}")
        values.append(int(raw))
    return values[0], values[1]


def _paged(items: list[Any], total: int, offset: int, limit: int) -> dict[str, Any]:
    after = offset + limit
    return {
        "items": items,
        "total": total,
        "offset": offset,
        "limit": limit,
        "next_offset": after if after < total else None,
    }


def _is_stream_id(text: str) -> bool:
    millis, _, sequence = text.partition("-")
    return millis.isdigit() and sequence.isdigit() and len(text) < 40


@blueprint.errorhandler(IngressError)
def refuse(error: IngressError) -> tuple[Response, int]:
    response = jsonify({"error": error.message})
    if error.status == 401:
        # RFC 6750 §3: no credentials → no error code; a bad one → invalid_token.
        detail = "" if isinstance(error, MissingToken) else ', error="invalid_token"'
        response.headers["WWW-Authenticate"] = f'Bearer realm="crmhook-admin"{detail}'
    if isinstance(error, InsufficientScope):
        response.headers["WWW-Authenticate"] = (
            f'Bearer realm="crmhook-admin", error="insufficient_scope", scope="{error.scope}"'
        )
    return response, error.status


@blueprint.errorhandler(QueueUnavailable)
@blueprint.errorhandler(redis.RedisError)
def unavailable(error: Exception) -> tuple[Response, int]:
    log.error("admin request failed: Redis or the broker is unavailable: %s", error)
    response = jsonify({"error": "Redis or the broker is unavailable; retry later"})
    response.headers["Retry-After"] = "5"
    return response, 503
