"""The Flask app factory: settings, then the clients the views share, then the routes."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from flask import Flask, Response, current_app, jsonify
from werkzeug.exceptions import HTTPException

from webhooks.metrics import EdgeMetrics, edge_metrics
from worker.errors import ConfigError
from worker.settings import Settings, load_settings
from worker.store.connection import redis_client
from worker.tasks.app import make_celery


@dataclass(frozen=True)
class Edge:
    """What the views share: settings, the broker (via Celery), the store's Redis, metrics."""

    settings: Settings
    celery: Celery
    redis: redis.Redis
    metrics: EdgeMetrics


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """The web app. Settings come from the environment (and `.env`) unless given; keyword
    overrides are applied on top (tests). A bad environment stops the process with one line
    naming the variable, rather than a traceback in a crash loop."""
    if settings is None:
        try:
            settings = load_settings(**overrides).require_web()
        except ConfigError as exc:
            print(f"crmhook web: {exc}", file=sys.stderr)
            raise SystemExit(4) from None  # gunicorn's "App failed to load": no respawn
    else:
        settings.require_web()

    app = Flask("webhooks")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["crmhook"] = Edge(
        settings=settings,
        celery=make_celery(settings),
        redis=redis_client(settings.redis_url),
        metrics=edge_metrics(),
    )
    logging.getLogger("webhooks").setLevel(logging.INFO)

    from webhooks.routes import admin, events, health, openapi, outbound

    app.register_blueprint(outbound.blueprint)
    app.register_blueprint(events.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(admin.blueprint)
    app.register_blueprint(openapi.blueprint)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _http_error(error: HTTPException) -> tuple[Response, int]:
    """Unrouted requests (404, 405…) answer JSON like the API, not werkzeug's HTML page."""
    return jsonify({"error": f"{error.name}: {error.description}"}), error.code or 500


def edge() -> Edge:
    extension: Edge = current_app.extensions["crmhook"]
    return extension
