"""Interoperability with the official MCP Python SDK, both ways:
our client against an SDK-built server, and the SDK's client against our sandbox."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from tests.conftest import SandboxServer, random_event_id
from worker.chilipiper.calls import Target
from worker.chilipiper.deadline import Deadline
from worker.chilipiper.mcp import McpGateway
from worker.dev.redis_server import free_port
from worker.domain.operations import Action
from worker.errors import PermanentError, UnknownTool


def chilipiper_lookalike() -> MCPServer:
    """An SDK server offering ChiliPiper's CRM tools as its Edge API now has them (the v2
    POST variants, no v1 cancel) over in-memory meetings with ChiliPiper's status words."""
    server = MCPServer("chilipiper-lookalike")
    meetings: dict[str, str] = {}

    def record(crm_event_id: str, status: str | None = None) -> str:
        if not crm_event_id.startswith("00U"):
            raise ToolError(f"No meeting linked to CRM event {crm_event_id}")
        meetings.setdefault(crm_event_id, "Active")
        if status:
            meetings[crm_event_id] = status
        return json.dumps(
            {"meetingId": f"m-{crm_event_id}", "meetingStatus": meetings[crm_event_id]}
        )

    @server.tool(name="crm-get")
    def crm_get(crmEventId: str) -> str:  # noqa: N803 (ChiliPiper's argument name)
        return record(crmEventId)

    @server.tool(name="crm-cancel-post")
    def crm_cancel_post(crmEventId: str) -> str:  # noqa: N803
        return record(crmEventId, "Canceled")

    @server.tool(name="crm-noshow-post")
    def crm_noshow_post(crmEventId: str) -> str:  # noqa: N803
        return record(crmEventId, "NoShow")

    return server


@pytest.fixture(scope="module", params=[False, True], ids=["sse", "json"])
def sdk_server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    port = free_port()
    app = chilipiper_lookalike().streamable_http_app(json_response=request.param)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "SDK server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(timeout=10)


def test_our_gateway_drives_an_sdk_server(sdk_server_url: str) -> None:
    event = random_event_id()
    with httpx.Client(timeout=5) as client:
        gateway = McpGateway(sdk_server_url, client=client)
        assert str(gateway.discover()) == "crm-get, crm-noshow-post, crm-cancel-post"
        assert gateway.call(Action.GET, event).meeting.status == "BOOKED"
        assert gateway.call(Action.CANCEL, event).meeting.status == "CANCELLED"
        assert gateway.call(Action.GET, event).meeting.status == "CANCELLED"
        with pytest.raises(PermanentError, match="No meeting linked"):
            gateway.call(Action.NOSHOW, random_event_id("00V"))


def test_the_sdks_unknown_tool_answer_reads_as_an_unknown_tool(sdk_server_url: str) -> None:
    """How a server built with the official SDK refuses a tool it does not have: what our
    client must recognise to list the tools again."""
    with httpx.Client(timeout=5) as client:
        gateway = McpGateway(sdk_server_url, client=client)
        target = Target("crm-cancel", irreversible=True)
        with pytest.raises(UnknownTool):
            gateway._tool_result(
                target,
                random_event_id(),
                gateway._request(
                    "tools/call",
                    {"name": "crm-cancel", "arguments": {"crmEventId": random_event_id()}},
                    target=target,
                    deadline=Deadline(5),
                ),
            )


def test_sdk_client_drives_our_sandbox(sandbox: SandboxServer) -> None:
    event = random_event_id()

    async def session() -> tuple[set[str], str, bool]:
        async with Client(sandbox.url) as client:
            tools = await client.list_tools()
            cancelled = await client.call_tool("crm-cancel", {"crmEventId": event})
            again = await client.call_tool("crm-cancel", {"crmEventId": event})
            text = cancelled.content[0].text  # type: ignore[union-attr]
            return {tool.name for tool in tools.tools}, text, again.is_error

    names, text, second_is_error = asyncio.run(session())
    assert names == {"crm-get", "crm-cancel", "crm-noshow", "crm-cancel-post", "crm-noshow-post"}
    assert json.loads(text)["meetingStatus"] == "Canceled"
    assert second_is_error
    assert sandbox.state.meetings[event] == "CANCELLED"
