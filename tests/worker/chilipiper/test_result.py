from __future__ import annotations

import json
from typing import Any

import pytest

from worker.chilipiper.result import ToolResult

STATUS = {"crmEventId": "00U5g00000MnOpQEAV", "status": "CANCELLED"}


@pytest.mark.parametrize(
    "result",
    [
        {"content": [], "structuredContent": STATUS},
        {"content": [{"type": "text", "text": json.dumps(STATUS)}]},
        # How servers built with the official SDK wrap a plain return value:
        {"content": [], "structuredContent": {"result": json.dumps(STATUS)}},
        {"content": [], "structuredContent": {"result": STATUS}},
        {"content": [{"type": "text", "text": json.dumps({"meeting": {"status": "cancelled"}})}]},
    ],
)
def test_meeting_status_is_found_wherever_the_server_put_it(result: dict[str, Any]) -> None:
    assert ToolResult.from_mcp("crm-get", "00U", result).meeting_status == "CANCELLED"


@pytest.mark.parametrize(
    "result",
    [
        {"content": [{"type": "text", "text": "Meeting cancelled"}]},
        {"content": [{"type": "image", "data": "..."}], "structuredContent": {"result": 3}},
        {},
    ],
)
def test_no_status_when_the_answer_has_none(result: dict[str, Any]) -> None:
    assert ToolResult.from_mcp("crm-get", "00U", result).meeting_status is None
