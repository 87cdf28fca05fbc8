"""Triage of incoming notifications: the valid become Operations, the rest are quarantined.

A notification with a bad ID must not block its 99 neighbours, and must never make Salesforce
retry a message that can never succeed; so nothing here raises for one bad notification.
Salesforce Outbound Messages and the JSON API's events go through the same triage, so both
validate IDs and fold duplicates by the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from worker.domain.bounded import bounded, escaped_length
from worker.domain.operations import Action, Operation
from worker.domain.salesforce_ids import canonical_id, require_prefix
from worker.errors import InvalidSalesforceId

# What a rejection may keep of a sender's text: enough to recognise it, never enough to fill
# Redis (a message's rejections are copied to the broker, the ingest record and the
# quarantine). Text is measured as stored, JSON-escaped (`domain.bounded`). Salesforce IDs are
# 18 characters; API names letters, digits and underscores, at most 40 plus a namespace.
MAX_SHOWN_VALUE = 80
MAX_REASON = 160
MAX_FIELD_NAME = 64
MAX_ID_FIELDS = 5
_API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Notification:
    """One notification as received, redacted: IDs and the sObject type, nothing else.

    `event_id` is the raw value of the configured event ID field (None when absent);
    `id_fields` keeps the sObject's other ID-shaped fields so that a notification quarantined
    under one `SALESFORCE_EVENT_ID_FIELD` can be replayed after the setting is fixed.
    `action` is the notification's own (each JSON event names one); None takes the route's.
    """

    notification_id: str
    event_id: str | None
    sobject_type: str | None = None
    deleted: bool = False
    id_fields: dict[str, str] = field(default_factory=dict)
    action: Action | None = None


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


class Disposition(StrEnum):
    """What became of one notification."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"  # the same operation as an earlier notification of the message
    REJECTED = "rejected"


@dataclass(frozen=True)
class Verdict:
    """What became of one notification: its operation (queued, or a duplicate of one queued
    earlier in the same message), or the reason it was rejected."""

    disposition: Disposition
    operation: Operation | None = None
    reason: str = ""


@dataclass
class Triage:
    """`verdicts` has one entry per notification, in their order, for callers that answer
    per notification (the JSON API); `rejections` are what to quarantine."""

    rejections: list[Rejection] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def operations(self) -> list[Operation]:
        """The operations to queue, in order: one per distinct effect."""
        return [
            verdict.operation
            for verdict in self.verdicts
            if verdict.disposition is Disposition.QUEUED and verdict.operation is not None
        ]


def triage(
    notifications: Iterable[Notification],
    action: Action | None,
    prefixes: Sequence[str],
    event_id_field: str = "Id",
    *,
    source_id: str | None = None,
) -> Triage:
    """Split `notifications` into operations to queue and rejections to quarantine.

    `action` is the route's, for notifications that name none. `source_id` is for callers
    whose notifications carry no Salesforce notification ID (the JSON API's
    `api:<Idempotency-Key>`): every operation gets it as its source, and notification IDs
    are not checked.

    The same notification twice in one message is one operation; so are two notifications
    that ask for the same irreversible effect on the same event.
    """
    result = Triage()
    seen: set[str] = set()
    for notification in notifications:
        try:
            operation = _operation(notification, action, prefixes, event_id_field, source_id)
        except InvalidSalesforceId as exc:
            rejection = Rejection(
                notification_id=_shown(notification.notification_id) or "",
                value=_shown(notification.event_id),
                reason=_shown(str(exc), MAX_REASON) or "",
                sobject_type=_shown(notification.sobject_type),
                id_fields=_kept_id_fields(notification.id_fields),
                event_id_field=event_id_field,
                deleted=notification.deleted,
            )
            result.rejections.append(rejection)
            result.verdicts.append(Verdict(Disposition.REJECTED, reason=rejection.reason))
            continue
        # What makes a later notification the same: its effect, or (when each notification
        # has its own ID) its notification ID. A source shared by all says nothing.
        identity = operation.identity
        own_source = operation.source_id if source_id is None else None
        if identity in seen or own_source in seen:
            result.verdicts.append(Verdict(Disposition.DUPLICATE, operation))
            continue
        seen.add(identity)
        if own_source is not None:
            seen.add(own_source)
        result.verdicts.append(Verdict(Disposition.QUEUED, operation))
    return result


def _operation(
    notification: Notification,
    route_action: Action | None,
    prefixes: Sequence[str],
    event_id_field: str,
    source_id: str | None,
) -> Operation:
    action = notification.action or route_action
    if action is None:  # the caller's mistake, not the sender's: no rejection can fix it
        raise ValueError("a notification without an action needs the route's action")
    if source_id is None:
        source_id = _notification_source(notification.notification_id)
    if notification.deleted:
        raise InvalidSalesforceId("no sObject: the record was deleted before delivery", value="")
    if notification.event_id is None:
        raise InvalidSalesforceId(
            f"the sObject has no {event_id_field!r} field (SALESFORCE_EVENT_ID_FIELD)", value=""
        )
    event_id = require_prefix(canonical_id(notification.event_id), prefixes)
    return Operation(action, event_id, source_id)


def _notification_source(notification_id: str) -> str:
    try:
        return canonical_id(notification_id)
    except InvalidSalesforceId as exc:
        raise InvalidSalesforceId(f"notification Id: {exc}", value=exc.value) from None


def _shown(value: str | None, limit: int = MAX_SHOWN_VALUE) -> str | None:
    """The value as sent, bounded as stored, for operators to read."""
    return None if value is None else bounded(value, limit)


def _kept_id_fields(id_fields: dict[str, str]) -> dict[str, str]:
    """The ID-shaped fields a replay may need, bounded in number; only names that are
    Salesforce API names (anything else is not a field Salesforce sent)."""
    kept = [
        (name, value)
        for name, value in id_fields.items()
        if len(name) <= MAX_FIELD_NAME
        and _API_NAME.fullmatch(name)
        and escaped_length(value) <= MAX_SHOWN_VALUE
    ]
    return dict(kept[:MAX_ID_FIELDS])
