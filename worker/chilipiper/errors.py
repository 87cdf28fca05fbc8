"""Translation of what ChiliPiper's side can do wrong into the service's error tree.

Pure functions, table-tested: an HTTP status, an httpx exception, a JSON-RPC error or a tool
result with `isError` becomes a Retryable, Permanent or InDoubt error, decided here once.

The line between retryable and in-doubt is whether the request may have reached ChiliPiper:
a connect failure never did; a read timeout or a dropped connection after sending may have,
which matters only for the irreversible tools.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from worker import redaction
from worker.chilipiper.tools import same_tool
from worker.errors import (
    CredentialsRefused,
    GatewayError,
    InDoubtError,
    MissingPermission,
    NoMeetingError,
    PermanentError,
    RequestRefused,
    RetryableError,
    ToolError,
    UnknownTool,
)

# The request was refused before anything happened: retrying is safe for every tool.
# (423: ChiliPiper's "locked while someone edits it".)
NOT_PROCESSED = frozenset({408, 423, 425, 429, 503})
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
    detail = redact(detail)
    message = f"{tool or 'MCP request'}: HTTP {status}" + (f": {detail}" if detail else "")
    if status in NOT_PROCESSED:
        return RetryableError(message, tool=tool, status=status, retry_after=retry_after)
    if status in MAYBE_PROCESSED or (status >= 500 and status != 501):
        if irreversible:
            return InDoubtError(message, tool=tool, status=status)
        return RetryableError(message, tool=tool, status=status, retry_after=retry_after)
    if status == 403:
        return missing_permission(tool, detail, irreversible=irreversible)
    if status == 401:
        return CredentialsRefused(message, tool=tool, status=status)
    return PermanentError(message, tool=tool, status=status)


# The permission ChiliPiper's irreversible CRM tools need (its Edge API: `meeting.modify`).
MODIFY_PERMISSION = "meeting.modify"
# "Missing permission: meeting.modify", "required permissions [meeting.modify]"...
_PERMISSION = re.compile(r"permissions?\W{1,20}?([a-z]+\.[a-z]+)\b", re.IGNORECASE)


def missing_permission(
    tool: str, detail: str, *, irreversible: bool, permission: str = ""
) -> MissingPermission:
    """A 403: the token is valid but may not do this. ChiliPiper names the missing
    permission; the dead letter repeats it, so the fix is one click in Command Center."""
    found = _PERMISSION.search(detail)
    named = permission or (found.group(1) if found else "")
    if not named and irreversible:
        named = MODIFY_PERMISSION
    needs = f"the token lacks the permission {named}" if named else "the token may not do this"
    return MissingPermission(
        f"{tool or 'MCP request'}: HTTP 403: {needs}"
        + (f" ({redact(detail)})" if detail else "")
        + ": grant it to the API token in ChiliPiper's Command Center (Credentials)",
        tool=tool,
        permission=named,
    )


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
    text = str(error.get("message", "") if isinstance(error, dict) else error)
    message = f"{tool or 'MCP request'}: JSON-RPC error {code}: {redact(text)}"
    if code == -32602 and is_unknown_tool(tool, text):
        return UnknownTool(message, tool=tool)
    if code in PERMANENT_RPC_CODES:
        return RequestRefused(message, tool=tool)
    if not isinstance(code, int):
        return PermanentError(message, tool=tool)
    if irreversible:
        return InDoubtError(message, tool=tool)
    return RetryableError(message, tool=tool)


NO_MEETING = re.compile(r"no (?:\w+ )?meeting|meeting not found|not linked", re.IGNORECASE)


@dataclass(frozen=True)
class EdgeAnswer:
    """ChiliPiper's error answer as far as it can be read from a failed tool's text.

    The Edge API answers errors as `{"errorCode", "errorMessage", "arguments"}` (a request it
    cannot decode, as plain text such as `Invalid value for: path parameter …`); the MCP
    server and Scalekit pass them on as the tool's text, often behind the HTTP status
    (`404 Not Found: {...}`, `HTTP 403: ...`, `Request failed with status code 503`), and an
    MCP server built with the official SDK prefixes `Error executing tool <name>:`. What
    cannot be read stays empty; a JSON body is read for its code and message only, never
    kept whole (it may carry a meeting's attendees)."""

    status: int | None = None
    code: str = ""
    message: str = ""
    arguments: dict[str, str] | None = None

    @classmethod
    def read(cls, text: str, structured: dict[str, Any] | None = None) -> EdgeAnswer:
        text = _SDK_PREFIX.sub("", text.strip())
        body = structured if isinstance(structured, dict) else {}
        if not body.get("errorCode"):
            body = _json_in(text) or body
        status = _status_in(body) or _status_in_text(text)
        if body:
            message = str(body.get("errorMessage") or body.get("message") or "")
        else:
            message = _STATUS_PREFIX.sub("", text).strip()
        arguments = body.get("arguments")
        return cls(
            status=status,
            code=str(body.get("errorCode") or ""),
            message=message,
            arguments={str(k): str(v) for k, v in arguments.items()}
            if isinstance(arguments, dict)
            else None,
        )

    def describe(self) -> str:
        said = redact(": ".join(part for part in (self.code, self.message) if part))
        return f"HTTP {self.status}: {said}" if self.status else said


_SDK_PREFIX = re.compile(r"^Error executing tool [^:\s]+:\s*", re.IGNORECASE)
_STATUS_PREFIX = re.compile(r"^\s*(?:HTTP\s*)?([1-5]\d\d)\b[^:{]*:?", re.IGNORECASE)
# The whole text of a JavaScript HTTP client's failure (axios), nothing more: a status named
# anywhere else in a tool's words may describe a later step of a call that ran.
_STATUS_SENTENCE = re.compile(r"Request failed with status code ([1-5]\d\d)\.?", re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
MAX_DETAIL = 300


def redact(text: str) -> str:
    """ChiliPiper's words as fit for a dead letter or a log line: e-mail addresses (an
    attendee's) and anything shaped like a secret (a token echoed back) masked, and no longer
    than MAX_DETAIL characters. Stored values are not log records: the log redaction does
    not reach them, so it is applied here too."""
    text = redaction.redact(_EMAIL.sub("<email>", " ".join(text.split())))
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "…"


def _status_in(body: dict[str, Any]) -> int | None:
    for name in ("status", "statusCode", "httpStatus"):
        value = body.get(name)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
        if isinstance(value, str) and _digits(value) and 100 <= int(value) <= 599:
            return int(value)
    return None


def _status_in_text(text: str) -> int | None:
    match = _STATUS_PREFIX.match(text) or _STATUS_SENTENCE.fullmatch(text.strip())
    return int(match.group(1)) if match else None


def _json_in(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text`, whatever follows it."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def is_unknown_tool(tool: str, text: str) -> bool:
    """The answer of an MCP server that has no tool by that name, and nothing else: the
    official Python SDK's `Unknown tool: <name>`, the TypeScript SDK's `Tool <name> not
    found` (maybe behind `MCP error -32602:`), naming the tool we called. The server refused
    before anything ran. Anything looser could take a tool that ran and failed ("CRM event not
    found") for one that does not exist, and send an irreversible call again."""
    said = _UNKNOWN_TOOL.fullmatch(_MCP_ERROR_PREFIX.sub("", text.strip()))
    if said is None:
        return False
    return same_tool(said.group(1) or said.group(2), tool)


_MCP_ERROR_PREFIX = re.compile(r"^MCP error -?\d+:\s*", re.IGNORECASE)
_UNKNOWN_TOOL = re.compile(r"unknown tool:?\s*(\S+?)\.?|tool\s+(\S+)\s+not found\.?", re.IGNORECASE)


def tool_failure(
    tool: str,
    text: str,
    *,
    irreversible: bool = False,
    structured: dict[str, Any] | None = None,
) -> GatewayError:
    """A tool that answered with an error (MCP `isError: true`, Scalekit's TOOL_ERROR), by
    ChiliPiper's status when it can be read:

    - 404, or words saying no meeting is linked: `NoMeetingError` (nothing to do, ever);
    - 409, 422, or no status at all: `ToolError`, the tool said no given the meeting's state
      ("already cancelled"): an irreversible action checks `crm-get` before giving up;
    - 400: ChiliPiper could not read the request: permanent;
    - 403: the missing permission, named; 401: our credentials;
    - 423, 429, 5xx: as the same status on the wire (retry, or in doubt);
    - the exact "Unknown tool: <name>" of a server without that tool: `UnknownTool`, so the
      names are listed again (nothing ran).
    """
    if is_unknown_tool(tool, text):
        return UnknownTool(f"{tool}: {text.strip()}", tool=tool)
    answer = EdgeAnswer.read(text, structured)
    said = answer.describe() or "tool reported an error"
    message = f"{tool}: {said}"
    status = answer.status
    if status == 404 or (status is None and NO_MEETING.search(text)):
        return NoMeetingError(message, tool=tool, status=status)
    if status is None or status in (409, 422):
        return ToolError(message, tool=tool, status=status)
    if status == 400:
        return PermanentError(
            f"{message} (ChiliPiper could not read the request)", tool=tool, status=400
        )
    if status == 403:
        permission = (answer.arguments or {}).get("permission", "")
        return missing_permission(
            tool, answer.message, irreversible=irreversible, permission=permission
        )
    return error_for_status(
        status, tool=tool, irreversible=irreversible, detail=answer.message or answer.code
    )


# A server asking for more than an hour is having an outage: the circuit and the tasks'
# back-off take it from there, rather than every worker pausing for as long as it says.
MAX_RETRY_AFTER_SECONDS = 3600.0


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if _digits(value):
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(
        max(0.0, (when - (now or datetime.now(UTC))).total_seconds()), MAX_RETRY_AFTER_SECONDS
    )


def _digits(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also takes `²`, which `int` refuses."""
    return text.isascii() and text.isdigit()
