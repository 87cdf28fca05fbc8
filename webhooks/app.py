"""The Flask app factory: settings, then the clients the views share, then the routes."""

from __future__ import annotations

import logging
import sys
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from webhooks.errors import render_json
from webhooks.extension import Edge
from webhooks.metrics import edge_metrics
from webhooks.routes import admin, events, health, openapi, outbound
from worker import redaction
from worker.errors import ConfigError
from worker.settings import Settings, load_settings
from worker.store.connection import store_client
from worker.store.idempotency import Idempotency
from worker.store.ingests import Ingests
from worker.tasks.app import make_celery


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
    redaction.install(settings)  # before the first log line that could quote a secret

    app = Flask("webhooks")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    client = store_client(settings)
    shared = Edge(
        settings=settings,
        celery=make_celery(settings),
        redis=client,
        metrics=edge_metrics(),
        ingests=Ingests(client, settings.notification_ttl_seconds),
        idempotency=Idempotency(client, settings.get_key_ttl_seconds),
    )
    shared.install(app)
    logging.getLogger("webhooks").setLevel(logging.INFO)

    app.register_blueprint(outbound.blueprint)
    app.register_blueprint(events.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(admin.blueprint)
    app.register_blueprint(openapi.blueprint)
    # Unrouted requests (404, 405…) answer JSON like the API, not werkzeug's HTML page.
    app.register_error_handler(HTTPException, render_json)
    app.after_request(shared.metrics.count_request)
    return app
