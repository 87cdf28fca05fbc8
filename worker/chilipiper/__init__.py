"""The ChiliPiper gateway: one interface, `call(tool, crm_event_id) -> ToolResult`.

Transports: `mcp` (ChiliPiper's MCP server) and `sandbox` (the local stand-in, spoken to over
the same MCP client, so development exercises the production code path).
"""

from __future__ import annotations

from typing import Protocol

import httpx

from worker.chilipiper.mcp import McpGateway
from worker.chilipiper.result import ToolResult
from worker.chilipiper.retries import transient_retries
from worker.settings import Settings

__all__ = ["Gateway", "ToolResult", "build_gateway", "http_client"]

MAX_CONNECTIONS = 64


class Gateway(Protocol):
    def call(self, tool: str, crm_event_id: str) -> ToolResult: ...


def http_client(settings: Settings) -> httpx.Client:
    """The worker process's pooled client: explicit timeouts, enough connections for every
    thread, shared safely between threads (httpx.Client is thread-safe)."""
    timeout = httpx.Timeout(
        settings.chilipiper_timeout_seconds,
        connect=min(5.0, settings.chilipiper_timeout_seconds),
    )
    return httpx.Client(
        timeout=timeout,
        limits=httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
        ),
        headers={"User-Agent": "crmhook/0.1"},
    )


def build_gateway(settings: Settings, client: httpx.Client | None = None) -> McpGateway:
    token = settings.chilipiper_api_token
    return McpGateway(
        settings.chilipiper_url,
        client=client or http_client(settings),
        token=token.get_secret_value() if token is not None else None,
        retrying=lambda: transient_retries(
            settings.chilipiper_attempts,
            settings.chilipiper_max_wait_seconds,
            max_seconds=settings.call_budget_seconds,
        ),
    )
