from __future__ import annotations

import redis
from flask.testing import FlaskClient

from tests.conftest import random_event_id
from tests.webhooks.routes.test_events import send
from webhooks import create_app
from worker.settings import Settings


def test_healthz_answers(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_checks_redis_and_the_broker(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["checks"] == {"redis": "ok", "broker": "ok"}
    assert response.json["warnings"] == []  # our test Redis persists and never evicts


def test_readyz_warns_about_a_redis_that_would_lose_keys(
    client: FlaskClient, idle_redis: redis.Redis
) -> None:
    idle_redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        warnings = client.get("/readyz").json["warnings"]
    finally:
        idle_redis.config_set("maxmemory-policy", "noeviction")
    assert any("allkeys-lru" in warning for warning in warnings)


def test_readyz_is_503_when_redis_is_unreachable(settings: Settings) -> None:
    unreachable = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    response = create_app(unreachable).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["redis"].startswith("unreachable")
    assert response.json["checks"]["broker"].startswith("unreachable")


def test_metrics_count_requests_and_notifications(client: FlaskClient) -> None:
    send(client, {"action": "cancel", "crmEventId": random_event_id()})
    send(client, {"action": "cancel", "crmEventId": "nope"})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'crmhook_requests_total{route="events",status="202"} 2.0' in text
    assert 'crmhook_notifications_total{action="cancel",outcome="queued"} 1.0' in text
    assert 'crmhook_notifications_total{action="unknown",outcome="rejected"} 1.0' in text
    assert "crmhook_enqueue_seconds_count" in text
