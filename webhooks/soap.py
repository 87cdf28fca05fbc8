"""Salesforce Outbound Messages in and out: hostile-safe parsing, the Ack, SOAP faults.

Parsing refuses DTDs outright (defusedxml with `forbid_dtd`): an Outbound Message never has
one, and refusing them closes entity expansion and external entities in one rule. Only IDs
and the sObject type are kept; `SessionId` (a live credential) is never even read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

import defusedxml
from defusedxml.ElementTree import fromstring

from worker.domain.notifications import Notification
from worker.errors import MalformedRequest

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND = "http://soap.sforce.com/2005/09/outbound"
SOBJECT = "urn:sobject.enterprise.soap.sforce.com"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
CONTENT_TYPE = "text/xml; charset=utf-8"
_ID_SHAPED = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
# Salesforce's own limit per message. What is kept of each notification is bounded by
# `domain.notifications` (which also serves the JSON route).
MAX_NOTIFICATIONS = 100

ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}">'
    f'<soapenv:Body><notificationsResponse xmlns="{OUTBOUND}">'
    "<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"
)


@dataclass(frozen=True)
class OutboundMessage:
    organization_id: str
    action_id: str
    notifications: list[Notification]


def parse_outbound(body: bytes, event_id_field: str) -> OutboundMessage:
    """The Outbound Message in `body`, or MalformedRequest saying what is wrong with it."""
    if not body.strip():
        raise MalformedRequest("empty body: expected a SOAP Outbound Message")
    try:
        root = fromstring(body, forbid_dtd=True)
    except defusedxml.DefusedXmlException as exc:
        raise MalformedRequest(
            f"XML refused ({type(exc).__name__}): DTDs, entities and external references are "
            "not allowed"
        ) from None
    except ParseError as exc:
        raise MalformedRequest(f"body is not well-formed XML ({exc})") from None
    except (LookupError, ValueError) as exc:  # expat: unknown or undecodable encoding
        raise MalformedRequest(f"body is not readable XML ({exc})") from None
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise MalformedRequest(f"not a SOAP 1.1 envelope (root element {_local(root.tag)!r})")
    soap_body = _only(root, f"{{{SOAP_ENV}}}Body")
    notifications = None if soap_body is None else _only(soap_body, f"{{{OUTBOUND}}}notifications")
    if notifications is None:
        raise MalformedRequest(
            f"the SOAP body holds no Outbound Message (<notifications> in namespace {OUTBOUND})"
        )
    organization_id = _organization_id(notifications)
    elements = _notification_elements(notifications)
    return OutboundMessage(
        organization_id=organization_id,
        action_id=_child_text(notifications, "ActionId") or "",
        notifications=[_notification(element, event_id_field) for element in elements],
    )


def _organization_id(notifications: Element) -> str:
    """The sender's Organization ID: 15 or 18 letters and digits, as Salesforce sends it.
    Anything else is no Outbound Message, and must not be carried any further (it would be
    copied into every quarantine entry)."""
    organization_id = _child_text(notifications, "OrganizationId")
    if not organization_id:
        raise MalformedRequest("the Outbound Message has no OrganizationId")
    if not _ID_SHAPED.fullmatch(organization_id):
        raise MalformedRequest(
            f"OrganizationId {organization_id[:40]!r} is not a Salesforce ID (15 or 18 letters "
            "and digits)"
        )
    return organization_id


def _notification_elements(notifications: Element) -> list[Element]:
    """The `Notification` elements, matched by namespace: one in another namespace means the
    body is something else dressed as an Outbound Message, and none at all means there is
    nothing to acknowledge; both are refused rather than silently acknowledged. At most
    MAX_NOTIFICATIONS, Salesforce's own limit per message."""
    elements = []
    for child in notifications:
        if _local(child.tag) != "Notification":
            continue
        if child.tag != f"{{{OUTBOUND}}}Notification":
            raise MalformedRequest(
                f"a <Notification> outside the Outbound Message namespace {OUTBOUND}"
            )
        elements.append(child)
    if not elements:
        raise MalformedRequest(
            f"the Outbound Message holds no <Notification> (in namespace {OUTBOUND})"
        )
    if len(elements) > MAX_NOTIFICATIONS:
        raise MalformedRequest(
            f"{len(elements)} notifications in one message: Salesforce sends at most "
            f"{MAX_NOTIFICATIONS}"
        )
    return elements


def _notification(element: Element, event_id_field: str) -> Notification:
    notification_id = _child_text(element, "Id") or ""
    sobject = _only(element, f"{{{OUTBOUND}}}sObject")
    if sobject is None or _is_nil(sobject):
        return Notification(notification_id, None, deleted=True)
    fields = _fields(sobject)
    sobject_type = sobject.get(f"{{{XSI}}}type")
    return Notification(
        notification_id=notification_id,
        event_id=fields.get(event_id_field),
        sobject_type=sobject_type.split(":")[-1] if sobject_type else None,
        id_fields={name: value for name, value in fields.items() if _ID_SHAPED.fullmatch(value)},
    )


def _fields(sobject: Element) -> dict[str, str]:
    """The sObject's fields, by name: only those in the sObject namespace (an element of
    another namespace named `Id` must not choose which meeting is cancelled), each at most
    once (two values for one field leave no way to tell which is meant)."""
    fields: dict[str, str] = {}
    for child in sobject:
        if not child.tag.startswith(f"{{{SOBJECT}}}") or len(child) or _is_nil(child):
            continue
        name = _local(child.tag)
        if name in fields:
            raise MalformedRequest(f"a notification's sObject has the field {name[:40]!r} twice")
        fields[name] = (child.text or "").strip()
    return fields


def fault(message: str, *, server: bool = False) -> str:
    """A SOAP 1.1 fault. `server` marks our side's trouble (retry later), else the sender's."""
    code = "soapenv:Server" if server else "soapenv:Client"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>{code}</faultcode><faultstring>{escape(message)}</faultstring>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )


def _only(element: Element, tag: str) -> Element | None:
    """The one child of `element` named `tag`, or None; two of them make the message
    ambiguous (which one would Salesforce have meant?), so it is refused."""
    found = element.findall(tag)
    if len(found) > 1:
        raise MalformedRequest(f"<{_local(tag)}> appears {len(found)} times where one is expected")
    return found[0] if found else None


def _child_text(element: Element, name: str) -> str | None:
    child = _only(element, f"{{{OUTBOUND}}}{name}")
    if child is None or _is_nil(child):
        return None
    return (child.text or "").strip()


def _is_nil(element: Element) -> bool:
    return element.get(f"{{{XSI}}}nil") in ("true", "1")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]
