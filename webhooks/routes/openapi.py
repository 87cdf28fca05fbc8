"""`GET /openapi.json`: the OpenAPI 3.0 description of the JSON API (`/v1/events`, `/admin/`).

Written by hand, next to the views it describes; the test suite runs schemathesis against it,
so a view that answers something the document does not promise fails the build.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

blueprint = Blueprint("openapi", __name__)

_STRING = {"type": "string"}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": _STRING},
}
_ACTION = {"type": "string", "enum": ["get", "noshow", "cancel"]}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(description: str, schema: str, status: str = "200") -> dict[str, Any]:
    return {
        status: {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


_AUTH_ERRORS = {
    "401": _error("no token, or an unknown one"),
    "403": _error("the token's scope does not allow this"),
    "503": _error("Redis or the broker is unavailable; retry later"),
}
_READ = {**_AUTH_ERRORS, "400": _error("a malformed parameter")}
_WRITE = {**_READ, "413": _error("body larger than MAX_BODY_BYTES")}
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
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


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
            "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{schema}"}},
            "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
            "next_offset": {"type": "integer", "nullable": True},
        },
    }


DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
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
                        "schema": {"type": "string", "maxLength": 200},
                    }
                ],
                "requestBody": _body("EventsRequest"),
                "responses": {
                    **_ok("an outcome per event", "EventsResponse", "202"),
                    "400": _error("not JSON, or not an event list"),
                    "401": _error("no token, or an unknown one"),
                    "413": _error("body larger than MAX_BODY_BYTES"),
                    "503": _error("Redis or the broker is unavailable; retry later"),
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
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["operations"],
                                    "properties": {
                                        "operations": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Operation"},
                                        }
                                    },
                                }
                            }
                        },
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
    },
    "components": {
        "securitySchemes": {
            "webhook": {"type": "http", "scheme": "bearer", "description": "WEBHOOK_TOKENS"},
            "admin": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKENS"},
        },
        "schemas": {
            "Error": _ERROR,
            "Event": {
                "type": "object",
                "required": ["action", "crmEventId"],
                "properties": {"action": _ACTION, "crmEventId": _STRING},
            },
            "EventsRequest": {
                "oneOf": [
                    {"$ref": "#/components/schemas/Event"},
                    {
                        "type": "object",
                        "required": ["events"],
                        "properties": {
                            "events": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 100,
                                "items": {"$ref": "#/components/schemas/Event"},
                            }
                        },
                    },
                ]
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
                                "outcome": {
                                    "type": "string",
                                    "enum": ["queued", "duplicate", "rejected"],
                                },
                                "action": _ACTION,
                                "crmEventId": _STRING,
                                "reason": _STRING,
                            },
                        },
                    },
                    "queued": {"type": "integer"},
                    "duplicate": {"type": "integer"},
                    "rejected": {"type": "integer"},
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
                    "state": {
                        "type": "string",
                        "enum": [
                            "queued",
                            "running",
                            "retrying",
                            "in_doubt",
                            "succeeded",
                            "failed",
                        ],
                    },
                    "attempts": _STRING,
                    "last_error": _STRING,
                    "sources": {"type": "array", "items": _STRING},
                    "audit": {"type": "array", "items": {"$ref": "#/components/schemas/Audit"}},
                    "result": {"type": "object", "additionalProperties": True},
                    "failed_at": {"type": "number"},
                },
            },
            "OperationPage": _page_of("Operation"),
            "Quarantined": {
                "type": "object",
                "required": ["notification_id", "reason", "action", "received_at"],
                "properties": {
                    "notification_id": _STRING,
                    "value": {"type": "string", "nullable": True},
                    "reason": _STRING,
                    "action": _ACTION,
                    "organization_id": _STRING,
                    "received_at": {"type": "number"},
                    "sobject_type": {"type": "string", "nullable": True},
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
                    "at": {"type": "number"},
                    "detail": _STRING,
                },
            },
            "AuditPage": {
                "type": "object",
                "required": ["items", "next_cursor"],
                "properties": {
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Audit"}},
                    "next_cursor": {"type": "string", "nullable": True},
                },
            },
            "ReplayRequest": {
                "type": "object",
                "required": ["targets"],
                "properties": {
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 1000,
                        "items": {"type": "string", "minLength": 1},
                    },
                    "force": {"type": "boolean"},
                    "dry_run": {"type": "boolean"},
                },
            },
            "ReplayFailedRequest": {
                "type": "object",
                "properties": {
                    "action": _ACTION,
                    "since": _STRING,
                    "dry_run": {"type": "boolean"},
                },
            },
            "DryRunRequest": {
                "type": "object",
                "properties": {"dry_run": {"type": "boolean"}},
            },
            "EnqueueRequest": {
                "type": "object",
                "required": ["action", "crmEventIds"],
                "properties": {
                    "action": _ACTION,
                    "crmEventIds": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 1000,
                        "items": _STRING,
                    },
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
                                "outcome": {
                                    "type": "string",
                                    "enum": [
                                        "queued",
                                        "would_queue",
                                        "skipped",
                                        "not_found",
                                        "rejected",
                                    ],
                                },
                                "detail": _STRING,
                                "key": _STRING,
                            },
                        },
                    },
                    "summary": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
            },
        },
    },
}


@blueprint.get("/openapi.json")
def document() -> Response:
    return jsonify(DOCUMENT)
