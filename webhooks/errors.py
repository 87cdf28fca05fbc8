"""How every route refuses: one JSON renderer, one SOAP renderer, both deciding by type.

The answer depends on the exception's type alone, never on its message, so a reworded
message cannot change a status or a challenge:

- `IngressError`: its `.status`; on JSON routes a 401 carries an RFC 6750 challenge
  (`error="invalid_token"` only for a token we do not know) and `InsufficientScope` names the
  scope it lacked;
- `QueueUnavailable`, `redis.RedisError`: 503, the sender retries (`Retry-After` on JSON; a
  `soapenv:Server` fault for Salesforce, which retries on its own schedule);
- werkzeug's `HTTPException` (unrouted requests, 404, 405…): its own code, in JSON.

Log lines name the route's rule, never its path or query string (the SOAP token is there).
"""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from webhooks.soap import CONTENT_TYPE, fault
from worker.errors import (
    IngressError,
    InsufficientScope,
    QueueUnavailable,
    Unauthorized,
    UnknownToken,
)

log = logging.getLogger(__name__)

# Redis or the broker did not answer: nothing was accepted, the sender retries.
UNAVAILABLE: tuple[type[Exception], ...] = (QueueUnavailable, redis.RedisError)
# What the views raise on purpose, or let through from the store.
REFUSALS: tuple[type[Exception], ...] = (IngressError, *UNAVAILABLE)
RETRY_AFTER_SECONDS = 5
_ADMIN_REALM = "crmhook-admin"
_REALM = "crmhook"


def answer_in_json(blueprint: Blueprint) -> None:
    """Render the refusals of `blueprint`'s views as `{"error": …}`."""
    for refusal in REFUSALS:
        blueprint.register_error_handler(refusal, render_json)


def answer_in_soap(blueprint: Blueprint) -> None:
    """Render the refusals of `blueprint`'s views as SOAP faults."""
    for refusal in REFUSALS:
        blueprint.register_error_handler(refusal, render_soap)


def render_json(error: Exception) -> Response:
    status, message = _refusal(error)
    response = jsonify({"error": message})
    response.status_code = status
    response.headers.update(_json_headers(error))
    return response


def render_soap(error: Exception) -> Response:
    status, message = _refusal(error)
    body = fault(message, server=isinstance(error, UNAVAILABLE))
    return Response(body, status=status, content_type=CONTENT_TYPE)


def _refusal(error: Exception) -> tuple[int, str]:
    """The status and the message for `error`, logged when it is ours to log."""
    if isinstance(error, HTTPException):
        return error.code or 500, f"{error.name}: {error.description}"
    if isinstance(error, IngressError):
        log.info("refused %s %s: %s %s", request.method, _rule(), error.status, error.message)
        return error.status, error.message
    log.error("%s %s: Redis or the broker is unavailable: %s", request.method, _rule(), error)
    return 503, "Redis or the broker is unavailable; retry later"


def _json_headers(error: Exception) -> dict[str, str]:
    if isinstance(error, UNAVAILABLE):
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if isinstance(error, IngressError) and (challenge := _challenge(error)):
        return {"WWW-Authenticate": challenge}
    return {}


def _challenge(error: IngressError) -> str | None:
    """The RFC 6750 `WWW-Authenticate` challenge for `error`, if it calls for one (§3)."""
    realm = f'Bearer realm="{_ADMIN_REALM if request.blueprint == "admin" else _REALM}"'
    if isinstance(error, UnknownToken):
        return f'{realm}, error="invalid_token"'
    if isinstance(error, Unauthorized):  # no credentials: a challenge without an error code
        return realm
    if isinstance(error, InsufficientScope):
        return f'{realm}, error="insufficient_scope", scope="{error.scope}"'
    return None


def _rule() -> str:
    """The matched route's rule (`/admin/operations/<path:key_or_event_id>`): no caller data."""
    return request.url_rule.rule if request.url_rule else "(unrouted)"
