"""`/admin/…`: the operator's commands as JSON, for dashboards and runbooks that cannot shell in.

The same `Operator` as `crmhook` does the work, so the CLI and the API cannot drift apart.
`Authorization: Bearer` with a token from ADMIN_TOKENS: 401 without one or with an unknown
one, 403 when its scope (`read`) does not allow a change (RFC 6750). The token's name is the
actor in the audit trail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request

from webhooks.auth import verify_admin
from webhooks.body import read_body, read_json
from webhooks.errors import answer_in_json
from webhooks.extension import edge
from webhooks.schemas import (
    DryRunRequest,
    EnqueueRequest,
    HeldRequest,
    Model,
    PauseRequest,
    ReplayFailedRequest,
    ReplayRequest,
    parse,
)
from worker.errors import InvalidSalesforceId, MalformedRequest, NotFound
from worker.operator import Filters, Operator, Result, summarize
from worker.safety_valves import SafetyValves
from worker.settings import AdminScope
from worker.store.holds import HeldOperation
from worker.tasks.runtime import build_store

blueprint = Blueprint("admin", __name__, url_prefix="/admin")
answer_in_json(blueprint)
DEFAULT_PAGE = 50
MAX_PAGE = 500


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
    body = _body(ReplayRequest)
    return _results(lambda: operator.replay(body.targets, force=body.force, dry_run=body.dry_run))


@blueprint.post("/replay/failed")
def replay_failed() -> Response:
    operator = _operator("write")
    body = _body(ReplayFailedRequest)
    filters = _filters(body.action, body.since)
    return _results(lambda: operator.replay_failed(filters, dry_run=body.dry_run))


@blueprint.post("/replay/quarantined")
def replay_quarantined() -> Response:
    operator = _operator("write")
    body = _body(DryRunRequest)
    return _results(lambda: operator.replay_quarantined(dry_run=body.dry_run))


@blueprint.post("/enqueue")
def enqueue() -> Response:
    operator = _operator("write")
    body = _body(EnqueueRequest)
    return _results(lambda: operator.enqueue(body.action, body.crm_event_ids))


# --- the safety valves (worker/safety_valves.py) ----------------------------------------


def _valves(scope: AdminScope) -> SafetyValves:
    operator = _operator(scope)
    return SafetyValves(operator.store, edge().celery, operator.actor)


@blueprint.post("/pause")
def pause() -> Response:
    body = _body(PauseRequest)
    return jsonify({"paused": _valves("write").pause(body.reason).to_json()})


@blueprint.post("/resume")
def resume() -> Response:
    valves = _valves("write")
    return _results(valves.resume)


@blueprint.get("/held")
def held() -> Response:
    valves = _valves("read")
    paused = valves.paused()
    return jsonify(
        {
            "paused": paused.to_json() if paused else None,
            "items": [entry.to_json() for entry in valves.held()],
        }
    )


@blueprint.post("/held/release")
def release_held() -> Response:
    return _on_held(SafetyValves.release)


@blueprint.post("/held/drop")
def drop_held() -> Response:
    return _on_held(SafetyValves.drop)


def _on_held(act: Callable[[SafetyValves, list[HeldOperation]], list[Result]]) -> Response:
    """`act` on the held operations the body names (`keys`, or `all`)."""
    valves = _valves("write")
    body = _body(HeldRequest)
    chosen, missing = valves.choose(body.keys, everything=body.all)
    return _results(lambda: act(valves, chosen) + missing)


# --- helpers -----------------------------------------------------------------------------


def _results(run: Callable[[], list[Result]]) -> Response:
    results = run()
    return jsonify({"results": [r.to_json() for r in results], "summary": summarize(results)})


def _body(model: type[Model]) -> Model:
    """The request body as `model`; an empty body is `{}`, so flags may be left out."""
    return parse(model, read_json() if read_body().strip() else {})


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
        if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
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
    return text.isascii() and millis.isdigit() and sequence.isdigit() and len(text) < 40
