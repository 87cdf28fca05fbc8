from __future__ import annotations

import json
from typing import Any

import pytest

from worker.chilipiper.result import ToolResult
from worker.domain.meetings import MeetingStatus

STATUS = {"meetingId": "m1", "meetingStatus": "Canceled", "attendees": [{"email": "a@b.example"}]}


@pytest.mark.parametrize(
    "result",
    [
        {"content": [], "structuredContent": STATUS},
        {"content": [{"type": "text", "text": json.dumps(STATUS)}]},
        # How servers built with the official SDK wrap a plain return value:
        {"content": [], "structuredContent": {"result": json.dumps(STATUS)}},
        {"content": [], "structuredContent": {"result": STATUS}},
        {"content": [{"type": "text", "text": json.dumps({"meeting": {"status": "cancelled"}})}]},
        {"content": [], "structuredContent": {"crmEventId": "00U", "status": "CANCELLED"}},
    ],
)
def test_meeting_status_is_found_wherever_the_server_put_it(result: dict[str, Any]) -> None:
    assert ToolResult.from_mcp("crm-get", "00U", result).meeting.status is MeetingStatus.CANCELLED


@pytest.mark.parametrize(
    "result",
    [
        {"content": [{"type": "text", "text": "Meeting cancelled"}]},
        {"content": [{"type": "image", "data": "..."}], "structuredContent": {"result": 3}},
        {},
    ],
)
def test_no_status_when_the_answer_has_none(result: dict[str, Any]) -> None:
    assert ToolResult.from_mcp("crm-get", "00U", result).meeting.status_as_sent is None


def test_the_stored_record_keeps_the_meeting_not_the_attendees() -> None:
    result = ToolResult.from_mcp("crm-cancel-post", "00U", {"structuredContent": STATUS})
    assert result.to_record() == {
        "tool": "crm-cancel-post",
        "crm_event_id": "00U",
        "meeting": {"meeting_id": "m1", "status": "CANCELLED", "status_as_sent": "Canceled"},
    }


def test_scalekit_data_wrapped_by_an_sdk_server_is_unwrapped() -> None:
    payload = {"data": {"result": json.dumps(STATUS)}, "execution_id": "e1"}
    result = ToolResult.from_scalekit("chilipipermcp_crm-get", "00U", payload)
    assert result.meeting.status is MeetingStatus.CANCELLED
