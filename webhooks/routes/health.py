"""`/healthz` (the process answers), `/readyz` (Redis and the broker answer), `/metrics`."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from webhooks.extension import edge
from worker.store.connection import sentinel_warnings
from worker.store.durability import durability_warnings

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    current = edge()
    checks: dict[str, Any] = {}
    warnings: list[str] = []
    try:
        current.redis.ping()
        checks["redis"] = "ok"
        warnings = durability_warnings(current.redis) + sentinel_warnings(current.settings)
        # Acks and cancels wait for replicas with WAIT: a Redis that refuses it (an ACL,
        # some managed services) would answer every post 503.
        current.redis.execute_command("WAIT", 0, 0)  # type: ignore[no-untyped-call]
    except redis.ResponseError as exc:
        checks["redis"] = f"refuses WAIT: {exc}"
    except redis.RedisError as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        with current.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:  # kombu raises transport-specific errors; any means not ready
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks, "warnings": warnings}
    return jsonify(body), 200 if ready else 503


@blueprint.get("/metrics")
def metrics() -> Response:
    return Response(edge().metrics.render(), content_type=CONTENT_TYPE_LATEST)
