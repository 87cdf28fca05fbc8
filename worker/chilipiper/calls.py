"""One call to ChiliPiper, whatever the transport: the tool that performs the action, the
shared gate before each try, the in-call retry policy around them, and the gate told how each
try went."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from tenacity import Retrying

from worker import metrics
from worker.chilipiper.gate import DeferredSuccesses
from worker.chilipiper.result import ToolResult
from worker.chilipiper.tools import ToolCatalog, ToolNames
from worker.domain.operations import Action
from worker.errors import (
    InDoubtError,
    PermanentError,
    RetryableError,
    ToolsMissing,
    UnknownTool,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """What a request is for: the tool it runs (for messages; empty for protocol requests
    such as listing tools) and whether repeating it could repeat an effect. Irreversibility
    comes from the `Action`, the one place that knows which actions email customers."""

    tool: str
    irreversible: bool
    action: Action | None = None

    @classmethod
    def of(cls, action: Action, tool: str) -> Target:
        return cls(tool, action.irreversible, action)

    def guarded(self, crm_event_id: str) -> str | None:
        """The operation the safety valves judge a request by: an irreversible action's
        identity (`Operation.identity`), None for any other request."""
        if not self.irreversible or self.action is None:
            return None
        return f"{self.action}:{crm_event_id}"


PROTOCOL = Target("", irreversible=False)


class GateLike(Protocol):
    def enter(self, irreversible: str | None = None) -> None: ...
    def abandon(self) -> None: ...
    def succeeded(self) -> None: ...
    def failed(self, error: RetryableError | InDoubtError) -> None: ...
    def deferring_successes(self) -> AbstractContextManager[DeferredSuccesses]: ...


# Runs right before a request leaves, and raises to stop it (a claim that ran out).
BeforeSend = Callable[[], None]


def call_through(
    gate: GateLike,
    retrying: Retrying,
    send: Callable[[], T],
    *,
    before_send: BeforeSend | None = None,
    target: Target | None = None,
    crm_event_id: str = "",
) -> T:
    """`send()` under the shared limits, retried by `retrying` (transient failures only);
    a request for a tool's `target` is timed in that tool's latency histogram, and one that
    could email a customer is judged by the safety valves too (`Target.guarded`).

    `before_send` runs after the gate lets a request through, right before it leaves: an
    irreversible call checks there that its claim is still live by the worker's own clock
    (the gate may have held it for a moment, an earlier try may have waited).

    A permanent error (the tool said no, no meeting, a missing permission) is ChiliPiper
    answering as it should: for the limits it counts as an answer like any success.
    """
    tool = target.tool if target is not None and target.tool else None
    irreversible = target.guarded(crm_event_id) if target is not None else None
    for attempt in retrying:
        with attempt:
            gate.enter(irreversible)
            if before_send is not None:
                try:
                    before_send()
                except BaseException:
                    gate.abandon()
                    raise
            started = time.monotonic()
            try:
                result = send()
            except (RetryableError, InDoubtError) as error:
                _observe(tool, started, error)
                gate.failed(error)
                raise
            except PermanentError as error:
                _observe(tool, started, error)
                gate.succeeded()
                raise
            _observe(tool, started)
            gate.succeeded()
            return result
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


def _observe(tool: str | None, started: float, error: BaseException | None = None) -> None:
    if tool is not None:
        metrics.observe_call(tool, started, error)


def call_tool(
    catalog: ToolCatalog, action: Action, send: Callable[[Target], ToolResult]
) -> ToolResult:
    """`send` to the tool that performs `action` now. A tool ChiliPiper no longer knows ran
    nothing, so after listing the tools again the call goes once more, to the new name."""
    tools = _known(catalog.names)
    try:
        return send(Target.of(action, tools[action]))
    except UnknownTool:
        fresh = _known(lambda: catalog.refresh(tools))
        if fresh[action] == tools[action]:
            raise
        log.warning("ChiliPiper renamed its tools: %s replaces %s", fresh[action], tools[action])
        return send(Target.of(action, fresh[action]))


def _known(names: Callable[[], ToolNames]) -> ToolNames:
    """The tools, or a RetryableError when ChiliPiper lists none for an action now: the
    worker started with them, so they may well come back (a deploy on ChiliPiper's side);
    the task's retries give them time before an operator has to look."""
    try:
        return names()
    except ToolsMissing as missing:
        raise RetryableError(str(missing)) from missing
