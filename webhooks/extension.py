"""What the views share, kept apart from the app factory so that routes never import it
(the factory imports the routes)."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import Flask, current_app

from webhooks.metrics import EdgeMetrics
from worker.settings import Settings
from worker.store.idempotency import Idempotency
from worker.store.ingests import Ingests

_NAME = "crmhook"


@dataclass(frozen=True)
class Edge:
    """What the views share: settings, the broker (via Celery), the store's Redis, metrics,
    the record of inbound messages kept until their fan-out ran, and that of the JSON
    callers' `Idempotency-Key`s (built once: each registers its scripts)."""

    settings: Settings
    celery: Celery
    redis: redis.Redis
    metrics: EdgeMetrics
    ingests: Ingests
    idempotency: Idempotency

    def install(self, app: Flask) -> None:
        app.extensions[_NAME] = self


def edge() -> Edge:
    """The Edge of the app serving the current request."""
    extension: Edge = current_app.extensions[_NAME]
    return extension
