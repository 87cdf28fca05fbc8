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
    MissingPermission,
    NoMeetingError,
    PermanentError,
    RequestRefused,
    RetryableError,
    ToolError,
    UnknownTool,
)

U, Q = UnknownTool, RequestRefused

R, P, D, C, M = RetryableError, PermanentError, InDoubtError, CredentialsRefused, MissingPermission


@pytest.mark.parametrize(
    ("status", "for_get", "for_cancel"),
    [
        (400, P, P),
        (401, C, C),  # refused credentials: a permanent error the operator can name
        (403, M, M),  # ...and a missing permission, named when ChiliPiper names it
        (404, P, P),
        (405, P, P),
        (406, P, P),
        (409, P, P),
        (413, P, P),
        (422, P, P),
        (423, R, R),  # locked while someone edits: refused, nothing happened
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
        # Refused as a request: nothing ran (RequestRefused, a PermanentError).
        ({"code": -32700, "message": "parse error"}, Q, Q),
        ({"code": -32600, "message": "invalid request"}, Q, Q),
        ({"code": -32601, "message": "no such method"}, Q, Q),
        ({"code": -32602, "message": "invalid params"}, Q, Q),
        ({"code": -32602, "message": "Unknown tool: crm-other"}, Q, Q),  # not the one called
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


# ChiliPiper's documented answers, as a failed tool passes them on: the Edge API's status and
# `{"errorCode", "errorMessage"}` body (plain text for a request it cannot decode).
NOT_LINKED = '{"errorCode":"CrmEventNotLinked","errorMessage":"No meeting linked to CRM event"}'
NOT_ACTIVE = '{"errorCode":"MeetingNotActive","errorMessage":"Meeting m1 is already Canceled"}'
PERMISSION = (
    '{"errorCode":"MissingPermission","errorMessage":"Missing permission: meeting.modify",'
    '"arguments":{"permission":"meeting.modify"}}'
)


@pytest.mark.parametrize(
    ("text", "for_get", "for_cancel"),
    [
        ("400 Bad Request: Invalid value for: path parameter crmEventId", P, P),
        ('HTTP 400: {"errorCode":"DecodingFailure","errorMessage":"Invalid value"}', P, P),
        ('401 Unauthorized: {"errorCode":"Unauthorized","errorMessage":"no key"}', C, C),
        (f"403 Forbidden: {PERMISSION}", M, M),
        (f"404 Not Found: {NOT_LINKED}", NoMeetingError, NoMeetingError),
        (f"409 Conflict: {NOT_ACTIVE}", ToolError, ToolError),
        (
            '422 Unprocessable Entity: {"errorCode":"Invalid","errorMessage":"x"}',
            ToolError,
            ToolError,
        ),
        ('423 Locked: {"errorCode":"Locked","errorMessage":"being edited"}', R, R),
        ('429 Too Many Requests: {"errorCode":"TooManyRequests","errorMessage":"slow"}', R, R),
        ("500 Internal Server Error: boom", R, D),
        ("502 Bad Gateway", R, D),
        ("503 Service Unavailable: maintenance", R, R),
        ("504 Gateway Timeout", R, D),
        # As an MCP server built with the official SDK wraps a tool's exception:
        ("Error executing tool crm-x: Meeting not found", NoMeetingError, NoMeetingError),
        (
            'Error executing tool crm-x: 404 Not Found: {"errorCode":"X"}',
            NoMeetingError,
            NoMeetingError,
        ),
        ("Error executing tool crm-x: Request failed with status code 503", R, R),
    ],
)
def test_chilipipers_documented_answers(
    text: str, for_get: type[GatewayError], for_cancel: type[GatewayError]
) -> None:
    assert type(tool_failure("crm-get", text)) is for_get
    assert type(tool_failure("crm-cancel-post", text, irreversible=True)) is for_cancel


def test_the_status_may_come_in_the_structured_answer() -> None:
    structured = {"status": 404, "errorCode": "CrmEventNotLinked", "errorMessage": "No meeting"}
    error = tool_failure("crm-get", "No meeting", structured=structured)
    assert type(error) is NoMeetingError
    assert error.status == 404
    assert "CrmEventNotLinked" in str(error)


@pytest.mark.parametrize(
    ("text", "permission"),
    [
        (f"403 Forbidden: {PERMISSION}", "meeting.modify"),
        (
            'HTTP 403: {"errorCode":"Forbidden","errorMessage":"required permissions [crm.read]"}',
            "crm.read",
        ),
        ("403 Forbidden", "meeting.modify"),  # not named: what cancel and no-show need
    ],
)
def test_a_403_names_the_missing_permission_for_the_dead_letter(text: str, permission: str) -> None:
    error = tool_failure("crm-cancel-post", text, irreversible=True)
    assert isinstance(error, MissingPermission)
    assert error.permission == permission
    assert f"lacks the permission {permission}" in str(error)
    assert "Command Center" in str(error)


def test_a_403_of_a_read_does_not_guess_a_permission() -> None:
    error = tool_failure("crm-get", "403 Forbidden: <html>see chilipiper.com</html>")
    assert isinstance(error, MissingPermission)
    assert error.permission == ""


@pytest.mark.parametrize(
    ("text", "unknown"),
    [
        ("Unknown tool: crm-cancel", True),  # the official SDK's answer: nothing ran
        ("Tool crm-cancel not found", True),
        ("Unknown tool: crm-noshow", False),  # another tool's name: not about this call
        ("Error executing tool crm-cancel: tool step not found", False),  # it ran, and failed
        ("404 Not Found: meeting tool not found", False),
    ],
)
def test_only_the_exact_unknown_tool_answer_means_nothing_ran(text: str, unknown: bool) -> None:
    assert isinstance(tool_failure("crm-cancel", text, irreversible=True), UnknownTool) is unknown


@pytest.mark.parametrize(
    ("message", "unknown"),
    [
        ("Unknown tool: crm-cancel", True),  # the Python SDK
        ("MCP error -32602: Tool crm-cancel not found", True),  # the TypeScript SDK
        ("Tool crm-cancel: CRM event not found", False),  # raised by a tool that ran
        ("Unknown tool: crm-get", False),
        ("invalid params", False),
    ],
)
def test_a_json_rpc_unknown_tool_must_name_the_tool_called(message: str, unknown: bool) -> None:
    error = error_for_rpc(
        {"code": -32602, "message": message}, tool="crm-cancel", irreversible=True
    )
    assert isinstance(error, UnknownTool) is unknown


def test_scalekit_and_chilipiper_spellings_of_one_tool_are_one_tool() -> None:
    said = "Unknown tool: crm-cancel-post"  # ChiliPiper's words, relayed by Scalekit
    assert isinstance(tool_failure("chilipipermcp_crm_cancel_post", said), UnknownTool)


@pytest.mark.parametrize(
    "text",
    [
        "Meeting canceled; CRM write-back failed: Request failed with status code 503",
        "Cancelled, then the provider answered status: 429",
    ],
)
def test_a_status_named_inside_a_tools_words_is_not_its_answer(text: str) -> None:
    """Only a status that opens the text (or a bare HTTP client failure) is the tool's own:
    one named later may describe a step after the cancel took effect."""
    error = tool_failure("crm-cancel-post", text, irreversible=True)
    assert type(error) is ToolError  # crm-get decides, nothing is resent blind


def test_a_json_body_followed_by_more_words_is_still_read_for_its_code_only() -> None:
    text = (
        '409 Conflict: {"errorCode":"MeetingLocked","meeting":{"attendees":[{"fullName":'
        '"Ada Lovelace","phone":"+44 20 7946 0958"}]}} (request 7f3a)'
    )
    assert str(tool_failure("crm-cancel-post", text)) == "crm-cancel-post: HTTP 409: MeetingLocked"


def test_retry_after_is_capped_at_an_hour() -> None:
    assert retry_after_seconds("99999999999999999999") == 3600
    assert retry_after_seconds("Fri, 31 Dec 9999 23:59:59 GMT") == 3600


def test_chilipipers_text_reaches_a_dead_letter_without_attendees() -> None:
    body = (
        '{"errorCode":"MeetingLocked","meeting":{"attendees":'
        '[{"email":"ada@example.org","fullName":"Ada Lovelace"}]}}'
    )
    error = tool_failure("crm-cancel-post", f"409 Conflict: {body}", irreversible=True)
    assert str(error) == "crm-cancel-post: HTTP 409: MeetingLocked"
    plain = tool_failure("crm-get", "500 Internal Server Error: ask ada@example.org " + "x" * 400)
    assert "ada@" not in str(plain)
    assert "<email>" in str(plain)
    assert len(str(plain)) < 360
