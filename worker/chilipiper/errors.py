"""Translation of what ChiliPiper's side can do wrong into the service's error tree.

Pure functions, table-tested: an HTTP status, an httpx exception, a JSON-RPC error or a tool
result with `isError` becomes a Retryable, Permanent or InDoubt error, decided here once.

The line between retryable and in-doubt is whether the request may have reached ChiliPiper:
a connect failure never did; a read timeout or a dropped connection after sending may have,
which matters only for the irreversible tools.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from worker.errors import (
    CredentialsRefused,
    GatewayError,
    InDoubtError,
    NoMeetingError,
    PermanentError,
    RetryableError,
    ToolError,
)

# The request was refused before anything happened: retrying is safe for every tool.
NOT_PROCESSED = frozenset({408, 425, 429, 503})
# A proxy or server failed somewhere between us and the tool: maybe after it acted.
MAYBE_PROCESSED = frozenset({500, 502, 504})

# JSON-RPC codes (https://www.jsonrpc.org/specification#error_object) that no retry can fix.
PERMANENT_RPC_CODES = frozenset({-32700, -32600, -32601, -32602})


def error_for_status(
    status: int,
    *,
    tool: str,
    irreversible: bool,
    detail: str = "",
    retry_after: float | None = None,
) -> GatewayError:
    message = f"{tool or 'MCP request'}: HTTP {status}" + (f": {detail}" if detail else "")
    if status in NOT_PROCESSED:
        return RetryableError(message, tool=tool, status=status, retry_after=retry_after)
    if status in MAYBE_PROCESSED or (status >= 500 and status != 501):
        if irreversible:
            return InDoubtError(message, tool=tool, status=status)
        return RetryableError(message, tool=tool, status=status, retry_after=retry_after)
    if status in (401, 403):
        return CredentialsRefused(message, tool=tool, status=status)
    return PermanentError(message, tool=tool, status=status)


def error_for_exception(exc: httpx.HTTPError, *, tool: str, irreversible: bool) -> GatewayError:
    """An httpx transport failure, by whether the request may have been sent."""
    name = type(exc).__name__
    message = f"{tool or 'MCP request'}: {name}: {exc}".rstrip(": ")
    never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    if never_sent or not irreversible:
        return RetryableError(message, tool=tool)
    if isinstance(exc, httpx.TransportError):
        # ReadTimeout, WriteTimeout, ReadError, RemoteProtocolError...: sent, answer lost.
        return InDoubtError(message, tool=tool)
    return PermanentError(message, tool=tool)


def error_for_rpc(error: object, *, tool: str, irreversible: bool) -> GatewayError:
    """A JSON-RPC `error` member. Internal errors may follow the tool's effect."""
    code = error.get("code") if isinstance(error, dict) else None
    text = error.get("message", "") if isinstance(error, dict) else str(error)
    message = f"{tool or 'MCP request'}: JSON-RPC error {code}: {text}"
    if code in PERMANENT_RPC_CODES or not isinstance(code, int):
        return PermanentError(message, tool=tool)
    if irreversible:
        return InDoubtError(message, tool=tool)
    return RetryableError(message, tool=tool)


NO_MEETING = re.compile(r"no (?:\w+ )?meeting|meeting not found|not linked", re.IGNORECASE)


def tool_failure(tool: str, text: str) -> ToolError:
    """A tool result with `isError: true`: the tool ran and said no. "No meeting linked" is
    told apart, since it needs no further check (there is nothing to cancel)."""
    message = f"{tool}: {text or 'tool reported an error'}"
    if NO_MEETING.search(text):
        return NoMeetingError(message, tool=tool)
    return ToolError(message, tool=tool)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
