"""The ChiliPiper gateway: one interface, `call(action, crm_event_id) -> ToolResult`.

Every call has a total deadline (`CHILIPIPER_CALL_DEADLINE_SECONDS`), its in-call retries
included: one starting with the call, or the caller's (an irreversible call's starts before
its send marker is written, so nothing of it is on the wire past the settle time). A
`before_send` hook runs right before each request leaves.

Transports: `mcp` (ChiliPiper's MCP server), `scalekit` (Scalekit AgentKit's REST API) and
`sandbox` (the local stand-in, spoken to over the MCP client, so development exercises the
production code path).
"""

from __future__ import annotations

from typing import Protocol

import httpx
from tenacity import Retrying

from worker.chilipiper.calls import BeforeSend, GateLike
from worker.chilipiper.deadline import Deadline
from worker.chilipiper.mcp import McpGateway
from worker.chilipiper.result import ToolResult
from worker.chilipiper.retries import transient_retries
from worker.chilipiper.scalekit import TOKEN_PATH, ClientCredentials, ScalekitGateway
from worker.chilipiper.tools import ToolNames
from worker.domain.operations import Action
from worker.settings import Settings, connect_timeout

__all__ = ["Gateway", "ToolNames", "ToolResult", "build_gateway", "http_client"]

MAX_CONNECTIONS = 64


class Gateway(Protocol):
    def call(
        self,
        action: Action,
        crm_event_id: str,
        *,
        before_send: BeforeSend | None = None,
        deadline: Deadline | None = None,
    ) -> ToolResult: ...
    def list_tools(self) -> list[str]: ...
    def discover(self) -> ToolNames: ...


def http_client(settings: Settings) -> httpx.Client:
    """The worker process's pooled client: explicit timeouts, enough connections for every
    thread, shared safely between threads (httpx.Client is thread-safe)."""
    connect = connect_timeout(settings.chilipiper_timeout_seconds)
    timeout = httpx.Timeout(settings.chilipiper_timeout_seconds, connect=connect, pool=connect)
    return httpx.Client(
        timeout=timeout,
        limits=httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
        ),
        headers={"User-Agent": "crmhook/0.1"},
    )


def build_gateway(
    settings: Settings, client: httpx.Client | None = None, gate: GateLike | None = None
) -> Gateway:
    """The configured transport, sharing one pooled client, behind `gate` (the shared rate
    limit, pause and circuit; none for `crmhook check`)."""
    client = client or http_client(settings)

    def retrying() -> Retrying:
        return transient_retries(
            settings.chilipiper_attempts,
            settings.chilipiper_max_wait_seconds,
            max_seconds=settings.chilipiper_call_deadline_seconds,
        )

    if settings.chilipiper_transport == "scalekit":
        env_url = settings.scalekit_env_url or ""
        secret = settings.scalekit_client_secret
        return ScalekitGateway(
            env_url,
            credentials=ClientCredentials(
                env_url + TOKEN_PATH,
                settings.scalekit_client_id or "",
                secret.get_secret_value() if secret else "",
                client,
            ),
            connection_name=settings.scalekit_connection_name,
            tool_prefix=settings.scalekit_tool_prefix,
            identifier=settings.scalekit_identifier or "",
            client=client,
            retrying=retrying,
            gate=gate,
            deadline_seconds=settings.chilipiper_call_deadline_seconds,
        )
    token = settings.chilipiper_api_token
    return McpGateway(
        settings.chilipiper_url,
        client=client,
        token=token.get_secret_value() if token is not None else None,
        retrying=retrying,
        gate=gate,
        deadline_seconds=settings.chilipiper_call_deadline_seconds,
    )
