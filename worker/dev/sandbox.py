"""A local ChiliPiper stand-in: a real MCP server (streamable HTTP) for development and tests.

Three tools, `crm-get`, `crm-noshow` and `crm-cancel`, over meetings with statuses (`BOOKED`,
`CANCELLED`, `NO_SHOW`). Any Event ID (key prefix 00U) gets a BOOKED meeting on first use, so
demos need no seeding. Control endpoints under `/sandbox/` seed meetings, read the call log
and switch on faults (HTTP errors with `Retry-After`, slow answers, SSE answers, expired
sessions), which is what the tests drive it with.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request

log = logging.getLogger("crmhook.sandbox")

PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
BOOKED, CANCELLED, NO_SHOW = "BOOKED", "CANCELLED", "NO_SHOW"
TOOLS = {
    "crm-get": "Get the ChiliPiper meeting linked to a CRM event.",
    "crm-cancel": "Cancel the ChiliPiper meeting linked to a CRM event (emails attendees).",
    "crm-noshow": "Mark the ChiliPiper meeting linked to a CRM event as a no-show.",
}


@dataclass
class Faults:
    """Switches for bad minutes. `fail_next` answers with `status` that many times; `rates`
    answers each request at random, e.g. {"503": 0.3, "429": 0.1}. A faulted request is
    refused before it reaches the meetings (as a real 429/503 is)."""

    fail_next: int = 0
    status: int = 503
    rates: dict[str, float] = field(default_factory=dict)
    retry_after: float | None = None
    delay_seconds: float = 0.0
    sse: bool = False
    expire_sessions: bool = False


@dataclass
class Sandbox:
    """The sandbox's state: meetings, sessions, the call log and the fault switches."""

    auto_book: bool = True
    required_token: str | None = None  # when set, requests must carry it as a bearer token
    meetings: dict[str, str] = field(default_factory=dict)
    unlinked: set[str] = field(default_factory=set)
    calls: list[dict[str, Any]] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    faults: Faults = field(default_factory=Faults)
    faults_served: dict[int, int] = field(default_factory=dict)
    fault_times: list[float] = field(default_factory=list)
    random: random.Random = field(default_factory=random.Random)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_tool(self, tool: str, crm_event_id: str) -> tuple[bool, dict[str, Any] | str]:
        """(ok, structured answer or error text), applying the tool to the meeting."""
        answer: dict[str, Any] | str
        with self.lock:
            status = self.meetings.get(crm_event_id)
            bookable = self.auto_book and crm_event_id not in self.unlinked
            if status is None and bookable and crm_event_id.startswith("00U"):
                status = self.meetings[crm_event_id] = BOOKED
            before = status
            if status is None:
                ok, answer = False, f"No meeting linked to CRM event {crm_event_id}"
            elif tool == "crm-get":
                ok, answer = True, {"crmEventId": crm_event_id, "status": status}
            elif status != BOOKED:
                ok, answer = False, f"Meeting for {crm_event_id} is already {status}"
            else:
                status = CANCELLED if tool == "crm-cancel" else NO_SHOW
                self.meetings[crm_event_id] = status
                ok, answer = True, {"crmEventId": crm_event_id, "status": status}
            self.calls.append(
                {
                    "tool": tool,
                    "crmEventId": crm_event_id,
                    "ok": ok,
                    "before": before,
                    "after": status,
                    "at": time.time(),
                }
            )
        log.info("%s %s: %s → %s", tool, crm_event_id, before, status if ok else answer)
        return ok, answer

    def take_fault(self) -> int | None:
        """The status to fail this request with, if any."""
        with self.lock:
            faults = self.faults
            status: int | None = None
            if faults.fail_next > 0:
                faults.fail_next -= 1
                status = faults.status
            else:
                roll = self.random.random()
                for code, rate in faults.rates.items():
                    if roll < rate:
                        status = int(code)
                        break
                    roll -= rate
            if status is not None:
                self.faults_served[status] = self.faults_served.get(status, 0) + 1
                self.fault_times.append(time.time())
            return status


def create_sandbox_app(sandbox: Sandbox | None = None) -> Flask:
    """The sandbox as a WSGI app: MCP at `/mcp`, controls under `/sandbox/`."""
    state = sandbox or Sandbox()
    app = Flask("crmhook-sandbox")
    app.extensions["sandbox"] = state

    @app.post("/mcp")
    def mcp() -> Response | tuple[Response, int]:
        faults = state.faults
        if faults.delay_seconds:
            time.sleep(faults.delay_seconds)
        if state.required_token and request.headers.get("Authorization") != (
            f"Bearer {state.required_token}"
        ):
            return _rpc_error(None, -32001, "invalid token", status=401)
        fault = state.take_fault()
        if fault is not None:
            retry_after = faults.retry_after
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            return Response("sandbox fault", status=fault, headers=headers)
        accept = request.headers.get("Accept", "")
        if "application/json" not in accept or "text/event-stream" not in accept:
            return _rpc_error(
                None, -32600, "Accept must list application/json and text/event-stream", status=406
            )
        message = request.get_json(silent=True)
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            return _rpc_error(None, -32700, "not a JSON-RPC 2.0 message", status=400)
        method, message_id = message.get("method"), message.get("id")
        if method == "initialize":
            return _initialize(state, message)
        session = request.headers.get("Mcp-Session-Id", "")
        if faults.expire_sessions:
            with state.lock:
                state.sessions.clear()
                faults.expire_sessions = False
        if session not in state.sessions:
            return _rpc_error(message_id, -32001, "unknown session", status=404 if session else 400)
        if message_id is None:  # a notification, such as notifications/initialized
            return Response(status=202)
        if method == "tools/list":
            return _answer(message_id, {"tools": [_tool_schema(name) for name in TOOLS]}, faults)
        if method == "tools/call":
            return _call_tool(state, message_id, message.get("params") or {}, faults)
        if method == "ping":
            return _answer(message_id, {}, faults)
        return _rpc_error(message_id, -32601, f"method {method!r} not found")

    @app.get("/sandbox/calls")
    def calls() -> Response:
        with state.lock:
            return jsonify(list(state.calls))

    @app.post("/sandbox/meetings")
    def seed() -> Response:
        """Body: {"<crm event id>": "BOOKED" | "CANCELLED" | "NO_SHOW" | null (no meeting)}."""
        with state.lock:
            for event_id, status in (request.get_json(force=True) or {}).items():
                if status is None:
                    state.meetings.pop(event_id, None)
                    state.unlinked.add(event_id)
                else:
                    state.meetings[event_id] = status
                    state.unlinked.discard(event_id)
            return jsonify(state.meetings)

    @app.get("/sandbox/meetings/<event_id>")
    def meeting(event_id: str) -> Response:
        with state.lock:
            return jsonify({"crmEventId": event_id, "status": state.meetings.get(event_id)})

    @app.post("/sandbox/faults")
    def set_faults() -> Response:
        with state.lock:
            state.faults = Faults(**(request.get_json(force=True) or {}))
            return jsonify(asdict(state.faults))

    @app.post("/sandbox/reset")
    def reset() -> Response:
        with state.lock:
            state.meetings.clear()
            state.unlinked.clear()
            state.calls.clear()
            state.faults = Faults()
        return jsonify({"reset": True})

    return app


def _initialize(state: Sandbox, message: dict[str, Any]) -> Response:
    asked = (message.get("params") or {}).get("protocolVersion")
    version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[-1]
    session = uuid.uuid4().hex
    with state.lock:
        state.sessions.add(session)
    result = {
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": False}},
        "serverInfo": {"name": "chilipiper-sandbox", "version": "0.1.0"},
    }
    response = _answer(message.get("id"), result, state.faults)
    response.headers["Mcp-Session-Id"] = session
    return response


def _call_tool(
    state: Sandbox, message_id: Any, params: dict[str, Any], faults: Faults
) -> Response | tuple[Response, int]:
    name = params.get("name")
    event_id = (params.get("arguments") or {}).get("crmEventId")
    if name not in TOOLS:
        return _rpc_error(message_id, -32602, f"unknown tool {name!r}")
    if not isinstance(event_id, str) or not event_id:
        return _rpc_error(message_id, -32602, "argument crmEventId is required")
    ok, answer = state.run_tool(name, event_id)
    result: dict[str, Any]
    if ok:
        result = {
            "content": [{"type": "text", "text": json.dumps(answer)}],
            "structuredContent": answer,
            "isError": False,
        }
    else:
        result = {"content": [{"type": "text", "text": answer}], "isError": True}
    return _answer(message_id, result, faults)


def _answer(message_id: Any, result: dict[str, Any], faults: Faults) -> Response:
    message = {"jsonrpc": "2.0", "id": message_id, "result": result}
    if faults.sse:

        def stream() -> Iterator[str]:
            yield ": sandbox stream\n\n"
            yield f"event: message\ndata: {json.dumps(message)}\n\n"

        return Response(stream(), mimetype="text/event-stream")
    return jsonify(message)


def _rpc_error(message_id: Any, code: int, text: str, status: int = 200) -> tuple[Response, int]:
    body = {"jsonrpc": "2.0", "id": message_id, "error": {"code": code, "message": text}}
    return jsonify(body), status


def _tool_schema(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": TOOLS[name],
        "inputSchema": {
            "type": "object",
            "properties": {"crmEventId": {"type": "string", "description": "Salesforce Event ID"}},
            "required": ["crmEventId"],
        },
    }
