"""The two error renderers: status, challenge and body decided by the exception's type."""

from __future__ import annotations

import pytest
import redis
from flask import Flask

from webhooks.errors import render_json, render_soap
from worker.errors import (
    Forbidden,
    IngressError,
    InsufficientScope,
    MalformedRequest,
    MissingToken,
    NotFound,
    PayloadTooLarge,
    QueueUnavailable,
    Unauthorized,
    UnknownToken,
)


@pytest.mark.parametrize(
    ("path", "error", "status", "challenge"),
    [
        ("/v1/events", MissingToken("missing token"), 401, 'Bearer realm="crmhook"'),
        (
            "/v1/events",
            UnknownToken("unknown token"),
            401,
            'Bearer realm="crmhook", error="invalid_token"',
        ),
        ("/admin/replay", MissingToken("missing token"), 401, 'Bearer realm="crmhook-admin"'),
        ("/admin/replay", Unauthorized("no token"), 401, 'Bearer realm="crmhook-admin"'),
        (
            "/admin/replay",
            UnknownToken("unknown token"),
            401,
            'Bearer realm="crmhook-admin", error="invalid_token"',
        ),
        (
            "/admin/replay",
            InsufficientScope("token 'grafana' may read only", scope="write"),
            403,
            'Bearer realm="crmhook-admin", error="insufficient_scope", scope="write"',
        ),
        # The type decides, never the text: a reworded message keeps its challenge.
        (
            "/v1/events",
            UnknownToken("missing token"),
            401,
            'Bearer realm="crmhook", error="invalid_token"',
        ),
        ("/v1/events", MalformedRequest("body is not JSON"), 400, None),
        ("/admin/replay", NotFound("nothing recorded"), 404, None),
        ("/admin/replay", PayloadTooLarge("body larger than 10 bytes"), 413, None),
        ("/admin/replay", Forbidden("not allowed"), 403, None),
    ],
)
def test_json_refusals_carry_their_status_and_rfc_6750_challenge(
    app: Flask, path: str, error: IngressError, status: int, challenge: str | None
) -> None:
    with app.test_request_context(path, method="POST"):
        response = render_json(error)
    assert response.status_code == status
    assert response.get_json() == {"error": error.message}
    assert response.headers.get("WWW-Authenticate") == challenge
    assert "Retry-After" not in response.headers


@pytest.mark.parametrize(
    "error", [QueueUnavailable("broker down"), redis.ConnectionError("Error 111 connecting")]
)
def test_json_unavailable_is_503_with_retry_after(app: Flask, error: Exception) -> None:
    with app.test_request_context("/v1/events", method="POST"):
        response = render_json(error)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "WWW-Authenticate" not in response.headers
    assert "retry later" in response.get_json()["error"]
    assert "111" not in response.get_json()["error"]  # the cause is logged, not answered


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (MissingToken("missing token"), 401, b"soapenv:Client"),
        (Forbidden("Organization ID '012345678901234' is not allowed"), 403, b"soapenv:Client"),
        (MalformedRequest("body is not well-formed XML"), 400, b"soapenv:Client"),
        (QueueUnavailable("broker down"), 503, b"soapenv:Server"),
        (redis.TimeoutError("timed out"), 503, b"soapenv:Server"),
    ],
)
def test_soap_refusals_are_faults(app: Flask, error: Exception, status: int, code: bytes) -> None:
    with app.test_request_context("/salesforce/outbound/cancel?token=secret", method="POST"):
        response = render_soap(error)
    assert response.status_code == status
    assert response.content_type == "text/xml; charset=utf-8"
    assert b"<faultcode>" + code + b"</faultcode>" in response.data
    assert "WWW-Authenticate" not in response.headers


def test_refusals_are_logged_without_the_query_string(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    with app.test_request_context("/salesforce/outbound/cancel?token=s3cret", method="POST"):
        render_soap(MissingToken("unknown token"))
        render_soap(QueueUnavailable("broker down"))
    assert "/salesforce/outbound/<action>" in caplog.text
    assert "broker down" in caplog.text
    assert "s3cret" not in caplog.text
