"""`GET /openapi.json`: the OpenAPI 3.1 description of the JSON API (`/v1/events`, `/admin/`).

Request bodies are described by the pydantic models that validate them (`webhooks.schemas`);
responses are written by hand next to the views, their enums taken from the Enums the values
come from. The test suite runs schemathesis against it, so a view that answers something the
document does not promise fails the build.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from webhooks.errors import RETRY_AFTER_SECONDS
from webhooks.schemas import (
    DryRunRequest,
    EnqueueRequest,
    EventBatch,
    HeldRequest,
    PauseRequest,
    ReplayFailedRequest,
    ReplayRequest,
)
from worker.domain.meetings import MeetingStatus
from worker.domain.notifications import Disposition
from worker.domain.operations import Action, State
from worker.operator import Outcome

blueprint = Blueprint("openapi", __name__)

_REF = "#/components/schemas/{model}"
_REQUESTS: tuple[type[BaseModel], ...] = (
    EventBatch,
    ReplayRequest,
    ReplayFailedRequest,
    DryRunRequest,
    EnqueueRequest,
    PauseRequest,
    HeldRequest,
)
_STRING = {"type": "string"}
_SECONDS = {"type": "number", "description": "epoch seconds"}
# The times an operation record carries (`store.records` decodes them to epoch seconds).
_RECORD_TIMES = (
    "created_at",
    "updated_at",
    "succeeded_at",
    "replayed_at",
    "lease_until",
    "failed_at",
)
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": _STRING},
}


def _enum(values: type[StrEnum]) -> dict[str, Any]:
    return {"type": "string", "enum": [value.value for value in values]}


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=schema)}


_ACTION = _ref("Action")  # from the request models' `$defs`


def _request_schemas() -> dict[str, Any]:
    """Each request model's JSON Schema under its name, and the schemas they refer to."""
    schemas: dict[str, Any] = {}
    for model in _REQUESTS:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str, header: str | None = None) -> dict[str, Any]:
    """An error answer; `header` is one it always carries."""
    answer: dict[str, Any] = {"description": description, "content": _json(_ref("Error"))}
    if header is not None:
        answer["headers"] = {header: {"required": True, "schema": _STRING}}
    return answer


def _ok(description: str, schema: str, status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": _json(_ref(schema))}}


_CHALLENGED = "WWW-Authenticate"  # RFC 6750
_UNAUTHORIZED = _error("no token, or an unknown one", _CHALLENGED)
_UNAVAILABLE = _error(
    f"Redis or the broker is unavailable; retry in Retry-After ({RETRY_AFTER_SECONDS}) seconds",
    "Retry-After",
)
_TOO_LARGE = _error("body larger than MAX_BODY_BYTES")
_IDEMPOTENCY_KEY = (
    "Printable, at most 200 characters; optional (IETF draft-ietf-httpapi-idempotency-key-header). "
    "Scoped to the caller's token and bound to the body (its JSON, whatever the key order or "
    "spacing). The first answer is recorded once the events are in the broker and kept "
    "GET_KEY_TTL_SECONDS (72 h by default): the same key with the same body answers it again, "
    "status and body, and queues nothing more; with another body 422; while the first request "
    "is still being handled 409. A request refused with 503 recorded nothing: retry it as is."
)
_READ = {
    "400": _error("a malformed parameter"),
    "401": _UNAUTHORIZED,
    "403": _error("the token's scope does not allow this", _CHALLENGED),
    "503": _UNAVAILABLE,
}
_WRITE = {**_READ, "400": _error("a malformed parameter or body"), "413": _TOO_LARGE}
_PAGE = [
    {
        "name": "offset",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": 10**9},
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
    },
]
_FILTERS = [
    {"name": "action", "in": "query", "schema": _ACTION},
    {
        "name": "since",
        "in": "query",
        "description": "a duration ago (90s, 30m, 2h, 7d) or an ISO 8601 time with a zone",
        "schema": _STRING,
    },
]


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": _json(_ref(schema))}


def _write(summary: str, body: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"admin": []}],
            "requestBody": _body(body),
            "responses": {**_ok("what became of each target", "Results"), **_WRITE},
        }
    }


def _page_of(schema: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "total", "offset", "limit", "next_offset"],
        "properties": {
            "items": {"type": "array", "items": _ref(schema)},
            "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
            "next_offset": {"type": ["integer", "null"]},
        },
    }


_PAUSE = {
    "type": "object",
    "required": ["actor", "paused_at", "reason"],
    "properties": {"actor": _STRING, "paused_at": _SECONDS, "reason": _STRING},
}
_RESPONSE_SCHEMAS: dict[str, Any] = {
    "Error": _ERROR,
    "PauseAnswer": {
        "type": "object",
        "required": ["paused"],
        "properties": {"paused": _PAUSE},
    },
    "Held": {
        "type": "object",
        "required": ["paused", "items"],
        "properties": {
            "paused": {"anyOf": [_PAUSE, {"type": "null"}]},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "action", "crm_event_id", "reason", "held_at"],
                    "properties": {
                        "key": _STRING,
                        "action": _enum(Action),
                        "crm_event_id": _STRING,
                        "reason": {"enum": ["paused", "guard"]},
                        "held_at": _SECONDS,
                    },
                },
            },
        },
    },
    "EventsResponse": {
        "type": "object",
        "required": ["results", "queued", "duplicate", "rejected"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "outcome"],
                    "properties": {
                        "index": {"type": "integer"},
                        "outcome": _enum(Disposition),
                        "action": _ACTION,
                        "crmEventId": _STRING,
                        "reason": _STRING,
                    },
                },
            },
            **{kind.value: {"type": "integer"} for kind in Disposition},
        },
    },
    "Operation": {
        "type": "object",
        "required": ["key", "state", "sources", "audit"],
        "additionalProperties": True,
        "properties": {
            "key": _STRING,
            "action": _ACTION,
            "crm_event_id": _STRING,
            "state": _enum(State),
            "attempts": _STRING,
            "token": _STRING,
            "last_error": _STRING,
            "sources": {"type": "array", "items": _STRING},
            "audit": {"type": "array", "items": _ref("Audit")},
            "result": {
                "type": "object",
                "description": "What ChiliPiper answered: the tool, and the meeting's ID, status "
                "and times (never its attendees)",
                "additionalProperties": True,
                "properties": {
                    "tool": _STRING,
                    "crm_event_id": _STRING,
                    "execution_id": _STRING,
                    "reconciled": {"type": "boolean"},
                    "meeting": {
                        "type": "object",
                        "properties": {
                            "meeting_id": _STRING,
                            "status": {
                                **_enum(MeetingStatus),
                                "description": "normalized; absent when unknown",
                            },
                            "status_as_sent": _STRING,
                            "start": _STRING,
                            "end": _STRING,
                            "booked_at": _STRING,
                        },
                    },
                },
            },
            **dict.fromkeys(_RECORD_TIMES, _SECONDS),
        },
    },
    "OperationPage": _page_of("Operation"),
    "Quarantined": {
        "type": "object",
        "required": ["notification_id", "reason", "action", "received_at"],
        "properties": {
            "notification_id": _STRING,
            "value": {"type": ["string", "null"]},
            "reason": _STRING,
            "action": _ACTION,
            "organization_id": _STRING,
            "received_at": _SECONDS,
            "sobject_type": {"type": ["string", "null"]},
            "id_fields": {"type": "object", "additionalProperties": _STRING},
            "event_id_field": _STRING,
            "deleted": {"type": "boolean"},
        },
    },
    "QuarantinePage": _page_of("Quarantined"),
    "Audit": {
        "type": "object",
        "required": ["actor", "what", "target", "outcome", "at"],
        "properties": {
            "id": _STRING,
            "actor": _STRING,
            "what": _STRING,
            "target": _STRING,
            "outcome": _STRING,
            "at": _SECONDS,
            "detail": _STRING,
        },
    },
    "AuditPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref("Audit")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "Results": {
        "type": "object",
        "required": ["results", "summary"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["target", "outcome"],
                    "properties": {
                        "target": _STRING,
                        "outcome": _enum(Outcome),
                        "detail": _STRING,
                        "key": _STRING,
                    },
                },
            },
            "summary": {
                "type": "object",
                "propertyNames": _enum(Outcome),
                "additionalProperties": {"type": "integer"},
            },
        },
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "crmhook",
        "version": "1",
        "description": "Salesforce Event notifications to ChiliPiper meeting actions, "
        "exactly once: the JSON intake and the operators' API.",
    },
    "paths": {
        "/v1/events": {
            "post": {
                "summary": "Queue one event, or up to 100",
                "security": [{"webhook": []}],
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "description": _IDEMPOTENCY_KEY,
                        "schema": {"type": "string", "maxLength": 200},
                    }
                ],
                "requestBody": _body("EventsRequest"),
                "responses": {
                    **_ok(
                        "an outcome per event; under a reused Idempotency-Key with the same "
                        "body, the first answer again, unchanged",
                        "EventsResponse",
                        "202",
                    ),
                    "400": _error("not JSON, or not an event list, or a malformed Idempotency-Key"),
                    "401": _UNAUTHORIZED,
                    "409": _error(
                        "the first request under this Idempotency-Key is still being handled: "
                        "retry the same request later"
                    ),
                    "413": _TOO_LARGE,
                    "422": _error(
                        "this Idempotency-Key was used with another body: a new request needs "
                        "a new key"
                    ),
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/admin/operations/{keyOrEventId}": {
            "get": {
                "summary": "An operation by key, or every operation of an event",
                "security": [{"admin": []}],
                "parameters": [
                    {"name": "keyOrEventId", "in": "path", "required": True, "schema": _STRING}
                ],
                "responses": {
                    "200": {
                        "description": "the records",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["operations"],
                                "properties": {
                                    "operations": {"type": "array", "items": _ref("Operation")}
                                },
                            }
                        ),
                    },
                    "404": _error("nothing recorded"),
                    **_READ,
                },
            }
        },
        "/admin/failed": {
            "get": {
                "summary": "Dead letters, newest first",
                "security": [{"admin": []}],
                "parameters": _FILTERS + _PAGE,
                "responses": {**_ok("a page of dead letters", "OperationPage"), **_READ},
            }
        },
        "/admin/quarantine": {
            "get": {
                "summary": "Quarantined notifications, newest first",
                "security": [{"admin": []}],
                "parameters": _PAGE,
                "responses": {**_ok("a page of notifications", "QuarantinePage"), **_READ},
            }
        },
        "/admin/audit": {
            "get": {
                "summary": "Audit entries, newest first",
                "security": [{"admin": []}],
                "parameters": [
                    _PAGE[1],
                    {"name": "cursor", "in": "query", "schema": _STRING},
                ],
                "responses": {**_ok("a page of entries", "AuditPage"), **_READ},
            }
        },
        "/admin/replay": _write("Replay operation keys or event IDs", "ReplayRequest"),
        "/admin/replay/failed": _write("Replay every dead letter", "ReplayFailedRequest"),
        "/admin/replay/quarantined": _write(
            "Judge quarantined notifications again under today's settings", "DryRunRequest"
        ),
        "/admin/enqueue": _write("Queue an action by hand", "EnqueueRequest"),
        "/admin/pause": {
            "post": {
                "summary": "Pause every cancel and no-show on every worker (reads go on); "
                "what comes due is held until POST /admin/resume",
                "security": [{"admin": []}],
                "requestBody": _body("PauseRequest"),
                "responses": {**_ok("paused", "PauseAnswer"), **_WRITE},
            }
        },
        "/admin/resume": {
            "post": {
                "summary": "Lift the pause and send what it held",
                "security": [{"admin": []}],
                "responses": {**_ok("what became of each held operation", "Results"), **_WRITE},
            }
        },
        "/admin/held": {
            "get": {
                "summary": "The pause, if any, and the operations the safety valves hold",
                "security": [{"admin": []}],
                "responses": {**_ok("the pause and the held operations", "Held"), **_READ},
            }
        },
        "/admin/held/release": {
            "post": {
                "summary": "Send held operations, each once (what the guard held, past it)",
                "security": [{"admin": []}],
                "requestBody": _body("HeldRequest"),
                "responses": {
                    **_ok("what became of each target", "Results"),
                    **_WRITE,
                    "409": _error("irreversible calls are paused: resume first"),
                },
            }
        },
        "/admin/held/drop": _write(
            "Send nothing for held operations: each becomes a dead letter", "HeldRequest"
        ),
    },
    "components": {
        "securitySchemes": {
            "webhook": {"type": "http", "scheme": "bearer", "description": "WEBHOOK_TOKENS"},
            "admin": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKENS"},
        },
        "schemas": {
            **_request_schemas(),
            # One event, or a batch of them (`EventBatch` also reads a bare event as one).
            "EventsRequest": {"anyOf": [_ref("Event"), _ref("EventBatch")]},
            **_RESPONSE_SCHEMAS,
        },
    },
}


@blueprint.get("/openapi.json")
def document() -> Response:
    return jsonify(DOCUMENT)
