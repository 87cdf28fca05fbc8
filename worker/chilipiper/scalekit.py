"""ChiliPiper's tools through Scalekit AgentKit, over its REST API.

OAuth client credentials at `{env}/oauth/token`; the access token is cached until shortly
before it expires and shared by the worker's threads. A 401 refreshes it once; a second 401
is permanent (the client credentials themselves are wrong). Tools run with
`POST {env}/api/v1/execute_tool`, named `<tool prefix>_<tool>` (the connector's prefix,
`chilipipermcp`, which stays even when a team names its connection differently).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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
    error_for_status,
    is_unknown_tool,
    redact,
    retry_after_seconds,
    tool_failure,
)
from worker.chilipiper.gate import OpenGate
from worker.chilipiper.result import ToolResult
from worker.chilipiper.retries import transient_retries
from worker.chilipiper.tools import ToolCatalog, ToolNames
from worker.domain.operations import Action
from worker.errors import (
    CredentialsRefused,
    GatewayError,
    RetryableError,
    UnknownAccount,
    UnknownTool,
)

TOKEN_PATH = "/oauth/token"  # noqa: S105 (a URL path, not a password)
EXECUTE_PATH = "/api/v1/execute_tool"
SCOPED_TOOLS_PATH = "/api/v1/tools/scoped"
REFRESH_MARGIN_SECONDS = 60.0


class ClientCredentials:
    """An OAuth access token from client credentials, cached and shared between threads."""

    def __init__(
        self, token_url: str, client_id: str, client_secret: str, client: httpx.Client
    ) -> None:
        self._url = token_url
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        }
        self._client = client
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def get(self, deadline: Deadline) -> str:
        """The cached token, or a new one fetched within the call's `deadline`."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._token, lifetime = self._fetch(deadline)
                margin = min(REFRESH_MARGIN_SECONDS, lifetime / 10)
                self._expires_at = time.monotonic() + lifetime - margin
            return self._token

    def invalidate(self, token: str) -> None:
        """Drop `token` (refused by the API) unless another thread already replaced it."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self, deadline: Deadline) -> tuple[str, float]:
        request = self._client.build_request(
            "POST", self._url, data=self._form, timeout=deadline.timeout(self._client.timeout)
        )
        try:
            response = deadline.fetch(self._client, request)
        except httpx.HTTPError as exc:
            raise error_for_exception(exc, tool="Scalekit token", irreversible=False) from exc
        if response.status_code in (400, 401, 403):
            raise CredentialsRefused(
                f"Scalekit refused the client credentials (HTTP {response.status_code}): check "
                "SCALEKIT_CLIENT_ID and SCALEKIT_CLIENT_SECRET",
                status=response.status_code,
            )
        if response.status_code != 200:
            raise error_for_status(
                response.status_code,
                tool="Scalekit token",
                irreversible=False,
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
            )
        body = _json(response) or {}
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise RetryableError("Scalekit token answer has no access_token")
        return token, float(body.get("expires_in") or 300)


class ScalekitGateway:
    """`call(action, crm_event_id)` through Scalekit. Safe to share between threads."""

    def __init__(
        self,
        env_url: str,
        *,
        credentials: ClientCredentials,
        connection_name: str,
        tool_prefix: str,
        identifier: str,
        client: httpx.Client,
        retrying: Callable[[], Retrying] = transient_retries,
        gate: GateLike | None = None,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    ) -> None:
        self.env_url = env_url.rstrip("/")
        self._deadline_seconds = deadline_seconds
        self.credentials = credentials
        self.connection_name = connection_name
        self.tool_prefix = tool_prefix
        self.identifier = identifier
        self._client = client
        self._retrying = retrying
        self._gate = gate or OpenGate()
        self.catalog = ToolCatalog(
            lambda: call_through(self._gate, self._retrying(), self.list_tools), tool_prefix
        )

    def call(
        self,
        action: Action,
        crm_event_id: str,
        *,
        before_send: BeforeSend | None = None,
        deadline: Deadline | None = None,
    ) -> ToolResult:
        """Run `action`'s tool, under the name Scalekit lists it by, for one event, within
        the call's deadline (`deadline`, or one starting now). `before_send` runs right
        before each request leaves."""
        deadline = deadline or Deadline(self._deadline_seconds)

        def send(target: Target) -> ToolResult:
            body = {
                "tool_name": target.tool,
                "connector": self.connection_name,
                "identifier": self.identifier,
                "params": {"crmEventId": crm_event_id},
            }

            def once() -> ToolResult:
                response = self._send(
                    "POST", EXECUTE_PATH, target=target, deadline=deadline, json=body
                )
                payload = _json(response)
                if payload is None:  # a 200 we cannot read: the tool may have run
                    raise error_for_exception(
                        httpx.RemoteProtocolError("unreadable execute_tool answer"),
                        tool=target.tool,
                        irreversible=target.irreversible,
                    )
                result = ToolResult.from_scalekit(target.tool, crm_event_id, payload)
                if result.is_error:  # inside the gate: a tool's 429 teaches the limiter too
                    raise tool_failure(
                        target.tool,
                        result.text,
                        irreversible=target.irreversible,
                        structured=result.data,
                    )
                return result

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
        """Names of the tools this connection and identifier may call (every page)."""
        names: list[str] = []
        page = ""
        deadline = Deadline(self._deadline_seconds)
        for _ in range(100):
            params = {
                "identifier": self.identifier,
                "filter.connection_names": self.connection_name,
                "page_size": "100",
            }
            if page:
                params["page_token"] = page
            payload = _json(
                self._send(
                    "GET", SCOPED_TOOLS_PATH, target=PROTOCOL, deadline=deadline, params=params
                )
            )
            if payload is None:
                raise RetryableError("Scalekit answered the tool listing without JSON")
            for item in payload.get("tools") or []:
                definition = (item.get("tool") or item).get("definition") or {}
                if isinstance(definition.get("name"), str):
                    names.append(definition["name"])
            page = payload.get("next_page_token") or ""
            if not page:
                break
        return names

    def _send(
        self, method: str, path: str, *, target: Target, deadline: Deadline, **kwargs: Any
    ) -> httpx.Response:
        tool, irreversible = target.tool, target.irreversible
        for refreshed in (False, True):
            token = self.credentials.get(deadline)
            request = self._client.build_request(
                method,
                self.env_url + path,
                headers={"Authorization": f"Bearer {token}"},
                timeout=deadline.timeout(self._client.timeout),
                **kwargs,
            )
            try:
                response = deadline.fetch(self._client, request)
            except httpx.HTTPError as exc:
                raise error_for_exception(exc, tool=tool, irreversible=irreversible) from exc
            if response.status_code != 401:
                break
            self.credentials.invalidate(token)  # expired or revoked: fetch a new one, once
            if refreshed:
                raise CredentialsRefused(
                    "Scalekit refused a freshly issued token (HTTP 401 twice): check the "
                    "environment URL and that the client may use AgentKit",
                    tool=tool,
                    status=401,
                )
        if response.status_code != 200:
            raise _error(response, tool=tool, irreversible=irreversible)
        return response


def _error(response: httpx.Response, *, tool: str, irreversible: bool) -> GatewayError:
    """A non-200 from Scalekit. Its error body is `{"code", "message", "details": [{"error_code",
    "tool_error_info": {"tool_error_code", "tool_error_message"}}]}`. A tool that ran and
    failed upstream (`TOOL_ERROR`, or a 404 saying no meeting is linked) is ChiliPiper's
    answer, read as such; a 404 for the tool or the connected account is ours to fix; the
    rest by status. Scalekit's words are read here, once."""
    body = _json(response) or {}
    said = str(body.get("message") or body.get("error") or response.text).strip()
    message = redact(said)
    info = _error_info(body)
    code = str(info.get("error_code") or body.get("error_code") or body.get("code") or "")
    tool_info = info.get("tool_error_info")
    if not isinstance(tool_info, dict):
        tool_info = {}
    lowered = message.lower()
    if code.upper() == "TOOL_ERROR" or (response.status_code == 404 and "meeting" in lowered):
        said = str(tool_info.get("tool_error_message") or said)
        status = str(tool_info.get("tool_error_code") or "")
        return tool_failure(
            tool,
            f"{status} {said}" if status.isascii() and status.isdigit() else said,
            irreversible=irreversible,
        )
    if response.status_code == 404 and "connected account" in lowered:
        return UnknownAccount(f"{tool or 'Scalekit'}: {message}", tool=tool, status=404)
    if response.status_code == 404 and is_unknown_tool(tool, said):
        return UnknownTool(f"{tool or 'Scalekit'}: {message}", tool=tool, status=404)
    if response.status_code == 403:
        return CredentialsRefused(
            f"{tool or 'Scalekit'}: Scalekit refused (HTTP 403): {message}: check that the "
            "API client may use AgentKit and this connection",
            tool=tool,
            status=403,
        )
    return error_for_status(
        response.status_code,
        tool=tool or "Scalekit",
        irreversible=irreversible,
        detail=message,
        retry_after=retry_after_seconds(response.headers.get("retry-after")),
    )


def _error_info(body: dict[str, Any]) -> dict[str, Any]:
    """The first ErrorInfo in Scalekit's `details`, or an empty one."""
    for detail in body.get("details") or []:
        if isinstance(detail, dict) and ("error_code" in detail or "tool_error_info" in detail):
            return detail
    return {}


def _json(response: httpx.Response) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one."""
    try:
        value = response.json()
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
