"""The translation table from ChiliPiper-side failures to the error tree."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from worker.chilipiper.errors import (
    error_for_exception,
    error_for_rpc,
    error_for_status,
    retry_after_seconds,
    tool_failure,
)
from worker.errors import (
    CredentialsRefused,
    GatewayError,
    InDoubtError,
    NoMeetingError,
    PermanentError,
    RetryableError,
    ToolError,
)

R, P, D, C = RetryableError, PermanentError, InDoubtError, CredentialsRefused


@pytest.mark.parametrize(
    ("status", "for_get", "for_cancel"),
    [
        (400, P, P),
        (401, C, C),  # refused credentials: a permanent error the operator can name
        (403, C, C),
        (404, P, P),
        (405, P, P),
        (406, P, P),
        (409, P, P),
        (413, P, P),
        (422, P, P),
        (408, R, R),
        (425, R, R),
        (429, R, R),
        (503, R, R),
        (500, R, D),
        (502, R, D),
        (504, R, D),
        (507, R, D),
        (501, P, P),
    ],
)
def test_http_status(
    status: int, for_get: type[GatewayError], for_cancel: type[GatewayError]
) -> None:
    assert type(error_for_status(status, tool="crm-get", irreversible=False)) is for_get
    assert type(error_for_status(status, tool="crm-cancel", irreversible=True)) is for_cancel


def test_retry_after_travels_with_the_error() -> None:
    error = error_for_status(429, tool="crm-get", irreversible=False, retry_after=3.0)
    assert isinstance(error, RetryableError)
    assert error.retry_after == 3.0
    assert error.status == 429


REQUEST = httpx.Request("POST", "http://chilipiper.invalid/mcp")


@pytest.mark.parametrize(
    ("exc", "for_get", "for_cancel"),
    [
        (httpx.ConnectError("refused", request=REQUEST), R, R),
        (httpx.ConnectTimeout("slow", request=REQUEST), R, R),
        (httpx.PoolTimeout("busy", request=REQUEST), R, R),
        (httpx.ReadTimeout("no answer", request=REQUEST), R, D),
        (httpx.WriteTimeout("half sent", request=REQUEST), R, D),
        (httpx.ReadError("reset", request=REQUEST), R, D),
        (httpx.RemoteProtocolError("closed mid-answer", request=REQUEST), R, D),
    ],
)
def test_transport_exceptions_by_whether_the_request_was_sent(
    exc: httpx.HTTPError, for_get: type[GatewayError], for_cancel: type[GatewayError]
) -> None:
    assert type(error_for_exception(exc, tool="crm-get", irreversible=False)) is for_get
    assert type(error_for_exception(exc, tool="crm-cancel", irreversible=True)) is for_cancel


@pytest.mark.parametrize(
    ("error", "for_get", "for_cancel"),
    [
        ({"code": -32700, "message": "parse error"}, P, P),
        ({"code": -32600, "message": "invalid request"}, P, P),
        ({"code": -32601, "message": "no such method"}, P, P),
        ({"code": -32602, "message": "invalid params"}, P, P),
        ({"code": -32603, "message": "internal error"}, R, D),
        ({"code": -32000, "message": "server error"}, R, D),
        ({"message": "no code"}, P, P),
        ("not an object", P, P),
    ],
)
def test_json_rpc_errors(
    error: object, for_get: type[GatewayError], for_cancel: type[GatewayError]
) -> None:
    assert type(error_for_rpc(error, tool="crm-get", irreversible=False)) is for_get
    assert type(error_for_rpc(error, tool="crm-cancel", irreversible=True)) is for_cancel


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("No meeting linked to CRM event 00U", NoMeetingError),
        ("no ChiliPiper meeting found for this event", NoMeetingError),
        ("Meeting not found", NoMeetingError),
        ("Meeting for 00U is already CANCELLED", ToolError),
        ("", ToolError),
    ],
)
def test_tool_failure_is_permanent_and_keeps_the_text(text: str, kind: type[ToolError]) -> None:
    error = tool_failure("crm-cancel", text)
    assert type(error) is kind
    assert isinstance(error, PermanentError)
    assert text in str(error)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        (" 120 ", 120.0),
        ("Wed, 25 Nov 2026 12:00:30 GMT", 30.0),
        ("Wed, 25 Nov 2026 11:59:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("-5", None),
    ],
)
def test_retry_after_header(value: str | None, expected: float | None) -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds(value, now=now) == expected
