"""The SOAP route against a real Redis broker (a database no worker consumes, so what the
edge published can be read back)."""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import (
    ORG_ID,
    OTHER_TOKEN,
    SALESFORCE,
    TOKEN,
    make_settings,
    notification_id,
    outbound_message,
    random_event_id,
)
from webhooks import create_app
from worker.dev.redis_server import RedisServer
from worker.domain.notifications import MAX_ID_FIELDS
from worker.tasks.app import QUEUE

ACK = b"<Ack>true</Ack>"
SECRET_SESSION = "00D1I000003qqqE!AQsAQOjGFnFJzGPA12yhUGL9Aii0N6lADjH2bNUBHRer5QjjTq3"


def published(client: redis.Redis) -> list[dict[str, Any]]:
    """The fan-out batches waiting in the broker, oldest first."""
    batches = []
    for raw in reversed(client.lrange(QUEUE, 0, -1)):
        envelope = json.loads(raw)
        assert envelope["headers"]["task"] == "crmhook.fan_out"
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        batches.append(args[0])
    return batches


def post(
    client: FlaskClient,
    body: bytes,
    action: str = "cancel",
    token: str | None = TOKEN,
    **headers: str,
) -> Any:
    query = f"?token={token}" if token is not None else ""
    return client.post(
        f"/salesforce/outbound/{action}{query}",
        data=body,
        headers={"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""', **headers},
    )


def fixture(name: str) -> bytes:
    return (SALESFORCE / name).read_bytes()


def test_synthetic_event_message_is_queued_then_acked(
    client: FlaskClient, idle_redis: redis.Redis
) -> None:
    response = post(client, fixture("synthetic_2x_event.xml"))
    assert response.status_code == 200
    assert response.content_type == "text/xml; charset=utf-8"
    assert ACK in response.data
    [batch] = published(idle_redis)
    assert batch["action"] == "cancel"
    assert [op["crm_event_id"] for op in batch["operations"]] == [
        "00U5g00000MnOpQEAV",
        "00U5g00000MnOpREAV",
    ]
    assert batch["rejections"] == []


def test_either_rotated_token_is_accepted(client: FlaskClient) -> None:
    assert post(client, fixture("synthetic_2x_event.xml"), token=OTHER_TOKEN).status_code == 200


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing token"),
        ("", "missing token"),
        ("wrong-token-0123456789", "unknown token"),
        (TOKEN[:-1], "unknown token"),
    ],
)
def test_bad_token_is_401_with_a_soap_fault(
    client: FlaskClient, idle_redis: redis.Redis, token: str | None, reason: str
) -> None:
    response = post(client, fixture("synthetic_2x_event.xml"), token=token)
    assert response.status_code == 401
    assert b"<faultcode>soapenv:Client</faultcode>" in response.data
    assert reason.encode() in response.data
    assert published(idle_redis) == []


def test_token_is_checked_before_the_body_is_parsed(client: FlaskClient) -> None:
    response = post(client, b"<not-xml", token="wrong-token-0123456789")
    assert response.status_code == 401


def test_organization_not_allowed_is_403(client: FlaskClient, idle_redis: redis.Redis) -> None:
    response = post(client, fixture("aspnet-webhooks_2x_contact.xml"))
    assert response.status_code == 403
    assert b"012345678901234" in response.data
    assert b"SALESFORCE_ORG_IDS" in response.data
    assert published(idle_redis) == []


def test_placeholder_ids_message_is_403(client: FlaskClient) -> None:
    response = post(client, fixture("guardian_1x_contact_placeholder-ids.xml"))
    assert response.status_code == 403
    assert b"someOrganizationId" in response.data


def test_perl_message_queues_the_valid_and_quarantines_the_corrupted(
    redis_server: RedisServer, sandbox_server: Any, idle_redis: redis.Redis
) -> None:
    settings = make_settings(
        _url(idle_redis),
        sandbox_server.url,
        salesforce_org_ids="00De0000000pmu1",
        salesforce_id_prefixes="a29",
    )
    client = create_app(settings).test_client()
    response = post(client, fixture("perl-wsm_2x_custom-object_second-corrupted.xml"), "get")
    assert response.status_code == 200
    assert ACK in response.data
    [batch] = published(idle_redis)
    assert [op["crm_event_id"] for op in batch["operations"]] == ["a29e0000000K4P0AAK"]
    [rejection] = batch["rejections"]
    assert rejection["notification_id"] == "04le0000004lnFFAAZ"
    assert rejection["value"] == "a29e0000000Jz3m"
    assert "checksum" in rejection["reason"]


def aspnet_from_allowed_org() -> bytes:
    """The aspnet sample with its fake OrganizationId (not a 00D ID, so it can never be
    allowed) replaced by ours."""
    return fixture("aspnet-webhooks_2x_contact.xml").replace(b"012345678901234", ORG_ID.encode())


def test_contact_ids_are_quarantined_under_the_event_prefix(
    client: FlaskClient, idle_redis: redis.Redis
) -> None:
    response = post(client, aspnet_from_allowed_org())
    assert response.status_code == 200  # nothing to do, but nothing to retry either
    [batch] = published(idle_redis)
    assert batch["operations"] == []
    assert ["key prefix '003'" in r["reason"] for r in batch["rejections"]] == [True, True]


def test_session_id_is_never_logged_or_stored(
    sandbox_server: Any, idle_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(_url(idle_redis), sandbox_server.url, salesforce_id_prefixes="003,00U")
    caplog.set_level(logging.DEBUG)
    body = aspnet_from_allowed_org()
    assert SECRET_SESSION.encode() in body
    response = post(create_app(settings).test_client(), body)
    assert response.status_code == 200
    assert len(published(idle_redis)[0]["operations"]) == 2
    stored = [idle_redis.dump(key) or b"" for key in idle_redis.keys("*")]
    assert stored
    assert all(SECRET_SESSION[:20].encode() not in value for value in stored)
    assert SECRET_SESSION[:20] not in caplog.text


def test_hundred_notifications_with_ten_bad_ids(
    client: FlaskClient, idle_redis: redis.Redis
) -> None:
    good = [(notification_id(), random_event_id()) for _ in range(90)]
    bad = [(notification_id(), random_event_id()[:17] + "!") for _ in range(5)]
    bad += [(notification_id(), random_event_id("003")) for _ in range(5)]
    response = post(client, outbound_message(good[:45] + bad + good[45:]))
    assert response.status_code == 200
    assert ACK in response.data
    [batch] = published(idle_redis)
    assert {op["crm_event_id"] for op in batch["operations"]} == {event for _, event in good}
    assert len(batch["rejections"]) == 10


def test_message_with_only_invalid_or_deleted_notifications_is_still_acked(
    client: FlaskClient, idle_redis: redis.Redis
) -> None:
    response = post(
        client, outbound_message([(notification_id(), None), (notification_id(), "aContactId")])
    )
    assert response.status_code == 200
    reasons = [r["reason"] for r in published(idle_redis)[0]["rejections"]]
    assert "deleted" in reasons[0]
    assert "not a Salesforce ID" in reasons[1]


NOTIFICATION = "<Notification><Id>{}</Id></Notification>"


def message_with(inside: str, org_id: str = ORG_ID) -> bytes:
    """An Outbound Message whose <notifications> holds `inside` after the org and action IDs."""
    return outbound_message([(notification_id(), random_event_id())], org_id=org_id).replace(
        b"<SessionId", inside.encode() + b"<SessionId", 1
    )


# Bodies that dress as Outbound Messages and are not: refused, never acknowledged.
NOT_OUTBOUND_MESSAGES = [
    pytest.param(outbound_message([]), "holds no <Notification>", id="no-notifications"),
    pytest.param(
        outbound_message([]).replace(
            b"</notifications>",
            b'<x:Notification xmlns:x="urn:elsewhere"><x:Id>04l5g000000AbCdAAK</x:Id>'
            b"</x:Notification></notifications>",
        ),
        "outside the Outbound Message namespace",
        id="foreign-namespace-only",
    ),
    pytest.param(
        message_with('<Notification xmlns="">' + "<Id>04l5g000000AbCdAAK</Id></Notification>"),
        "outside the Outbound Message namespace",
        id="foreign-beside-valid",
    ),
    pytest.param(
        outbound_message([(notification_id(), random_event_id()) for _ in range(101)]),
        "101 notifications in one message",
        id="101-notifications",
    ),
    pytest.param(
        outbound_message([(notification_id(), random_event_id())], org_id="0" * 400_000),
        "not a",
        id="400k-org-id",
    ),
    pytest.param(
        outbound_message([(notification_id(), random_event_id())], org_id=ORG_ID[:14]),
        "not a",
        id="14-char-org-id",
    ),
    pytest.param(
        outbound_message([(notification_id(), random_event_id())], org_id=ORG_ID + "E"),
        "not a",
        id="16-char-org-id",
    ),
    pytest.param(
        outbound_message([(notification_id(), random_event_id())], org_id=ORG_ID[:14] + "!"),
        "not",
        id="org-id-not-alphanumeric",
    ),
    pytest.param(
        outbound_message([(notification_id(), random_event_id())]).replace(
            b"</soapenv:Body>",
            outbound_message([(notification_id(), random_event_id())])
            .split(b"<soapenv:Body>")[1]
            .split(b"</soapenv:Body>")[0]
            + b"</soapenv:Body>",
        ),
        "<notifications> appears 2 times",
        id="two-notifications-elements",
    ),
    pytest.param(
        outbound_message([(notification_id(), random_event_id())]).replace(
            b"</sf:Id>", b"</sf:Id><sf:Id>" + random_event_id().encode() + b"</sf:Id>"
        ),
        "the field 'Id' twice",
        id="one-field-twice",
    ),
]


def test_a_field_outside_the_sobject_namespace_chooses_nothing(
    client: FlaskClient, idle_redis: redis.Redis
) -> None:
    event = random_event_id()
    foreign = b'<x:Id xmlns:x="urn:elsewhere">' + random_event_id().encode() + b"</x:Id>"
    body = outbound_message([(notification_id(), event)]).replace(
        b"</sf:Id>", b"</sf:Id>" + foreign
    )
    assert post(client, body).status_code == 200
    [batch] = published(idle_redis)
    assert [op["crm_event_id"] for op in batch["operations"]] == [event]


def test_a_message_of_100_notifications_is_queued_whole(
    client: FlaskClient, idle_redis: redis.Redis
) -> None:
    pairs = [(notification_id(), random_event_id()) for _ in range(100)]
    response = post(client, outbound_message(pairs))
    assert response.status_code == 200
    [batch] = published(idle_redis)
    assert len(batch["operations"]) == 100


def test_what_a_rejection_keeps_of_hostile_values_is_bounded(
    client: FlaskClient, idle_redis: redis.Redis
) -> None:
    fields = "".join(f"<sf:F{i}__c>{random_event_id('001')}</sf:F{i}__c>" for i in range(500))
    huge = "x" * 50_000
    body = outbound_message([(huge, huge)], sobject_type="T" * 50_000).replace(
        b"<sf:Subject>",
        fields.encode()
        + b"<sf:"
        + b"N" * 5000
        + b">0011I000003qqqEAAQ"
        + b"</sf:"
        + b"N" * 5000
        + b"><sf:Subject>",
    )
    response = post(client, body)
    assert response.status_code == 200
    [batch] = published(idle_redis)
    [rejection] = batch["rejections"]
    assert len(json.dumps(rejection)) < 2000
    assert len(rejection["id_fields"]) == MAX_ID_FIELDS
    assert rejection["value"].startswith("xxx")
    assert rejection["sobject_type"].startswith("TTT")


XXE = (
    b'<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b"<foo>&xxe;</foo>"
)
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
    b"<l>&c;</l>"
)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "empty body"),
        (XXE, "DTDs, entities and external references are not allowed"),
        (LAUGHS, "DTDs, entities and external references are not allowed"),
        (fixture("synthetic_2x_event.xml")[:-40], "not well-formed XML"),
        (b"this is not xml", "not well-formed XML"),
        (b'{"action": "cancel", "crmEventId": "00U5g00000MnOpQEAV"}', "not well-formed XML"),
        (fixture("ack-response.xml"), "holds no Outbound Message"),
        *NOT_OUTBOUND_MESSAGES,
    ],
)
def test_bad_bodies_are_400_with_a_soap_fault(
    client: FlaskClient, idle_redis: redis.Redis, body: bytes, says: str
) -> None:
    response = post(client, body)
    assert response.status_code == 400
    assert b"<soapenv:Fault>" in response.data
    assert b"soapenv:Client" in response.data
    assert says in html.unescape(response.get_data(as_text=True))
    assert published(idle_redis) == []


def test_oversize_body_is_413(sandbox_server: Any, idle_redis: redis.Redis) -> None:
    settings = make_settings(_url(idle_redis), sandbox_server.url, max_body_bytes=4096)
    client = create_app(settings).test_client()
    body = outbound_message([(notification_id(), random_event_id()) for _ in range(100)])
    assert len(body) > 4096
    response = post(client, body)
    assert response.status_code == 413
    assert b"MAX_BODY_BYTES" in response.data
    assert b"<soapenv:Fault>" in response.data


def test_default_bound_takes_a_full_100_notification_message(client: FlaskClient) -> None:
    notifications = [(notification_id(), random_event_id()) for _ in range(100)]
    assert post(client, outbound_message(notifications)).status_code == 200


def test_unknown_action_is_400(client: FlaskClient) -> None:
    response = post(client, fixture("synthetic_2x_event.xml"), action="delete")
    assert response.status_code == 400
    assert b"expected one of: get, noshow, cancel" in response.data


def test_redis_down_is_503_without_ack_then_accepted_when_it_returns(sandbox_server: Any) -> None:
    with RedisServer() as own:
        client = create_app(make_settings(own.url, sandbox_server.url)).test_client()
        body = fixture("synthetic_2x_event.xml")
        own.stop()
        started = time.monotonic()
        response = post(client, body)
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert ACK not in response.data
        assert b"<faultcode>soapenv:Server</faultcode>" in response.data
        assert elapsed < 10, f"answered after {elapsed:.1f} s"

        own.start()  # same port, same AOF directory
        response = post(client, body)
        assert response.status_code == 200
        assert ACK in response.data
        assert len(published(redis.Redis.from_url(own.url))) == 1


def _url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"
