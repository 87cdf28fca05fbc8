"""Triage of incoming notifications: the valid become Operations, the rest are quarantined.

A notification with a bad ID must not block its 99 neighbours, and must never make Salesforce
retry a message that can never succeed; so nothing here raises for one bad notification.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from worker.domain.operations import Action, Operation
from worker.domain.salesforce_ids import canonical_id, require_prefix
from worker.errors import InvalidSalesforceId

MAX_SHOWN_VALUE = 100


@dataclass(frozen=True)
class Notification:
    """One notification as received, redacted: IDs and the sObject type, nothing else.

    `event_id` is the raw value of the configured event ID field (None when absent);
    `id_fields` keeps the sObject's other ID-shaped fields so that a notification quarantined
    under one `SALESFORCE_EVENT_ID_FIELD` can be replayed after the setting is fixed.
    """

    notification_id: str
    event_id: str | None
    sobject_type: str | None = None
    deleted: bool = False
    id_fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """A quarantined notification: what was sent (redacted) and why it was refused."""

    notification_id: str
    value: str | None
    reason: str
    sobject_type: str | None = None
    id_fields: dict[str, str] = field(default_factory=dict)
    # What a replay needs to judge it again under today's settings: which field `value`
    # came from, and whether the record had been deleted (then there is nothing to replay).
    event_id_field: str = "Id"
    deleted: bool = False

    def to_message(self) -> dict[str, object]:
        return asdict(self)

    def as_notification(self, event_id_field: str) -> Notification:
        """The notification again, as far as it was kept, read with `event_id_field`."""
        if event_id_field == self.event_id_field:
            event_id = self.value
        else:
            event_id = self.id_fields.get(event_id_field)
        return Notification(
            self.notification_id,
            event_id,
            sobject_type=self.sobject_type,
            deleted=self.deleted,
            id_fields=self.id_fields,
        )


@dataclass
class Triage:
    operations: list[Operation] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def triage(
    notifications: Iterable[Notification],
    action: Action,
    prefixes: Sequence[str],
    event_id_field: str = "Id",
) -> Triage:
    """Split `notifications` into operations to queue and rejections to quarantine.

    The same notification twice in one message is one operation; so are two notifications
    that ask for the same irreversible effect on the same event.
    """
    result = Triage()
    seen: set[str] = set()
    for notification in notifications:
        try:
            operation = _operation(notification, action, prefixes, event_id_field)
        except InvalidSalesforceId as exc:
            result.rejections.append(
                Rejection(
                    notification_id=_shown(notification.notification_id) or "",
                    value=_shown(notification.event_id),
                    reason=str(exc),
                    sobject_type=notification.sobject_type,
                    id_fields=notification.id_fields,
                    event_id_field=event_id_field,
                    deleted=notification.deleted,
                )
            )
            continue
        if operation.identity in seen or operation.source_id in seen:
            continue
        seen.update((operation.identity, operation.source_id))
        result.operations.append(operation)
    return result


def _operation(
    notification: Notification, action: Action, prefixes: Sequence[str], event_id_field: str
) -> Operation:
    try:
        source_id = canonical_id(notification.notification_id)
    except InvalidSalesforceId as exc:
        raise InvalidSalesforceId(f"notification Id: {exc}", value=exc.value) from None
    if notification.deleted:
        raise InvalidSalesforceId("no sObject: the record was deleted before delivery", value="")
    if notification.event_id is None:
        raise InvalidSalesforceId(
            f"the sObject has no {event_id_field!r} field (SALESFORCE_EVENT_ID_FIELD)", value=""
        )
    event_id = require_prefix(canonical_id(notification.event_id), prefixes)
    return Operation(action, event_id, source_id)


def _shown(value: str | None) -> str | None:
    """The value as sent, bounded, for operators to read."""
    if value is None or len(value) <= MAX_SHOWN_VALUE:
        return value
    return value[:MAX_SHOWN_VALUE] + "…"
