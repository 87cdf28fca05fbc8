"""Prometheus metrics of the edge, one registry per app (tests build many apps).

Under a multi-process server set PROMETHEUS_MULTIPROC_DIR (an empty directory) and `/metrics`
adds up every worker process, as prometheus-client documents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from flask import Response, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# The blueprints whose requests are counted, each under its own name. Not health, metrics or
# the OpenAPI document: probes and scrapes would count themselves.
COUNTED_BLUEPRINTS = frozenset({"outbound", "events", "admin"})


@dataclass(frozen=True)
class EdgeMetrics:
    registry: CollectorRegistry
    requests: Counter
    notifications: Counter
    enqueue_seconds: Histogram

    def count_request(self, response: Response) -> Response:
        """`after_request`: count the answer, errors included, by blueprint and status."""
        if request.blueprint in COUNTED_BLUEPRINTS:
            self.requests.labels(request.blueprint, str(response.status_code)).inc()
        return response

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


def edge_metrics() -> EdgeMetrics:
    registry = CollectorRegistry()
    return EdgeMetrics(
        registry=registry,
        requests=Counter(
            "crmhook_requests",
            "Requests answered, by route and status",
            ["route", "status"],
            registry=registry,
        ),
        notifications=Counter(
            "crmhook_notifications",
            "Notifications and events received, "
            "by action and outcome (queued, duplicate, rejected)",
            ["action", "outcome"],
            registry=registry,
        ),
        enqueue_seconds=Histogram(
            "crmhook_enqueue_seconds",
            "Time to hand a message to the broker",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        ),
    )
