"""What a ChiliPiper tool answered, in a form that can be stored with the operation's key."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolResult:
    """A successful tool call. `data` is the structured answer when there is one."""

    tool: str
    crm_event_id: str
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)

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
        return cls(tool=tool, crm_event_id=crm_event_id, text=text, data=data)

    @property
    def meeting_status(self) -> str | None:
        """The meeting status a `crm-get` reported (`BOOKED`, `CANCELLED`, `NO_SHOW`...)."""
        for holder in (self.data, self.data.get("meeting")):
            if isinstance(holder, dict) and isinstance(holder.get("status"), str):
                return str(holder["status"]).upper().replace("-", "_").replace(" ", "_")
        return None

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


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
