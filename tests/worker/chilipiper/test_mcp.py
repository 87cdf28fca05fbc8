"""The MCP client: protocol details on an in-memory transport, faults on the real sandbox."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import SandboxServer, random_event_id
from worker.chilipiper.mcp import McpGateway
from worker.domain.operations import Action
from worker.errors import (
    InDoubtError,
    MissingPermission,
    PermanentError,
    RetryableError,
    ToolError,
    ToolsMissing,
)

Handler = Callable[[httpx.Request], httpx.Response]
V1 = ("crm-get", "crm-cancel", "crm-noshow")
BOTH = (*V1, "crm-cancel-post", "crm-noshow-post")


class FakeServer:
    """Records requests and answers like a minimal MCP server, for protocol assertions."""

    def __init__(
        self, *, sse: bool = False, expire_once: bool = False, tools: tuple[str, ...] = BOTH
    ) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.tools = list(tools)
        self.sse = sse
        self.expire_once = expire_once
        self.expire_always = False
        self.sessions = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append((dict(request.headers), body))
        if body["method"] == "initialize":
            self.sessions += 1
            return self.answer(
                body["id"],
                {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "serverInfo": {"name": "fake"},
                },
                {"Mcp-Session-Id": f"session-{self.sessions}"},
            )
        if "id" not in body:
            return httpx.Response(202)
        if self.expire_once or self.expire_always:
            self.expire_once = False
            return httpx.Response(404)
        if body["method"] == "tools/list":
            return self.answer(body["id"], {"tools": [{"name": name} for name in self.tools]})
        if body["params"]["name"] not in self.tools:
            error = {"code": -32602, "message": f"Unknown tool: {body['params']['name']}"}
            return httpx.Response(200, json={"jsonrpc": "2.0", "id": body["id"], "error": error})
        record = {"meetingId": "m1", "meetingStatus": "Canceled"}
        result = {"content": [{"type": "text", "text": json.dumps(record)}], "isError": False}
        return self.answer(body["id"], result)

    def answer(
        self, message_id: int, result: dict[str, Any], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        message = {"jsonrpc": "2.0", "id": message_id, "result": result}
        if self.sse:
            notice = {"jsonrpc": "2.0", "method": "notifications/message", "params": {}}
            text = (
                f"event: message\ndata: {json.dumps(notice)}\n\n"
                f"id: 1\nevent: message\ndata: {json.dumps(message)}\n\n"
            )
            return httpx.Response(
                200, text=text, headers={"Content-Type": "text/event-stream", **(headers or {})}
            )
        return httpx.Response(200, json=message, headers=headers)


def gateway_for(handler: Handler, token: str | None = "cp-token") -> McpGateway:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return McpGateway("https://chilipiper.test/mcp", client=client, token=token)


@pytest.mark.parametrize("sse", [False, True])
def test_handshake_then_call_with_session_and_version_echoed(sse: bool) -> None:
    server = FakeServer(sse=sse)
    result = gateway_for(server).call(Action.CANCEL, "00U5g00000MnOpQEAV")
    assert result.meeting.status == "CANCELLED"
    methods = [body.get("method") for _, body in server.requests]
    assert methods == ["initialize", "notifications/initialized", "tools/list", "tools/call"]
    headers, body = server.requests[3]
    assert body["params"] == {
        "name": "crm-cancel-post",
        "arguments": {"crmEventId": "00U5g00000MnOpQEAV"},
    }
    assert headers["mcp-session-id"] == "session-1"
    assert headers["mcp-protocol-version"] == "2025-06-18"
    assert headers["authorization"] == "Bearer cp-token"
    assert "text/event-stream" in headers["accept"]
    assert "application/json" in headers["accept"]
    assert "mcp-session-id" not in server.requests[0][0]


def test_session_is_opened_once_and_shared() -> None:
    server = FakeServer()
    gateway = gateway_for(server)
    for _ in range(3):
        gateway.call(Action.GET, "00U5g00000MnOpQEAV")
    assert server.sessions == 1


def test_expired_session_is_reopened_and_the_call_sent_again() -> None:
    server = FakeServer(expire_once=True)
    result = gateway_for(server).call(Action.CANCEL, "00U5g00000MnOpQEAV")
    assert result.meeting.status == "CANCELLED"
    assert server.sessions == 2
    assert server.requests[-1][0]["mcp-session-id"] == "session-2"


def test_a_session_refused_twice_is_a_retry_not_a_crash() -> None:
    """Found by review: the second 404 escaped as a private exception, failing the task
    (and acknowledging its message) with the record left running."""
    server = FakeServer()
    gateway = gateway_for(server)
    gateway.call(Action.GET, "00U5g00000MnOpQEAV")
    server.expire_always = True
    with pytest.raises(RetryableError, match="refused a fresh session"):
        gateway.call(Action.CANCEL, "00U5g00000MnOpQEAV")  # each try: two sessions refused


@pytest.mark.parametrize(
    ("offered", "used"),
    [(V1, "crm-noshow"), (("crm-get", "crm-noshow-post", "crm-cancel-post"), "crm-noshow-post")],
)
def test_the_post_variant_is_used_when_offered(offered: tuple[str, ...], used: str) -> None:
    server = FakeServer(tools=offered)
    gateway_for(server).call(Action.NOSHOW, "00U5g00000MnOpQEAV")
    assert server.requests[-1][1]["params"]["name"] == used


def test_tools_are_listed_once_and_shared() -> None:
    server = FakeServer()
    gateway = gateway_for(server)
    for action in (Action.GET, Action.CANCEL, Action.NOSHOW, Action.GET):
        gateway.call(action, "00U5g00000MnOpQEAV")
    methods = [body.get("method") for _, body in server.requests]
    assert methods.count("tools/list") == 1


def test_an_unknown_tool_answer_lists_the_tools_again_and_calls_the_new_name() -> None:
    server = FakeServer(tools=BOTH)
    gateway = gateway_for(server)
    gateway.call(Action.GET, "00U5g00000MnOpQEAV")  # tools known: crm-cancel-post
    server.tools = list(V1)  # ChiliPiper rolled back its v2 tools
    result = gateway.call(Action.CANCEL, "00U5g00000MnOpQEAV")
    assert result.tool == "crm-cancel"
    calls = [
        body["params"]["name"] for _, body in server.requests if body.get("method") == "tools/call"
    ]
    assert calls[-2:] == ["crm-cancel-post", "crm-cancel"]


def test_a_tool_withdrawn_without_a_replacement_is_retried_later() -> None:
    """The worker started with it: it may come back, so the task's retries wait for it."""
    server = FakeServer(tools=BOTH)
    gateway = gateway_for(server)
    gateway.call(Action.GET, "00U5g00000MnOpQEAV")
    server.tools = ["crm-get", "crm-noshow-post"]
    with pytest.raises(RetryableError, match="no crm-cancel-post or crm-cancel"):
        gateway.call(Action.CANCEL, "00U5g00000MnOpQEAV")


def test_a_listing_without_a_tool_for_an_action_says_what_is_missing() -> None:
    server = FakeServer(tools=("crm-get", "crm-cancel-post", "meeting-get"))
    with pytest.raises(ToolsMissing) as missing:
        gateway_for(server).discover()
    assert "no crm-noshow-post or crm-noshow" in str(missing.value)
    assert "CRM tools: crm-cancel-post, crm-get" in str(missing.value)


def test_unknown_protocol_version_is_permanent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        return httpx.Response(
            200,
            json={"jsonrpc": "2.0", "id": body["id"], "result": {"protocolVersion": "1999-01-01"}},
        )

    with pytest.raises(PermanentError, match="1999-01-01"):
        gateway_for(handler).call(Action.GET, "00U5g00000MnOpQEAV")


def test_answer_without_our_response_is_in_doubt_for_cancel() -> None:
    server = FakeServer()

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("method") == "tools/call":
            return httpx.Response(
                200,
                text="event: message\ndata: {not json\n\n",
                headers={"Content-Type": "text/event-stream"},
            )
        return server(request)

    with pytest.raises(InDoubtError):
        gateway_for(handler).call(Action.CANCEL, "00U5g00000MnOpQEAV")


# --- against the sandbox, over real HTTP ----------------------------------------------------


@pytest.fixture
def gateway(sandbox: SandboxServer) -> Iterator[McpGateway]:
    with httpx.Client(timeout=httpx.Timeout(1.0)) as client:
        yield McpGateway(sandbox.url, client=client)


def test_cancel_changes_the_meeting_and_a_second_cancel_is_a_tool_error(
    gateway: McpGateway, sandbox: SandboxServer
) -> None:
    event = random_event_id()
    assert gateway.call(Action.GET, event).meeting.status == "BOOKED"
    assert gateway.call(Action.CANCEL, event).meeting.status == "CANCELLED"
    with pytest.raises(ToolError, match=r"409: MeetingNotActive: .* is already Canceled"):
        gateway.call(Action.CANCEL, event)
    assert [call["tool"] for call in sandbox.calls(event)] == [
        "crm-get",
        "crm-cancel-post",
        "crm-cancel-post",
    ]


@pytest.mark.parametrize(("tools", "cancel"), [("v1", "crm-cancel"), ("v2", "crm-cancel-post")])
def test_each_tool_set_of_the_sandbox(
    gateway: McpGateway, sandbox: SandboxServer, tools: str, cancel: str
) -> None:
    sandbox.configure(tools=tools)
    event = random_event_id()
    result = gateway.call(Action.CANCEL, event)
    assert (result.tool, result.meeting.status) == (cancel, "CANCELLED")
    assert result.meeting.meeting_id
    assert [call["tool"] for call in sandbox.calls(event)] == [cancel]


def test_a_missing_permission_is_named(gateway: McpGateway, sandbox: SandboxServer) -> None:
    sandbox.configure(missing_permission="meeting.modify")
    with pytest.raises(MissingPermission, match=r"lacks the permission meeting\.modify"):
        gateway.call(Action.CANCEL, random_event_id())


def test_no_meeting_linked_is_permanent_after_one_call(
    gateway: McpGateway, sandbox: SandboxServer
) -> None:
    event = random_event_id("00V")  # the sandbox books only 00U events by itself
    with pytest.raises(PermanentError, match="No meeting linked"):
        gateway.call(Action.NOSHOW, event)
    assert len(sandbox.calls(event)) == 1


def test_429_waits_for_retry_after_then_succeeds(
    gateway: McpGateway, sandbox: SandboxServer
) -> None:
    event = random_event_id()
    gateway.call(Action.GET, event)  # open the session first
    sandbox.set_faults(fail_next=1, status=429, retry_after=1)
    started = time.monotonic()
    assert gateway.call(Action.GET, event).meeting.status == "BOOKED"
    assert time.monotonic() - started >= 0.9


def test_503_blips_are_retried_in_call(gateway: McpGateway, sandbox: SandboxServer) -> None:
    event = random_event_id()
    gateway.call(Action.GET, event)
    sandbox.set_faults(fail_next=2, status=503)
    assert gateway.call(Action.CANCEL, event).meeting.status == "CANCELLED"
    assert len(sandbox.calls(event, action="cancel")) == 1


def test_persistent_503_surfaces_as_retryable(gateway: McpGateway, sandbox: SandboxServer) -> None:
    gateway.call(Action.GET, random_event_id())
    sandbox.set_faults(fail_next=100, status=503)
    with pytest.raises(RetryableError, match="HTTP 503"):
        gateway.call(Action.GET, random_event_id())


def test_401_is_permanent(gateway: McpGateway, sandbox: SandboxServer) -> None:
    gateway.call(Action.GET, random_event_id())
    sandbox.set_faults(fail_next=1, status=401)
    with pytest.raises(PermanentError, match="HTTP 401"):
        gateway.call(Action.GET, random_event_id())


def test_timeout_on_cancel_is_in_doubt_and_not_retried(
    gateway: McpGateway, sandbox: SandboxServer
) -> None:
    event = random_event_id()
    gateway.call(Action.GET, event)
    sandbox.set_faults(delay_seconds=1.5)
    with pytest.raises(InDoubtError, match="ReadTimeout"):
        gateway.call(Action.CANCEL, event)
    sandbox.set_faults()
    time.sleep(0.7)  # let the slow request finish on the server
    assert len(sandbox.calls(event, action="cancel")) == 1  # sent once, never repeated blind


def test_sse_answers_and_expired_sessions_on_the_sandbox(
    gateway: McpGateway, sandbox: SandboxServer
) -> None:
    event = random_event_id()
    gateway.call(Action.GET, event)
    sandbox.set_faults(sse=True, expire_sessions=True)
    assert gateway.call(Action.CANCEL, event).meeting.status == "CANCELLED"
    assert set(gateway.list_tools()) == set(BOTH)
