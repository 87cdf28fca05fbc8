"""What the service does to a meeting, and the idempotency key that makes it happen once.

An `Operation` is one requested effect: an action on one canonical CRM event ID, with the
notification (or API request) that asked for it. Its `key` is the unit of exactly-once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from worker.domain.bounded import bounded
from worker.domain.meetings import MeetingStatus


class Action(StrEnum):
    GET = "get"
    NOSHOW = "noshow"
    CANCEL = "cancel"

    @property
    def tool(self) -> str:
        """The action in ChiliPiper's words (`crm-get`, `crm-cancel`, `crm-noshow`), for
        messages. The tool actually called is the one ChiliPiper lists for it, such as
        `crm-cancel-post` (`chilipiper.tools`)."""
        return f"crm-{self.value}"

    @property
    def irreversible(self) -> bool:
        """Cancel and no-show email real customers: they must never happen twice."""
        return self is not Action.GET

    @property
    def final_status(self) -> MeetingStatus | None:
        """The meeting status `crm-get` reports once this action has taken effect."""
        return {Action.CANCEL: MeetingStatus.CANCELLED, Action.NOSHOW: MeetingStatus.NO_SHOW}.get(
            self
        )


class State(StrEnum):
    """Where an operation stands (CLAIMS.md draws the machine): queued → running →
    succeeded | retrying | in_doubt | failed (a dead letter)."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    IN_DOUBT = "in_doubt"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# The layout of task messages. Version 1 (the first release) wrote no `v`; version 2 adds
# it. Readers accept both and ignore fields they do not know, so that a rolling deploy, with
# old and new workers on one broker, loses no message either way.
MESSAGE_VERSION = 2

# Still to be done: somewhere a message, a scheduled retry or the pending index holds it.
UNSETTLED = frozenset({State.QUEUED, State.RUNNING, State.RETRYING, State.IN_DOUBT})


def parse_action(raw: str) -> Action:
    """`raw` as an Action, or ValueError listing the valid ones."""
    try:
        return Action(raw.strip().lower())
    except ValueError:
        valid = ", ".join(action.value for action in Action)
        shown = bounded(raw, 40)  # the sender's text, kept in answers and records
        raise ValueError(f"unknown action {shown!r}; expected one of: {valid}") from None


@dataclass(frozen=True)
class Operation:
    """One requested effect. `source_id` is the notification ID or API idempotency key."""

    action: Action
    crm_event_id: str
    source_id: str

    @property
    def identity(self) -> str:
        """What makes two operations the same effect.

        Irreversible actions: one success per event, ever, whoever asked. `get` has no effect
        to protect, so each notification (or API request) gets its own answer.
        """
        if self.action.irreversible:
            return f"{self.action}:{self.crm_event_id}"
        return f"{self.action}:{self.crm_event_id}:{self.source_id}"

    @property
    def notification_id(self) -> str | None:
        """The Salesforce notification that asked for it (its canonical ID), or None when
        the source is an API request, a manual task or a replay of one: those sources are
        `kind:…`, never a bare Salesforce ID."""
        return None if ":" in self.source_id else self.source_id

    def to_message(self) -> dict[str, Any]:
        """Task arguments: IDs only, never payloads (broker messages are stored in Redis),
        and the message layout's version."""
        return {
            "v": MESSAGE_VERSION,
            "action": self.action.value,
            "crm_event_id": self.crm_event_id,
            "source_id": self.source_id,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Operation:
        """Read a task's arguments, as this release or the previous one (no `v`, the same
        three fields) wrote them: during a rolling deploy both run against one broker."""
        return cls(Action(message["action"]), message["crm_event_id"], message["source_id"])
