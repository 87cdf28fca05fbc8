"""`crmhook check`: can this configuration reach ChiliPiper and call the tools it needs?

Authenticates with the configured transport, lists the tools the account may call, names the
ones the worker will use (`crm-get`, and `crm-cancel-post` / `crm-noshow-post` when offered,
else `crm-cancel` / `crm-noshow`), and optionally reads one event. Each
failure is said in the words of the setting to fix, not as a stack trace.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import redis

from worker import redaction
from worker.chilipiper import ToolNames, build_gateway
from worker.domain.operations import Action
from worker.errors import (
    CredentialsRefused,
    GatewayError,
    MissingPermission,
    NoMeetingError,
    PermanentError,
    ToolsMissing,
    UnknownAccount,
)
from worker.settings import Settings
from worker.store.connection import sentinel_warnings, store_client, where
from worker.tasks.runtime import build_gate


@dataclass
class Report:
    """The lines to print. Each is redacted as it is added: they quote URLs from the
    settings and the words of ChiliPiper's and Redis's errors, which may carry a secret."""

    lines: list[tuple[bool, str]] = field(default_factory=list)
    redact: Callable[[str], str] = redaction.redact

    @property
    def ok(self) -> bool:
        return all(good for good, _ in self.lines)

    def add(self, good: bool, text: str) -> bool:
        self.lines.append((good, self.redact(text)))
        return good


def check(
    settings: Settings, event_id: str | None = None, client: httpx.Client | None = None
) -> Report:
    report = Report(redact=redaction.Redactor(redaction.secret_values(settings)))
    reach_chilipiper(settings, report, event_id, client)
    shared_limits(settings, report)
    return report


def reach_chilipiper(
    settings: Settings, report: Report, event_id: str | None, client: httpx.Client | None
) -> None:
    """Authenticate, list the tools, name the ones in use, and read `event_id` if given."""
    quick = settings.model_copy(update={"chilipiper_attempts": 1})  # answer fast, no retries
    gateway = build_gateway(quick, client=client)
    where = _where(settings)
    try:
        names = gateway.list_tools()
    except GatewayError as error:
        report.add(False, explain(error, settings))
        return
    report.add(True, f"authenticated with {where}; {len(names)} tool(s) available")
    if not names and settings.chilipiper_transport == "scalekit":
        report.add(
            False,
            f"no tools for connection {settings.scalekit_connection_name!r} and "
            f"identifier {settings.scalekit_identifier!r}: check SCALEKIT_CONNECTION_NAME "
            "(the Connection Name on the Scalekit dashboard)",
        )
        return
    prefix = settings.scalekit_tool_prefix if settings.chilipiper_transport == "scalekit" else ""
    try:
        tools = ToolNames.choose(names, prefix)
    except ToolsMissing as missing:
        report.add(False, f"{missing}; the worker will not start" + _prefix_hint(settings, names))
        return
    report.add(True, f"tools in use: {tools}")
    if event_id:
        try:
            result = gateway.call(Action.GET, event_id)
        except NoMeetingError:
            report.add(False, f"crm-get {event_id}: no ChiliPiper meeting is linked to it")
        except GatewayError as error:
            report.add(False, f"crm-get {event_id}: {explain(error, settings)}")
        else:
            report.add(
                True, f"crm-get {event_id}: meeting status {result.meeting.status_as_sent or '?'}"
            )


def shared_limits(settings: Settings, report: Report) -> None:
    """Where the limits every worker shares stand (read from Redis, which workers need)."""
    client = store_client(settings)
    try:
        report.add(True, f"shared limits: {build_gate(settings, client).limits()}")
        for warning in sentinel_warnings(settings):
            report.add(False, f"Redis at {where(settings)}: {warning}")
    except redis.RedisError as error:
        report.add(False, f"cannot read the shared limits: Redis at {where(settings)}: {error}")
    finally:
        client.close()


def explain(error: GatewayError, settings: Settings) -> str:
    """What went wrong, in terms of the settings to fix."""
    cause = error.__cause__
    if settings.chilipiper_transport == "scalekit":
        if isinstance(error, CredentialsRefused):
            return str(error)
        if isinstance(error, UnknownAccount):
            return (
                f"Scalekit has no connected account {settings.scalekit_identifier!r} for "
                f"connection {settings.scalekit_connection_name!r}: check "
                "SCALEKIT_IDENTIFIER (and that the account is ACTIVE)"
            )
        url_setting = "SCALEKIT_ENV_URL"
    else:
        url_setting = (
            "CHILIPIPER_MCP_URL"
            if settings.chilipiper_transport == "mcp"
            else ("CHILIPIPER_SANDBOX_URL (is `crmhook sandbox` running?)")
        )
        if isinstance(error, MissingPermission):
            return str(error)  # it names the permission and where to grant it
        if isinstance(error, CredentialsRefused):
            return f"ChiliPiper refused the token (HTTP {error.status}): check CHILIPIPER_API_TOKEN"
    if isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot reach {_where(settings)} ({type(cause).__name__}): check {url_setting}"
    if isinstance(error, PermanentError) and error.status == 404:
        return f"{_where(settings)} answered 404: check {url_setting}"
    return str(error)


def _where(settings: Settings) -> str:
    if settings.chilipiper_transport == "scalekit":
        return f"Scalekit at {settings.scalekit_env_url}"
    return f"ChiliPiper MCP at {settings.chilipiper_url}"


_PREFIXED = re.compile(r"^(.+?)_crm[-_]")


def _prefix_hint(settings: Settings, names: list[str]) -> str:
    if settings.chilipiper_transport != "scalekit":
        return ""
    prefixes = {found.group(1) for name in names if (found := _PREFIXED.match(name))}
    if len(prefixes) == 1:
        return f" (the tools are named {prefixes.pop()}_…: set SCALEKIT_TOOL_PREFIX)"
    return ""
