"""The sandbox ChiliPiper through Flask's test client: tools, records, errors and the rate
limit, as the worker's parsers will meet them; and over loopback HTTP, the faults that only a
real connection shows (answers trickled, late or lost)."""

from __future__ import annotations

import itertools
import json
import random
import time
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import SandboxServer, random_event_id, wait_for
from worker.dev.sandbox import (
    BOOKED,
    CANCELLED,
    NO_SHOW,
    TOOLS,
    Faults,
    Sandbox,
    create_sandbox_app,
)

HEADERS = {"Accept": "application/json, text/event-stream"}


class Clock:
    """A clock the test moves by hand, so rate-limit windows do not depend on timing."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Mcp:
    """An initialized MCP session on the sandbox app."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        opened = self.rpc("initialize", {"protocolVersion": "2025-06-18"}, session=None)
        self.session = opened.headers["Mcp-Session-Id"]
        self.rpc("notifications/initialized", None, message_id=None)

    def rpc(
        self,
        method: str,
        params: dict[str, Any] | None,
        message_id: int | None = 1,
        session: str | None = "",
    ) -> TestResponse:
        headers = dict(HEADERS)
        if session is not None:
            headers["Mcp-Session-Id"] = session or self.session
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if message_id is not None:
            message["id"] = message_id
        if params is not None:
            message["params"] = params
        return self.client.post("/mcp", json=message, headers=headers)

    def call(self, tool: str, crm_event_id: str) -> TestResponse:
        return self.rpc("tools/call", {"name": tool, "arguments": {"crmEventId": crm_event_id}})

    def result(self, tool: str, crm_event_id: str) -> dict[str, Any]:
        response = self.call(tool, crm_event_id)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json["result"]  # type: ignore[index]
        return result

    def tool_names(self) -> list[str]:
        tools = self.rpc("tools/list", {}).json["result"]["tools"]  # type: ignore[index]
        return [tool["name"] for tool in tools]


class HttpMcp:
    """An initialized MCP session on the sandbox served on loopback: the faults that hold,
    trickle or lose answers only show on a real connection. Each call sets its read timeout
    (the longest wait for any one read)."""

    def __init__(self, sandbox: SandboxServer, http: httpx.Client) -> None:
        self.url = sandbox.url
        self.http = http
        opened = self.post("initialize", {"protocolVersion": "2025-06-18"}, session=None)
        self.session = opened.headers["Mcp-Session-Id"]
        self.post("notifications/initialized", None, message_id=None)

    def post(
        self,
        method: str,
        params: dict[str, Any] | None,
        message_id: int | None = 1,
        session: str | None = "",
        read_timeout: float = 5.0,
    ) -> httpx.Response:
        return self.http.post(
            self.url,
            timeout=httpx.Timeout(5.0, read=read_timeout),
            **self.message(method, params, message_id, session),
        )

    def call(self, tool: str, crm_event_id: str, read_timeout: float = 5.0) -> httpx.Response:
        return self.post(
            "tools/call", self.arguments(tool, crm_event_id), read_timeout=read_timeout
        )

    def stream(
        self, tool: str, crm_event_id: str, read_timeout: float
    ) -> AbstractContextManager[httpx.Response]:
        message = self.message("tools/call", self.arguments(tool, crm_event_id))
        timeout = httpx.Timeout(5.0, read=read_timeout)
        return self.http.stream("POST", self.url, timeout=timeout, **message)

    def record(self, tool: str, crm_event_id: str) -> dict[str, Any]:
        """The record a tool answers as plain JSON, failing the test on anything else."""
        response = self.call(tool, crm_event_id)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        record: dict[str, Any] = response.json()["result"]["structuredContent"]
        return record

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.http.get(
            self.url.removesuffix("/mcp") + "/sandbox/stats"
        ).json()
        return stats

    def message(
        self,
        method: str,
        params: dict[str, Any] | None,
        message_id: int | None = 1,
        session: str | None = "",
    ) -> dict[str, Any]:
        """The keyword arguments that post one JSON-RPC message (`session` "": ours)."""
        headers = dict(HEADERS)
        if session is not None:
            headers["Mcp-Session-Id"] = session or self.session
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if message_id is not None:
            body["id"] = message_id
        if params is not None:
            body["params"] = params
        return {"json": body, "headers": headers}

    @staticmethod
    def arguments(tool: str, crm_event_id: str) -> dict[str, Any]:
        return {"name": tool, "arguments": {"crmEventId": crm_event_id}}


@pytest.fixture
def clock() -> Clock:
    return Clock(1_750_000_000.25)


@pytest.fixture
def state(clock: Clock) -> Sandbox:
    return Sandbox(clock=clock, random=random.Random(0))


@pytest.fixture
def client(state: Sandbox) -> FlaskClient:
    return create_sandbox_app(state).test_client()


@pytest.fixture
def mcp(client: FlaskClient) -> Mcp:
    return Mcp(client)


@pytest.fixture
def http_mcp(sandbox: SandboxServer, http: httpx.Client) -> HttpMcp:
    return HttpMcp(sandbox, http)


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages in an SSE body (one `data:` line each, as the sandbox sends)."""
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def error_text(result: dict[str, Any]) -> str:
    assert result["isError"] is True
    [content] = result["content"]
    assert content["type"] == "text"
    text: str = content["text"]
    return text


# --- tools/list -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tools", "expected"),
    [
        ("v1", ["crm-get", "crm-cancel", "crm-noshow"]),
        ("v2", ["crm-get", "crm-cancel-post", "crm-noshow-post"]),
        ("both", ["crm-get", "crm-cancel", "crm-noshow", "crm-cancel-post", "crm-noshow-post"]),
    ],
)
def test_tools_list_offers_the_chosen_versions(
    state: Sandbox, mcp: Mcp, tools: str, expected: list[str]
) -> None:
    state.configure(tools=tools)
    assert mcp.tool_names() == expected


def test_tool_schemas_take_one_crm_event_id_and_describe_the_risks(mcp: Mcp) -> None:
    tools = {t["name"]: t for t in mcp.rpc("tools/list", {}).json["result"]["tools"]}  # type: ignore[index]
    for tool in tools.values():
        assert tool["inputSchema"]["required"] == ["crmEventId"]
        assert tool["inputSchema"]["properties"]["crmEventId"]["type"] == "string"
    assert "irreversible; may email attendees" in tools["crm-cancel-post"]["description"]
    assert "not reversible via API" in tools["crm-noshow-post"]["description"]
    assert "(deprecated: use crm-cancel-post)" in tools["crm-cancel"]["description"]
    assert "(deprecated: use crm-noshow-post)" in tools["crm-noshow"]["description"]
    assert "deprecated" not in tools["crm-cancel-post"]["description"]


def test_a_tool_not_offered_is_an_unknown_tool(state: Sandbox, mcp: Mcp) -> None:
    state.configure(tools="v2")
    event = random_event_id()
    for name in ("crm-cancel", "crm-delete"):
        body = mcp.call(name, event).json
        assert body["error"] == {"code": -32602, "message": f"Unknown tool: {name}"}  # type: ignore[index]
    assert state.calls == []
    assert event not in state.meetings


# --- records --------------------------------------------------------------------------------


def test_crm_get_answers_the_full_record(state: Sandbox, mcp: Mcp, clock: Clock) -> None:
    event = random_event_id()
    result = mcp.result("crm-get", event)
    assert result["isError"] is False
    record = result["structuredContent"]
    assert json.loads(result["content"][0]["text"]) == record
    assert record["meetingStatus"] == "Active"
    start = datetime.fromisoformat(record["dateTime"]["start"])
    end = datetime.fromisoformat(record["dateTime"]["end"])
    assert end - start == timedelta(minutes=30)
    assert start.timestamp() > clock.now
    assert start.minute == start.second == 0
    assert datetime.fromisoformat(record["bookedAt"]).timestamp() < clock.now
    assert record["dateTime"]["start"].endswith("Z")
    assert len(record["attendees"]) == 2
    assert record["primaryGuest"]["value"] == record["attendees"][0]["email"]
    assert all(a["email"] and a["fullName"] for a in record["attendees"])
    assert all(record[key] for key in ("hostId", "hostEmail", "hostName", "workspaceId"))
    assert mcp.result("crm-get", event)["structuredContent"] == record  # stable


def test_records_are_deterministic_per_event() -> None:
    event = random_event_id()
    first, second = Sandbox(), Sandbox()
    one = first.run_tool("crm-get", event)[1]
    other = second.run_tool("crm-get", event)[1]
    assert isinstance(one, dict)
    assert isinstance(other, dict)
    assert one["meetingId"] == other["meetingId"]
    assert one["attendees"] == other["attendees"]


def test_upper_spelling(state: Sandbox, mcp: Mcp) -> None:
    state.configure(status_spelling="upper")
    event = random_event_id()
    assert mcp.result("crm-get", event)["structuredContent"]["meetingStatus"] == "BOOKED"
    assert mcp.result("crm-noshow-post", event)["structuredContent"]["meetingStatus"] == "NO_SHOW"


@pytest.mark.parametrize(
    ("tool", "status", "spelled"),
    [
        ("crm-cancel-post", CANCELLED, "Canceled"),
        ("crm-cancel", CANCELLED, "Canceled"),
        ("crm-noshow-post", NO_SHOW, "NoShow"),
        ("crm-noshow", NO_SHOW, "NoShow"),
    ],
)
def test_cancel_and_noshow_answer_the_updated_record(
    state: Sandbox, mcp: Mcp, clock: Clock, tool: str, status: str, spelled: str
) -> None:
    event = random_event_id()
    meeting_id = mcp.result("crm-get", event)["structuredContent"]["meetingId"]
    result = mcp.result(tool, event)
    assert result["isError"] is False
    assert result["structuredContent"]["meetingStatus"] == spelled
    assert result["structuredContent"]["meetingId"] == meeting_id
    assert state.meetings[event] == status
    assert state.calls[-1] == {
        "tool": tool,
        "action": tool.removeprefix("crm-").removesuffix("-post"),
        "crmEventId": event,
        "ok": True,
        "status": 200,
        "before": BOOKED,
        "after": status,
        "at": clock.now,
    }


# --- errors ---------------------------------------------------------------------------------


def test_a_second_cancel_is_a_409(state: Sandbox, mcp: Mcp) -> None:
    event = random_event_id()
    meeting_id = mcp.result("crm-cancel-post", event)["structuredContent"]["meetingId"]
    result = mcp.result("crm-cancel-post", event)
    assert error_text(result) == (
        '409 Conflict: {"errorCode":"MeetingNotActive",'
        f'"errorMessage":"Meeting {meeting_id} is already Canceled"}}'
    )
    assert result["structuredContent"] == {
        "status": 409,
        "errorCode": "MeetingNotActive",
        "errorMessage": f"Meeting {meeting_id} is already Canceled",
    }
    assert state.calls[-1]["status"] == 409
    assert state.calls[-1]["ok"] is False
    assert state.calls[-1]["before"] == state.calls[-1]["after"] == CANCELLED


def test_noshow_of_a_completed_meeting_is_a_409(client: FlaskClient, mcp: Mcp) -> None:
    event = random_event_id()
    client.post("/sandbox/meetings", json={event: "Completed"})
    text = error_text(mcp.result("crm-noshow", event))
    assert text.startswith('409 Conflict: {"errorCode":"MeetingNotActive"')
    assert text.endswith('is already Completed"}')


@pytest.mark.parametrize("tool", ["crm-get", "crm-cancel-post", "crm-noshow"])
def test_an_unlinked_event_is_a_404(state: Sandbox, mcp: Mcp, tool: str) -> None:
    event = random_event_id("00V")  # not an Event: nothing is booked for it
    result = mcp.result(tool, event)
    assert error_text(result) == (
        '404 Not Found: {"errorCode":"CrmEventNotLinked",'
        f'"errorMessage":"No meeting linked to CRM event {event}"}}'
    )
    assert result["structuredContent"]["status"] == 404
    assert result["structuredContent"]["errorCode"] == "CrmEventNotLinked"
    assert state.calls[-1]["status"] == 404


def test_an_event_seeded_as_unlinked_is_a_404(client: FlaskClient, mcp: Mcp) -> None:
    event = random_event_id()
    client.post("/sandbox/meetings", json={event: None})
    assert error_text(mcp.result("crm-get", event)).startswith("404 Not Found: ")


@pytest.mark.parametrize("bad", ["00U123", "00U5g00000MnOpQEAVX", "00U5g00000MnOp!"])
def test_a_malformed_event_id_is_a_text_400(state: Sandbox, mcp: Mcp, bad: str) -> None:
    result = mcp.result("crm-cancel-post", bad)
    assert error_text(result) == "400 Bad Request: Invalid value for: path parameter crmEventId"
    assert result["structuredContent"] == {
        "status": 400,
        "errorCode": None,
        "errorMessage": "Invalid value for: path parameter crmEventId",
    }
    assert bad not in state.meetings  # never looked up, so never booked


def test_a_15_character_id_is_accepted(mcp: Mcp) -> None:
    result = mcp.result("crm-get", random_event_id()[:15])
    assert result["structuredContent"]["meetingStatus"] == "Active"


def test_a_missing_permission_refuses_changes(
    client: FlaskClient, state: Sandbox, mcp: Mcp
) -> None:
    configured = client.post("/sandbox/config", json={"missing_permission": "meeting.modify"})
    assert configured.status_code == 200
    event = random_event_id()
    expected = (
        '403 Forbidden: {"errorCode":"MissingPermission",'
        '"errorMessage":"Missing permission: meeting.modify",'
        '"arguments":{"permission":"meeting.modify"}}'
    )
    for tool in ("crm-cancel", "crm-cancel-post", "crm-noshow", "crm-noshow-post"):
        result = mcp.result(tool, event)
        assert error_text(result) == expected
        assert result["structuredContent"]["status"] == 403
        assert result["structuredContent"]["arguments"] == {"permission": "meeting.modify"}
    assert mcp.result("crm-get", event)["isError"] is False
    assert state.meetings[event] == BOOKED


def test_a_missing_argument_is_invalid_params(mcp: Mcp) -> None:
    response = mcp.rpc("tools/call", {"name": "crm-get", "arguments": {}})
    assert response.json["error"]["code"] == -32602  # type: ignore[index]


# --- the rate limit -------------------------------------------------------------------------


def test_the_rate_limit_refuses_the_sixth_call_in_a_second(
    state: Sandbox, mcp: Mcp, clock: Clock
) -> None:
    state.configure(rate_limit=5)
    event = random_event_id()
    for _ in range(5):
        mcp.result("crm-get", event)
    mcp.rpc("tools/list", {})  # not counted
    refused = mcp.call("crm-cancel-post", event)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.json == {"errorCode": "TooManyRequests", "errorMessage": "Rate limit exceeded"}
    assert state.meetings[event] == BOOKED  # a refused call never reaches the meeting
    assert state.rate_limited == 1
    assert state.faults_served == {429: 1}
    assert state.calls[-1] | {"at": None} == {
        "tool": "crm-cancel-post",
        "action": "cancel",
        "crmEventId": event,
        "ok": False,
        "status": 429,
        "before": BOOKED,
        "after": BOOKED,
        "at": None,
    }
    clock.now = 1_750_000_000.999
    assert mcp.call("crm-get", event).status_code == 429
    clock.now = 1_750_000_001.0  # the next window
    assert mcp.result("crm-cancel-post", event)["structuredContent"]["meetingStatus"] == "Canceled"
    assert state.rate_limited == 2


def test_the_rate_limit_counts_every_tool_call(state: Sandbox, mcp: Mcp) -> None:
    state.configure(rate_limit=2, rate_limit_retry_after=False)
    mcp.call("crm-get", random_event_id())
    mcp.call("crm-delete", random_event_id())  # unknown, yet counted
    refused = mcp.call("crm-get", random_event_id())
    assert refused.status_code == 429
    assert "Retry-After" not in refused.headers


def test_no_rate_limit_by_default(state: Sandbox, mcp: Mcp) -> None:
    event = random_event_id()
    for _ in range(50):
        mcp.result("crm-get", event)
    assert state.rate_limited == 0


# --- faults keep working --------------------------------------------------------------------


def test_a_faulted_call_is_not_logged(state: Sandbox, mcp: Mcp) -> None:
    state.faults = Faults(fail_next=1, status=503, retry_after=2)
    refused = mcp.call("crm-get", random_event_id())
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "2"
    assert state.calls == []
    assert state.faults_served == {503: 1}


def test_sse_answers_carry_the_record(state: Sandbox, mcp: Mcp) -> None:
    state.faults = Faults(sse=True)
    response = mcp.call("crm-get", random_event_id())
    assert response.mimetype == "text/event-stream"
    data = next(line for line in response.text.splitlines() if line.startswith("data: "))
    message = json.loads(data.removeprefix("data: "))
    assert message["result"]["structuredContent"]["meetingStatus"] == "Active"


# --- irreversible calls without a timely answer (over loopback HTTP) ------------------------


def test_a_trickled_answer_never_trips_a_read_timeout(
    sandbox: SandboxServer, http_mcp: HttpMcp
) -> None:
    event = random_event_id()
    http_mcp.record("crm-get", event)
    sandbox.set_faults(trickle_seconds=2.5)  # a comment every trickle_interval=0.5 s
    assert http_mcp.record("crm-get", event)["meetingStatus"] == "Active"  # not trickled
    started = time.monotonic()
    with http_mcp.stream("crm-cancel-post", event, read_timeout=1.0) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert time.monotonic() - started < 0.5
        assert sandbox.state.meeting(event)["status"] == CANCELLED  # before the answer
        arrivals, chunks = [started], []
        for chunk in response.iter_raw():  # a read slower than 1 s raises ReadTimeout
            arrivals.append(time.monotonic())
            chunks.append(chunk)
    assert arrivals[-1] - started >= 2.5
    assert max(b - a for a, b in itertools.pairwise(arrivals)) < 0.8
    assert len(chunks) >= 5
    body = b"".join(chunks).decode()
    assert body.startswith(": ")
    [message] = sse_messages(body)
    assert message["result"]["structuredContent"]["meetingStatus"] == "Canceled"
    assert len(sandbox.calls(event, action="cancel")) == 1


def test_a_late_effect_lands_after_the_caller_gave_up(
    sandbox: SandboxServer, http_mcp: HttpMcp
) -> None:
    event = random_event_id()
    http_mcp.record("crm-get", event)
    sandbox.set_faults(late_effect_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http_mcp.call("crm-cancel-post", event, read_timeout=0.5)
    assert sandbox.state.meeting(event)["status"] == BOOKED
    assert http_mcp.record("crm-get", event)["meetingStatus"] == "Active"  # answered at once
    assert time.monotonic() - started < 1.2
    assert sandbox.calls(event, action="cancel") == []
    wait_for(lambda: sandbox.state.meeting(event)["status"] == CANCELLED, timeout=3, interval=0.01)
    assert 1.45 <= time.monotonic() - started < 2.2
    assert http_mcp.record("crm-get", event)["meetingStatus"] == "Canceled"
    time.sleep(0.1)  # the held request answers a closed connection: nothing is applied again
    [cancel] = sandbox.calls(event, action="cancel")
    assert cancel["tool"] == "crm-cancel-post"
    assert (cancel["status"], cancel["before"], cancel["after"]) == (200, BOOKED, CANCELLED)


def test_a_lost_answer_follows_the_effect(sandbox: SandboxServer, http_mcp: HttpMcp) -> None:
    event = random_event_id()
    http_mcp.record("crm-get", event)
    lost_before = http_mcp.stats()["answers_lost"]
    sandbox.set_faults(lose_answer_rate=1.0)
    response = http_mcp.call("crm-cancel-post", event)
    assert response.status_code == 504
    assert response.headers["content-type"].startswith("text/plain")
    assert "lost" in response.text
    assert sandbox.state.meeting(event)["status"] == CANCELLED
    [cancel] = sandbox.calls(event, action="cancel")
    assert (cancel["status"], cancel["before"], cancel["after"]) == (200, BOOKED, CANCELLED)
    assert http_mcp.record("crm-get", event)["meetingStatus"] == "Canceled"  # never lost
    assert http_mcp.stats()["answers_lost"] == lost_before + 1


def test_lost_answers_are_drawn_from_the_seeded_random() -> None:
    def lost_pattern(state: Sandbox) -> list[int]:
        state.faults = Faults(lose_answer_rate=0.5, lost_answer_status=502)
        calls = Mcp(create_sandbox_app(state).test_client())
        return [calls.call("crm-noshow", random_event_id()).status_code for _ in range(20)]

    first = lost_pattern(Sandbox(random=random.Random(7)))
    assert first == lost_pattern(Sandbox(random=random.Random(7)))
    assert set(first) == {200, 502}
    state = Sandbox(random=random.Random(7))
    lost_pattern(state)
    assert state.stats()["answers_lost"] == first.count(502)
    assert [call["after"] for call in state.calls] == [NO_SHOW] * 20  # every effect applied
    state.reset()
    assert state.stats()["answers_lost"] == 0


def test_faults_refuse_values_that_would_never_answer(client: FlaskClient, state: Sandbox) -> None:
    for bad in (
        {"trickle_interval": 0},
        {"late_effect_seconds": -1},
        {"lose_answer_rate": 1.5},
        {"lost_answer_status": 200},
        {"nope": 1},
        [1],
    ):
        assert client.post("/sandbox/faults", json=bad).status_code == 400, bad
    assert state.faults == Faults()
    answered = client.post("/sandbox/faults", json={"lose_answer_rate": 0.25}).json
    assert answered["lose_answer_rate"] == 0.25  # type: ignore[index]
    assert answered["lost_answer_status"] == 504  # type: ignore[index]


# --- control endpoints ----------------------------------------------------------------------


def test_seeding_accepts_any_spelling(client: FlaskClient) -> None:
    events = [random_event_id() for _ in range(5)]
    body = dict(zip(events, ["booked", "Canceled", "NoShow", "COMPLETED", "no_show"], strict=True))
    seeded = client.post("/sandbox/meetings", json=body).json
    assert [seeded[e] for e in events] == [BOOKED, CANCELLED, NO_SHOW, "COMPLETED", NO_SHOW]  # type: ignore[index]
    assert client.post("/sandbox/meetings", json={events[0]: "Rescheduled"}).status_code == 400


def test_reading_a_meeting(client: FlaskClient, mcp: Mcp) -> None:
    event = random_event_id()
    assert client.get(f"/sandbox/meetings/{event}").json == {
        "crmEventId": event,
        "status": None,
        "record": None,
    }
    record = mcp.result("crm-noshow-post", event)["structuredContent"]
    assert client.get(f"/sandbox/meetings/{event}").json == {
        "crmEventId": event,
        "status": NO_SHOW,
        "record": record,
    }


def test_config_endpoint_checks_values(client: FlaskClient, state: Sandbox) -> None:
    for bad in ({"tools": "v3"}, {"status_spelling": "lower"}, {"rate_limit": 0}, {"nope": 1}):
        assert client.post("/sandbox/config", json=bad).status_code == 400
    answered = client.post("/sandbox/config", json={"tools": "v1", "rate_limit": 3}).json
    assert answered == {
        "tools": "v1",
        "status_spelling": "edge",
        "missing_permission": None,
        "rate_limit": 3.0,
        "rate_limit_retry_after": True,
    }
    assert client.get("/sandbox/config").json == answered
    assert state.rate_limit == 3.0


def test_reset_restores_the_defaults(client: FlaskClient, state: Sandbox, mcp: Mcp) -> None:
    state.configure(tools="v2", status_spelling="upper", missing_permission="x", rate_limit=1)
    mcp.call("crm-get", random_event_id())
    client.post("/sandbox/reset")
    assert state.config()["tools"] == "both"
    assert state.config()["rate_limit"] is None
    assert state.config()["missing_permission"] is None
    assert state.calls == []
    assert state.meetings == {}


def test_the_sandbox_dataclass_checks_its_switches() -> None:
    with pytest.raises(ValueError, match="tools must be one of"):
        Sandbox(tools="v3")  # type: ignore[arg-type]
    assert set(TOOLS) == {
        "crm-get",
        "crm-cancel",
        "crm-noshow",
        "crm-cancel-post",
        "crm-noshow-post",
    }
