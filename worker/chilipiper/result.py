"""What a ChiliPiper tool answered, and the part of it that is stored with the operation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from worker.domain.meetings import Meeting


@dataclass(frozen=True)
class ToolResult:
    """A successful tool call. `data` is the structured answer when there is one."""

    tool: str
    crm_event_id: str
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    is_error: bool = False  # the tool ran and refused; gateways raise a ToolError for it
    execution_id: str | None = None  # Scalekit's ID of the execution, kept with the key

    @classmethod
    def from_mcp(cls, tool: str, crm_event_id: str, result: dict[str, Any]) -> ToolResult:
        """From an MCP `CallToolResult`: text blocks joined; structured content, or the text
        parsed as a JSON object, as `data`."""
        blocks = result.get("content") or []
        text = "\n".join(
            block.get("text", "")
            for block in blocks
            if isinstance(block, dict) and block.get("type") == "text"
        )
        data = _unwrap(result.get("structuredContent")) or _json_object(text)
        return cls(
            tool=tool,
            crm_event_id=crm_event_id,
            text=text,
            data=data,
            is_error=bool(result.get("isError")),
        )

    @classmethod
    def from_scalekit(cls, tool: str, crm_event_id: str, payload: dict[str, Any]) -> ToolResult:
        """From Scalekit's `{"data": ..., "execution_id": ...}`. For an MCP connector `data`
        may be the MCP result itself (content, isError); otherwise it is the answer."""
        data = payload.get("data")
        execution_id = payload.get("execution_id")
        if isinstance(data, dict) and ("content" in data or "isError" in data):
            parsed = cls.from_mcp(tool, crm_event_id, data)
        else:
            structured = _unwrap(data)
            parsed = cls(
                tool=tool,
                crm_event_id=crm_event_id,
                text=json.dumps(data) if data is not None else "",
                data=structured,
            )
        return replace(parsed, execution_id=str(execution_id) if execution_id else None)

    @property
    def meeting(self) -> Meeting:
        """The meeting the answer describes (`crm-get`'s record, or the updated record the
        POST tools answer), in any of ChiliPiper's spellings."""
        return Meeting.from_record(self.data)

    def to_record(self) -> dict[str, Any]:
        """What is kept with the operation: which tool answered, and the meeting's ID, status
        and times. Not the rest of the record: it names the attendees and their addresses."""
        record: dict[str, Any] = {"tool": self.tool, "crm_event_id": self.crm_event_id}
        if self.execution_id:
            record["execution_id"] = self.execution_id
        meeting = self.meeting.to_record()
        if meeting:
            record["meeting"] = meeting
        return record


def _unwrap(structured: object) -> dict[str, Any]:
    """Structured content as an object. Servers built with the official SDK wrap a plain
    return value as `{"result": value}`, where the value may itself be JSON text."""
    if isinstance(structured, dict) and set(structured) == {"result"}:
        structured = structured["result"]
    if isinstance(structured, str):
        structured = _json_object(structured)
    return structured if isinstance(structured, dict) else {}


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
