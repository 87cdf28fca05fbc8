"""Parsing Outbound Messages: the real samples, and hostile or broken bodies."""

from __future__ import annotations

import pytest
from defusedxml import ElementTree

from tests.conftest import SALESFORCE
from webhooks.soap import ACK, OUTBOUND, SOAP_ENV, OutboundMessage, fault, parse_outbound
from worker.errors import MalformedRequest

SECRET_SESSION = "00D1I000003qqqE!AQsAQOjGFnFJzGPA12yhUGL9Aii0N6lADjH2bNUBHRer5QjjTq3"


def parse(name: str, field: str = "Id") -> OutboundMessage:
    return parse_outbound((SALESFORCE / name).read_bytes(), field)


def test_synthetic_event_message_yields_both_events() -> None:
    message = parse("synthetic_2x_event.xml")
    assert message.organization_id == "00D5g000004XyZqEAK"
    assert [(n.notification_id, n.event_id, n.sobject_type) for n in message.notifications] == [
        ("04l5g00000QrStUAAV", "00U5g00000MnOpQEAV", "Event"),
        ("04l5g00000QrStVAAV", "00U5g00000MnOpREAV", "Event"),
    ]


def test_aspnet_message_keeps_ids_and_never_the_session_id() -> None:
    message = parse("aspnet-webhooks_2x_contact.xml")
    assert message.organization_id == "012345678901234"
    assert [n.event_id for n in message.notifications] == [
        "0031I0000081tbPQAQ",
        "0031I0000081tb0QAA",
    ]
    assert SECRET_SESSION not in repr(message)
    # Only ID-shaped fields are kept: names and e-mail addresses are not.
    assert "drb24@cornell.edu" not in repr(message)


def test_event_id_field_is_configurable() -> None:
    message = parse("synthetic_2x_event.xml", field="WhoId")
    assert message.notifications[0].event_id == "0035g00000AaBbCAAV"
    assert message.notifications[1].event_id is None  # the all-day event has no WhoId


def test_perl_message_keeps_the_corrupted_values_as_sent() -> None:
    message = parse("perl-wsm_2x_custom-object_second-corrupted.xml")
    second = message.notifications[1]
    assert (second.notification_id, second.event_id) == ("04le0000004lnFFAAZ", "a29e0000000Jz3m")
    assert second.sobject_type == "State_Province__c"


def test_placeholder_ids_parse_but_are_not_ids() -> None:
    message = parse("guardian_1x_contact_placeholder-ids.xml")
    assert message.organization_id == "someOrganizationId"
    assert message.notifications[0].event_id == "aContactId"


def test_notification_without_sobject_is_a_deleted_record() -> None:
    body = (SALESFORCE / "synthetic_2x_event.xml").read_text()
    start, end = body.index("<sObject"), body.index("</sObject>") + len("</sObject>")
    message = parse_outbound((body[:start] + body[end:]).encode(), "Id")
    assert message.notifications[0].deleted
    assert not message.notifications[1].deleted


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>&xxe;</OrganizationId>
</notifications></soapenv:Body></soapenv:Envelope>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>&lol3;</OrganizationId>
</notifications></soapenv:Body></soapenv:Envelope>"""


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"   \n", "empty body"),
        (XXE, "DTDs, entities and external references are not allowed"),
        (BILLION_LAUGHS, "DTDs, entities and external references are not allowed"),
        ((SALESFORCE / "synthetic_2x_event.xml").read_bytes()[:700], "not well-formed XML"),
        (b'{"action": "cancel", "crmEventId": "00U5g00000MnOpQEAV"}', "not well-formed XML"),
        (b"\x00\xff\xfe garbage", "not well-formed XML"),
        (b"<html><body>hello</body></html>", "not a SOAP 1.1 envelope"),
        # Found by hypothesis: expat raises LookupError for an unknown declared encoding.
        (b'<?xml version="1.0" encoding="T"?><a/>', "unknown encoding: T"),
        (b'<?xml version="1.0" encoding="utf-16"?><a/>', "not"),
        ((SALESFORCE / "ack-response.xml").read_bytes(), "holds no Outbound Message"),
        (
            f'<e:Envelope xmlns:e="{SOAP_ENV}"><e:Body><notifications xmlns="{OUTBOUND}"/>'
            "</e:Body></e:Envelope>".encode(),
            "no OrganizationId",
        ),
    ],
)
def test_bad_bodies_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedRequest, match=reason):
        parse_outbound(body, "Id")


def test_ack_matches_the_documented_acknowledgement() -> None:
    documented = ElementTree.fromstring(
        (SALESFORCE / "ack-response.xml").read_bytes().removeprefix(b"\xef\xbb\xbf")
    )
    ours = ElementTree.fromstring(ACK.encode())
    path = f"{{{SOAP_ENV}}}Body/{{{OUTBOUND}}}notificationsResponse/{{{OUTBOUND}}}Ack"
    assert ours.tag == documented.tag
    assert ours.findtext(path) == documented.findtext(path) == "true"


def test_fault_escapes_its_message() -> None:
    tree = ElementTree.fromstring(fault("bad <Id> & worse").encode())
    assert tree.findtext(f".//{{{SOAP_ENV}}}Fault/faultstring") == "bad <Id> & worse"
    assert tree.findtext(f".//{{{SOAP_ENV}}}Fault/faultcode") == "soapenv:Client"
