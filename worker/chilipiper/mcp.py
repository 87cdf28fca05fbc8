"""ChiliPiper's tools over MCP streamable HTTP, with plain httpx.

JSON-RPC over POST; answers come as JSON or as an SSE stream. The session is opened once
(`initialize`, then `notifications/initialized`) and shared by the worker's threads; its
`Mcp-Session-Id` and negotiated `MCP-Protocol-Version` are echoed on every request, and a 404
for a known session means it expired: open a new one and send again (the server refused the
request, so nothing happened). Each call, with its session set-up and its retries, ends
within its deadline (`deadline.Deadline`), however slowly the answer streams in.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import Retrying

from worker.chilipiper.calls import (
    PROTOCOL,
    BeforeSend,
    GateLike,
    Target,
    call_through,
    call_tool,
)
from worker.chilipiper.deadline import DEFAULT_DEADLINE_SECONDS, Deadline
from worker.chilipiper.errors import (
    error_for_exception,
    error_for_rpc,
    error_for_status,
    retry_after_seconds,
    tool_failure,
)
from worker.chilipiper.gate import OpenGate
from worker.chilipiper.result import ToolResult
from worker.chilipiper.retries import transient_retries
from worker.chilipiper.tools import ToolCatalog, ToolNames
from worker.domain.operations import Action
from worker.errors import PermanentError, RetryableError

PROTOCOL_VERSION = "2025-11-25"
KNOWN_PROTOCOL_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
CLIENT_INFO = {"name": "crmhook", "version": "0.1.0"}


@dataclass(frozen=True)
class _Session:
    session_id: str | None
    protocol_version: str


class _SessionExpired(Exception):
    """The server no longer knows our session (HTTP 404): re-initialize and send again."""


class McpGateway:
    """`call(action, crm_event_id)` against one MCP server. Safe to share between threads."""

    def __init__(
        self,
        url: str,
        *,
        client: httpx.Client,
        token: str | None = None,
        retrying: Callable[[], Retrying] = transient_retries,
        gate: GateLike | None = None,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    ) -> None:
        self.url = url
        self._client = client
        self._token = token
        self._retrying = retrying
        self._deadline_seconds = deadline_seconds
        self._gate = gate or OpenGate()
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._ids = itertools.count(1)
        self.catalog = ToolCatalog(
            lambda: call_through(self._gate, self._retrying(), self.list_tools)
        )

    def call(
        self,
        action: Action,
        crm_event_id: str,
        *,
        before_send: BeforeSend | None = None,
        deadline: Deadline | None = None,
    ) -> ToolResult:
        """Run `action`'s tool for one event, within the call's deadline (`deadline`, or one
        starting now); raises a GatewayError subclass when it does not succeed.
        `before_send` runs right before each request leaves (and may stop it)."""
        deadline = deadline or Deadline(self._deadline_seconds)

        def send(target: Target) -> ToolResult:
            params = {"name": target.tool, "arguments": {"crmEventId": crm_event_id}}

            def once() -> ToolResult:
                result = self._request("tools/call", params, target=target, deadline=deadline)
                return self._tool_result(target, crm_event_id, result)

            retrying = self._retrying()
            return call_through(
                self._gate,
                retrying,
                once,
                before_send=before_send,
                target=target,
                crm_event_id=crm_event_id,
            )

        return call_tool(self.catalog, action, send)

    def discover(self) -> ToolNames:
        """The tools in use (listed now unless already known)."""
        return self.catalog.names()

    def list_tools(self) -> list[str]:
        """Names of every tool the server offers (following `nextCursor` pages)."""
        names: list[str] = []
        cursor: str | None = None
        deadline = Deadline(self._deadline_seconds)
        while True:
            page = self._request(
                "tools/list",
                {"cursor": cursor} if cursor else {},
                target=PROTOCOL,
                deadline=deadline,
            )
            names.extend(tool["name"] for tool in page.get("tools", []) if "name" in tool)
            cursor = page.get("nextCursor")
            if not cursor:
                return names

    # --- one request, within a session ------------------------------------------------------

    def _request(
        self, method: str, params: dict[str, Any], *, target: Target, deadline: Deadline
    ) -> dict[str, Any]:
        session = self._open_session(deadline)
        try:
            return self._rpc(method, params, session, target=target, deadline=deadline)
        except _SessionExpired:
            self._forget(session)
        session = self._open_session(deadline)
        try:
            return self._rpc(method, params, session, target=target, deadline=deadline)
        except _SessionExpired:
            self._forget(session)
            # Refused twice with a fresh session: the request never ran. Later, maybe.
            raise RetryableError(
                f"{target.tool or method}: the MCP server refused a fresh session (HTTP 404)",
                tool=target.tool,
                status=404,
            ) from None

    def _open_session(self, deadline: Deadline) -> _Session:
        with self._lock:
            if self._session is None:
                self._session = self._initialize(deadline)
            return self._session

    def _forget(self, session: _Session) -> None:
        with self._lock:
            if self._session is session:
                self._session = None

    def _initialize(self, deadline: Deadline) -> _Session:
        params = {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": CLIENT_INFO,
        }
        message_id = next(self._ids)
        with self._post(
            {"jsonrpc": "2.0", "id": message_id, "method": "initialize", "params": params},
            None,
            target=PROTOCOL,
            deadline=deadline,
        ) as response:
            result = self._result(response, message_id, target=PROTOCOL, deadline=deadline)
            session_id = response.headers.get("mcp-session-id")
        version = result.get("protocolVersion", "")
        if version not in KNOWN_PROTOCOL_VERSIONS:
            raise PermanentError(f"MCP server speaks protocol {version!r}, which we do not")
        session = _Session(session_id, version)
        with self._post(
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            session,
            target=PROTOCOL,
            deadline=deadline,
        ) as response:
            if response.status_code >= 400:
                raise error_for_status(response.status_code, tool="", irreversible=False)
        return session

    def _rpc(
        self,
        method: str,
        params: dict[str, Any],
        session: _Session,
        *,
        target: Target,
        deadline: Deadline,
    ) -> dict[str, Any]:
        message_id = next(self._ids)
        body = {"jsonrpc": "2.0", "id": message_id, "method": method, "params": params}
        with self._post(body, session, target=target, deadline=deadline) as response:
            if response.status_code == 404 and session.session_id:
                raise _SessionExpired
            return self._result(response, message_id, target=target, deadline=deadline)

    def _post(
        self,
        body: dict[str, Any],
        session: _Session | None,
        *,
        target: Target,
        deadline: Deadline,
    ) -> _Response:
        headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if session is not None:
            headers["MCP-Protocol-Version"] = session.protocol_version
            if session.session_id:
                headers["Mcp-Session-Id"] = session.session_id
        request = self._client.build_request(
            "POST",
            self.url,
            json=body,
            headers=headers,
            timeout=deadline.timeout(self._client.timeout),
        )
        return _Response(self._client, request, target=target, deadline=deadline)

    def _result(
        self, response: httpx.Response, message_id: int, *, target: Target, deadline: Deadline
    ) -> dict[str, Any]:
        tool, irreversible = target.tool, target.irreversible
        if response.status_code != 200:
            try:
                detail = deadline.read(response).decode("utf-8", "replace")
            except httpx.HTTPError:
                detail = ""  # the status says enough
            raise error_for_status(
                response.status_code,
                tool=tool,
                irreversible=irreversible,
                detail=detail,
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
            )
        try:
            message = _find_response(response, message_id, deadline)
        except httpx.HTTPError as exc:
            raise error_for_exception(exc, tool=tool, irreversible=irreversible) from exc
        if message is None:
            # A 200 without a readable answer to our request: the call may have run.
            raise error_for_exception(
                httpx.RemoteProtocolError("no JSON-RPC response in the answer"),
                tool=tool,
                irreversible=irreversible,
            )
        if "error" in message:
            raise error_for_rpc(message["error"], tool=tool, irreversible=irreversible)
        result = message.get("result")
        if not isinstance(result, dict):
            raise PermanentError(f"{tool or 'MCP request'}: malformed JSON-RPC result")
        return result

    @staticmethod
    def _tool_result(target: Target, crm_event_id: str, result: dict[str, Any]) -> ToolResult:
        parsed = ToolResult.from_mcp(target.tool, crm_event_id, result)
        if parsed.is_error:
            structured = result.get("structuredContent")
            raise tool_failure(
                target.tool,
                parsed.text,
                irreversible=target.irreversible,
                structured=structured if isinstance(structured, dict) else None,
            )
        return parsed


class _Response:
    """Context manager that sends a request as a stream and maps transport errors."""

    def __init__(
        self, client: httpx.Client, request: httpx.Request, *, target: Target, deadline: Deadline
    ) -> None:
        self._client = client
        self._request = request
        self._target = target
        self._deadline = deadline
        self._response: httpx.Response | None = None

    def __enter__(self) -> httpx.Response:
        try:
            self._deadline.before_request()
            self._response = self._client.send(self._request, stream=True)
        except httpx.HTTPError as exc:
            raise error_for_exception(
                exc, tool=self._target.tool, irreversible=self._target.irreversible
            ) from exc
        return self._response

    def __exit__(self, *exc_info: object) -> None:
        if self._response is not None:
            self._response.close()


def _find_response(
    response: httpx.Response, message_id: int, deadline: Deadline
) -> dict[str, Any] | None:
    """The JSON-RPC response with our id, from a JSON body or an SSE stream, read within
    the call's deadline."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "text/event-stream":
        for data in _sse_data(deadline.lines(response)):
            message = _decode(data)
            if isinstance(message, dict) and message.get("id") == message_id:
                return message
        return None
    body = deadline.read(response)
    message = _decode(body.decode("utf-8", "replace"))
    if isinstance(message, list):  # a batch answer: pick ours
        message = next(
            (m for m in message if isinstance(m, dict) and m.get("id") == message_id), None
        )
    return message if isinstance(message, dict) else None


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The `data` of each server-sent event (multi-line data joined with newlines)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


def _decode(text: str) -> Any:
    """Parsed JSON, or None: an unreadable answer counts as no answer at all."""
    try:
        return json.loads(text)
    except ValueError:
        return None
