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
from worker.chilipiper.mcp import McpGateway
from worker.dev.redis_server import free_port
from worker.domain.operations import Action
from worker.errors import PermanentError


def chilipiper_lookalike() -> MCPServer:
    """An SDK server offering ChiliPiper's three tools over in-memory meetings."""
    server = MCPServer("chilipiper-lookalike")
    meetings: dict[str, str] = {}

    def meeting(crm_event_id: str) -> str:
        if not crm_event_id.startswith("00U"):
            raise ToolError(f"No meeting linked to CRM event {crm_event_id}")
        return meetings.setdefault(crm_event_id, "BOOKED")

    @server.tool(name="crm-get")
    def crm_get(crmEventId: str) -> str:  # noqa: N803 (ChiliPiper's argument name)
        return json.dumps({"crmEventId": crmEventId, "status": meeting(crmEventId)})

    @server.tool(name="crm-cancel")
    def crm_cancel(crmEventId: str) -> str:  # noqa: N803
        meeting(crmEventId)
        meetings[crmEventId] = "CANCELLED"
        return json.dumps({"crmEventId": crmEventId, "status": "CANCELLED"})

    @server.tool(name="crm-noshow")
    def crm_noshow(crmEventId: str) -> str:  # noqa: N803
        meeting(crmEventId)
        meetings[crmEventId] = "NO_SHOW"
        return json.dumps({"crmEventId": crmEventId, "status": "NO_SHOW"})

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
        assert set(gateway.list_tools()) >= {
            "crm-get",
            "crm-cancel",
            "crm-noshow",
        }
        assert gateway.call(Action.GET, event).meeting_status == "BOOKED"
        assert gateway.call(Action.CANCEL, event).meeting_status == "CANCELLED"
        assert gateway.call(Action.GET, event).meeting_status == "CANCELLED"
        with pytest.raises(PermanentError, match="No meeting linked"):
            gateway.call(Action.NOSHOW, random_event_id("00V"))


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
    assert names == {"crm-get", "crm-cancel", "crm-noshow"}
    assert json.loads(text)["status"] == "CANCELLED"
    assert second_is_error
    assert sandbox.state.meetings[event] == "CANCELLED"
