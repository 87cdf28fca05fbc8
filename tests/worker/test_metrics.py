"""A posted message moves the web's and the worker's metrics, end to end: real web app,
real worker (the Procfile's line, serving `WORKER_METRICS_PORT`), real sandbox."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    SALESFORCE,
    TOKEN,
    SandboxServer,
    make_settings,
    serve,
    start_worker,
    wait_for,
)
from webhooks import create_app
from worker.dev.redis_server import RedisServer, free_port
from worker.metrics import STORE_GAUGES

pytestmark = pytest.mark.slow
EVENTS = ("00U5g00000MnOpQEAV", "00U5g00000MnOpREAV")  # synthetic_2x_event.xml's


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, by name and labels."""
    text = httpx.get(url, timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_posted_message_moves_the_web_and_worker_metrics(
    own_redis: RedisServer, sandbox: SandboxServer, tmp_path: Path
) -> None:
    settings = make_settings(own_redis.url, sandbox.url)
    port = free_port()
    worker = start_worker(
        settings,
        tmp_path / "worker.log",
        concurrency=4,
        extra_env={"WORKER_METRICS_PORT": str(port)},
    )
    web = serve(create_app(settings))
    worker_metrics = f"http://127.0.0.1:{port}/metrics"
    web_metrics = f"http://127.0.0.1:{web.port}/metrics"
    try:
        with sandbox.state.lock:
            for event in EVENTS:
                sandbox.state.meetings[event] = "BOOKED"
        before = scrape(worker_metrics)
        assert value(before, "crmhook_store_up") == 1
        for name in STORE_GAUGES:  # every gauge read from Redis is there from the start
            assert any(key[0] == name for key in before), name
        posted = httpx.post(
            f"http://127.0.0.1:{web.port}/salesforce/outbound/noshow?token={TOKEN}",
            content=(SALESFORCE / "synthetic_2x_event.xml").read_bytes(),
            headers={"Content-Type": "text/xml"},
        )
        assert posted.status_code == 200

        def done() -> bool:
            after = scrape(worker_metrics)
            return (
                value(after, "crmhook_operations_total", action="noshow", outcome="succeeded") >= 2
            )

        wait_for(done, timeout=30)
        after = scrape(worker_metrics)
        edge = scrape(web_metrics)
        page = httpx.get(worker_metrics).text
    finally:
        web.shutdown()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert value(edge, "crmhook_requests_total", route="outbound", status="200") == 1
    assert value(edge, "crmhook_notifications_total", action="noshow", outcome="queued") == 2
    calls = [
        key
        for key in after
        if key[0] == "crmhook_chilipiper_call_seconds_count" and ("status", "ok") in key[1]
    ]
    assert sum(after[key] for key in calls) >= 2, calls
    assert value(after, "crmhook_pending_operations") == 0
    assert value(after, "crmhook_queue_depth") == 0
    assert value(after, "crmhook_circuit_state", state="closed") == 1
    assert TOKEN not in page
    assert "redis://" not in page
