"""Request counting: one `after_request` hook, labelled by blueprint, errors included."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.webhooks.routes.test_events import send
from tests.webhooks.routes.test_outbound import post


def requests_counted(client: FlaskClient) -> list[str]:
    text = client.get("/metrics").get_data(as_text=True)
    return [line for line in text.splitlines() if line.startswith("crmhook_requests_total")]


def test_every_answer_of_the_api_routes_is_counted_by_blueprint(client: FlaskClient) -> None:
    send(client, {"action": "get"}, token=None)
    post(client, b"<not-xml", token=None)
    client.get("/admin/failed")
    assert sorted(requests_counted(client)) == [
        'crmhook_requests_total{route="admin",status="401"} 1.0',
        'crmhook_requests_total{route="events",status="401"} 1.0',
        'crmhook_requests_total{route="outbound",status="401"} 1.0',
    ]


def test_probes_scrapes_the_document_and_unrouted_requests_are_not_counted(
    client: FlaskClient,
) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/nowhere"):
        client.get(path)
    assert requests_counted(client) == []
