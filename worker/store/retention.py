"""How long the store keeps what it writes, per kind of record."""

from __future__ import annotations

from dataclasses import dataclass

from worker.domain.operations import Operation


@dataclass(frozen=True)
class Retention:
    action_seconds: int
    get_seconds: int
    notification_seconds: int
    quarantine_seconds: int

    def for_operation(self, operation: Operation) -> int:
        """One success per irreversible effect, ever (30 days by default); `get` answers
        only as long as Salesforce and operators may ask again."""
        return self.action_seconds if operation.action.irreversible else self.get_seconds

    @property
    def longest_seconds(self) -> int:
        """Indexes over records of every kind live as long as the longest-kept record."""
        return max(self.action_seconds, self.get_seconds)
