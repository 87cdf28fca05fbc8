"""Salesforce Outbound Messages in and out: hostile-safe parsing, the Ack, SOAP faults.

Parsing refuses DTDs outright (defusedxml with `forbid_dtd`): an Outbound Message never has
one, and refusing them closes entity expansion and external entities in one rule. Only IDs
and the sObject type are kept; `SessionId` (a live credential) is never even read.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

import defusedxml
from defusedxml.ElementTree import fromstring

from worker.domain.notifications import Notification
from worker.domain.salesforce_ids import id_shaped
from worker.errors import MalformedRequest

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND = "http://soap.sforce.com/2005/09/outbound"
SOBJECT = "urn:sobject.enterprise.soap.sforce.com"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
CONTENT_TYPE = "text/xml; charset=utf-8"
# Tags and attribute names as ElementTree spells them ("{namespace}name"), built once rather
# than per element: a message of 100 notifications looks them up some 500 times.
_BODY = f"{{{SOAP_ENV}}}Body"
_NOTIFICATIONS = f"{{{OUTBOUND}}}notifications"
_NOTIFICATION = f"{{{OUTBOUND}}}Notification"
_NOTIFICATION_ID = f"{{{OUTBOUND}}}Id"
_SOBJECT = f"{{{OUTBOUND}}}sObject"
_FIELD_PREFIX = f"{{{SOBJECT}}}"
_XSI_NIL = f"{{{XSI}}}nil"
_XSI_TYPE = f"{{{XSI}}}type"
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
    soap_body = _only(root, _BODY)
    notifications = None if soap_body is None else _only(soap_body, _NOTIFICATIONS)
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
    if not id_shaped(organization_id):
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
        if child.tag == _NOTIFICATION:
            elements.append(child)
        elif _local(child.tag) == "Notification":
            raise MalformedRequest(
                f"a <Notification> outside the Outbound Message namespace {OUTBOUND}"
            )
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
    # One pass over the children, not a search per name: this runs for every notification.
    ids: list[Element] = []
    sobjects: list[Element] = []
    for child in element:
        if child.tag == _NOTIFICATION_ID:
            ids.append(child)
        elif child.tag == _SOBJECT:
            sobjects.append(child)
    notification_id = _text(_one(ids, _NOTIFICATION_ID)) or ""
    sobject = _one(sobjects, _SOBJECT)
    if sobject is None or _is_nil(sobject):
        return Notification(notification_id, None, deleted=True)
    fields, id_fields = _fields(sobject)
    sobject_type = sobject.get(_XSI_TYPE)
    return Notification(
        notification_id=notification_id,
        event_id=fields.get(event_id_field),
        sobject_type=sobject_type.split(":")[-1] if sobject_type else None,
        id_fields=id_fields,
    )


def _fields(sobject: Element) -> tuple[dict[str, str], dict[str, str]]:
    """The sObject's fields, by name, and those of them whose value is ID-shaped: only fields
    in the sObject namespace (an element of another namespace named `Id` must not choose
    which meeting is cancelled), each at most once (two values for one field leave no way to
    tell which is meant)."""
    fields: dict[str, str] = {}
    id_fields: dict[str, str] = {}
    for child in sobject:
        tag = child.tag
        if not tag.startswith(_FIELD_PREFIX) or len(child) or _is_nil(child):
            continue
        name = tag[len(_FIELD_PREFIX) :]  # the local name: a name holds no "}"
        if name in fields:
            raise MalformedRequest(f"a notification's sObject has the field {name[:40]!r} twice")
        value = fields[name] = (child.text or "").strip()
        if id_shaped(value):
            id_fields[name] = value
    return fields, id_fields


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
    """The one child of `element` named `tag`, or None (see `_one`)."""
    return _one(element.findall(tag), tag)


def _one(found: list[Element], tag: str) -> Element | None:
    """The one element of `found` (the children named `tag`), or None; two of them make the
    message ambiguous (which one would Salesforce have meant?), so it is refused."""
    if len(found) > 1:
        raise MalformedRequest(f"<{_local(tag)}> appears {len(found)} times where one is expected")
    return found[0] if found else None


def _child_text(element: Element, name: str) -> str | None:
    return _text(_only(element, f"{{{OUTBOUND}}}{name}"))


def _text(element: Element | None) -> str | None:
    """The element's text, stripped; None for no element or a nil one."""
    if element is None or _is_nil(element):
        return None
    return (element.text or "").strip()


def _is_nil(element: Element) -> bool:
    return element.get(_XSI_NIL) in ("true", "1")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]
