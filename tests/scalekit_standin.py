"""A Scalekit AgentKit stand-in on loopback: OAuth client credentials, `execute_tool` and the
scoped tool listing, in front of the sandbox's meetings. Faults are switched on by the tests.

Shaped after Scalekit's documentation and its ChiliPiper connector catalogue: tools are named
`chilipipermcp_crm-get` (the v1 tools keep their dashes) and `chilipipermcp_crm_cancel_post`
(the v2 ones use underscores); the listing nests names as `tools[].tool.definition.name`; a
failed tool answers `{"code", "message", "details": [{"error_code": "TOOL_ERROR",
"tool_error_info": {...}}]}`, with 404 when no meeting is linked and 500 otherwise."""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request

from worker.dev.sandbox import Sandbox

CLIENT_ID = "skc_test_client"
CLIENT_SECRET = "test-client-secret-0123456789"
CONNECTION = "chilipipermcp"
IDENTIFIER = "user_123"
ERROR_INFO = "type.googleapis.com/scalekit.v1.errdetails.ErrorInfo"


def scalekit_name(tool: str) -> str:
    """The catalogue's name for a sandbox tool: v2 tools with underscores, v1 with dashes."""
    return f"{CONNECTION}_" + (tool.replace("-", "_") if tool.endswith("-post") else tool)


@dataclass
class ScalekitState:
    sandbox: Sandbox
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    token_lifetime: int = 3600
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    tokens_issued: int = 0
    reject_tokens: int = 0  # answer 401 to this many authenticated requests
    fail_next: int = 0
    fail_status: int = 503
    retry_after: int | None = None
    executions: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def create_scalekit_app(state: ScalekitState) -> Flask:
    app = Flask("scalekit-standin")

    @app.post("/oauth/token")
    def token() -> Response | tuple[Response, int]:
        form = request.form
        if form.get("grant_type") != "client_credentials":
            return jsonify({"error": "unsupported_grant_type"}), 400
        if form.get("client_id") != state.client_id or form.get("client_secret") != (
            state.client_secret
        ):
            return jsonify({"error": "invalid_client"}), 401
        issued = secrets.token_urlsafe(16)
        with state.lock:
            state.tokens[issued] = time.monotonic() + state.token_lifetime
            state.tokens_issued += 1
        return jsonify(
            {"access_token": issued, "token_type": "Bearer", "expires_in": state.token_lifetime}
        )

    def authenticated() -> tuple[Response, int] | None:
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ")
        with state.lock:
            if state.reject_tokens > 0:
                state.reject_tokens -= 1
                return jsonify({"message": "token revoked"}), 401
            expiry = state.tokens.get(presented)
        if expiry is None or expiry < time.monotonic():
            return jsonify({"message": "invalid or expired token"}), 401
        return None

    def fault() -> tuple[Response, int] | None:
        with state.lock:
            if state.fail_next <= 0:
                return None
            state.fail_next -= 1
            response = jsonify({"message": "scalekit stand-in fault"})
            if state.retry_after is not None:
                response.headers["Retry-After"] = str(state.retry_after)
            return response, state.fail_status

    @app.post("/api/v1/execute_tool")
    def execute() -> Response | tuple[Response, int]:
        refused = authenticated() or fault()
        if refused:
            return refused
        body = request.get_json(force=True)
        if body.get("connector") != CONNECTION or body.get("identifier") != IDENTIFIER:
            return jsonify({"message": "connected account not found"}), 404
        name = str(body.get("tool_name", ""))
        offered = {scalekit_name(tool): tool for tool in state.sandbox.offered_tools()}
        if name not in offered:
            return jsonify({"code": 5, "message": f"tool {name} not found"}), 404
        event_id = (body.get("params") or {}).get("crmEventId")
        answer = state.sandbox.call_tool(offered[name], str(event_id))
        execution_id = uuid.uuid4().hex
        with state.lock:
            state.executions.append(
                {"tool_name": name, "execution_id": execution_id, "ok": answer.ok}
            )
        if not answer.ok:
            said = answer.body if isinstance(answer.body, str) else json.dumps(answer.body)
            info = {
                "@type": ERROR_INFO,
                "error_code": "TOOL_ERROR",
                "tool_error_info": {
                    "execution_id": execution_id,
                    "tool_error_code": str(answer.status),
                    "tool_error_message": said,
                },
            }
            status = 404 if answer.status == 404 else 500
            return jsonify({"code": 13, "message": said, "details": [info]}), status
        return jsonify({"data": answer.body, "execution_id": execution_id})

    @app.get("/api/v1/tools/scoped")
    def scoped_tools() -> Response | tuple[Response, int]:
        refused = authenticated()
        if refused:
            return refused
        if request.args.get("identifier") != IDENTIFIER:
            return jsonify({"message": "connected account not found"}), 404
        if request.args.get("filter.connection_names") != CONNECTION:
            return jsonify({"tools": [], "next_page_token": ""})
        names = [scalekit_name(tool) for tool in state.sandbox.offered_tools()]
        page = request.args.get("page_token", "")
        # Two pages, to exercise paging.
        chosen, token = (names[:2], "page-2") if not page else (names[2:], "")
        tools = [{"tool": {"definition": {"name": name}}} for name in chosen]
        return jsonify({"tools": tools, "next_page_token": token})

    return app
