"""One call to ChiliPiper, whatever the transport: the shared gate before each try, the
in-call retry policy around them, and the gate told how each try went."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tenacity import Retrying

from worker.chilipiper.result import ToolResult
from worker.domain.operations import Action
from worker.errors import InDoubtError, RetryableError


@dataclass(frozen=True)
class Target:
    """What a request is for: the tool it runs (for messages; empty for protocol requests
    such as listing tools) and whether repeating it could repeat an effect. Irreversibility
    comes from the `Action`, the one place that knows which actions email customers."""

    tool: str
    irreversible: bool

    @classmethod
    def of(cls, action: Action) -> Target:
        return cls(action.tool, action.irreversible)


PROTOCOL = Target("", irreversible=False)


class GateLike(Protocol):
    def enter(self) -> None: ...
    def succeeded(self) -> None: ...
    def failed(self, error: RetryableError | InDoubtError) -> None: ...


def call_through(gate: GateLike, retrying: Retrying, send: Callable[[], ToolResult]) -> ToolResult:
    """`send()` under the shared limits, retried by `retrying` (transient failures only).

    A permanent error (the tool said no) is ChiliPiper working as it should: it neither
    trips nor resets the circuit.
    """
    for attempt in retrying:
        with attempt:
            gate.enter()
            try:
                result = send()
            except (RetryableError, InDoubtError) as error:
                gate.failed(error)
                raise
            gate.succeeded()
            return result
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
