"""Outbound Messages as Salesforce sends them, with fresh Event IDs: what the benchmark posts
(and what the test suite builds its messages with)."""

from __future__ import annotations

import random
import string

from worker.domain.salesforce_ids import checksum

ORG_ID = "00D5g000004XyZqEAK"  # the bundled sample message's org


def random_event_id(prefix: str = "00U") -> str:
    """A valid 18-character ID with key prefix `prefix` (00U: an Event)."""
    alphabet = string.ascii_letters + string.digits
    body = prefix + "".join(random.choices(alphabet, k=12))  # noqa: S311 (test data, no secret)
    return body + checksum(body)


def notification_id() -> str:
    return random_event_id("04l")


def outbound_message(
    notifications: list[tuple[str, str | None]],
    *,
    org_id: str = ORG_ID,
    session_id: str | None = None,
    sobject_type: str = "Event",
) -> bytes:
    """A SOAP Outbound Message with (notification Id, sObject Id) pairs; None = deleted."""
    parts = []
    for notification, event_id in notifications:
        sobject = (
            ""
            if event_id is None
            else (
                f'<sObject xsi:type="sf:{sobject_type}" '
                'xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
                f"<sf:Id>{event_id}</sf:Id><sf:Subject>Intro</sf:Subject></sObject>"
            )
        )
        parts.append(f"<Notification><Id>{notification}</Id>{sobject}</Notification>")
    session = (
        f"<SessionId>{session_id}</SessionId>" if session_id else '<SessionId xsi:nil="true"/>'
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{org_id}</OrganizationId><ActionId>04k5g000000AbCdAAK</ActionId>"
        f"{session}<EnterpriseUrl>https://example.my.salesforce.com</EnterpriseUrl>"
        f"{''.join(parts)}</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


def burst(events: list[str]) -> bytes:
    """One message with a notification for each of `events`."""
    return outbound_message([(notification_id(), event) for event in events])
