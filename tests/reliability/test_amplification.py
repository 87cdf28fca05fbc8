"""The review's amplification bodies against a whole stack (web on loopback, a real worker,
its own redis-server): refused or bounded, Redis grows by at most a few MiB for 10 MiB of
hostile messages, and a good message posted among them is still carried out."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import ORG_ID, TOKEN, notification_id, outbound_message, random_event_id
from tests.reliability.conftest import Stack, cancels_per_event
from tests.webhooks.test_amplification import Hostile
from worker.domain.operations import Action, Operation
from worker.store import keys

MAX_GROWTH = 5 * 1024 * 1024


def review_body(org_id: str = "0" * 400_000, notifications: int = 6_745) -> bytes:
    """The body the review sent: a 400 KB OrganizationId and 6,745 bad notifications, 1 MiB."""
    bad = '<Notification><Id>1</Id><sObject xsi:type="sf:Event"><sf:Id>b</sf:Id></sObject>'
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><soapenv:Body>'
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{org_id}</OrganizationId>"
        f"{(bad + '</Notification>') * notifications}</notifications></soapenv:Body>"
        "</soapenv:Envelope>"
    ).encode()


def test_amplification_bodies_leave_redis_within_a_few_mib(
    stack: Stack, report: Callable[[str], None]
) -> None:
    stack.start_worker(concurrency=4)
    client = stack.redis()
    before = int(client.info("memory")["used_memory"])
    url = f"{stack.url}/salesforce/outbound/cancel?token={TOKEN}"
    headers = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'}
    assert len(review_body()) < stack.settings.max_body_bytes
    refused = [
        review_body(),
        review_body(org_id=ORG_ID),  # a valid org, but too many notifications
        Hostile(notifications=1, id_chars=10).body().replace(ORG_ID.encode(), b"0" * 17),
    ]
    # Just under 1 MiB each: 100 notifications of long text, half of it 4-byte characters.
    bounded = [
        Hostile(
            id_fields=30, id_chars=800, value_chars=200, type_chars=200, name_chars=20, wide=True
        ).body()
        if i % 2
        else Hostile(id_fields=30, id_chars=3_000, value_chars=750).body()
        for i in range(10)
    ]
    good = [(notification_id(), random_event_id()), (notification_id(), random_event_id())]
    with httpx.Client(timeout=30) as http:
        statuses = [http.post(url, content=body, headers=headers).status_code for body in refused]
        for body in bounded[:5]:
            statuses.append(http.post(url, content=body, headers=headers).status_code)
        statuses.append(http.post(url, content=outbound_message(good), headers=headers).status_code)
        for body in bounded[5:]:
            statuses.append(http.post(url, content=body, headers=headers).status_code)
    assert statuses == [400, 400, 400] + [200] * 11

    store = stack.store()
    done = [Operation(Action.CANCEL, event, source) for source, event in good]
    stack.wait_until(lambda: store.ingests.count() == 0 and stack.drained())
    stack.wait_until(
        lambda: all(
            (store.records.read(keys.operation(op)) or {}).get("state") == "succeeded"
            for op in done
        )
    )
    after = int(client.info("memory")["used_memory"])
    quarantined = store.quarantine.count()
    kept = client.memory_usage(keys.QUARANTINE, samples=0)
    posted = sum(len(body) for body in refused + bounded)
    report(
        f"amplification: {posted / 2**20:.1f} MiB posted in 13 hostile messages (3 refused), "
        f"{quarantined} notifications quarantined in {kept / 2**10:.0f} KiB; Redis grew "
        f"{(after - before) / 2**10:.0f} KiB (used_memory); the good message's 2 cancels done"
    )
    assert quarantined == 1000
    assert after - before < MAX_GROWTH
    assert cancels_per_event(stack.sandbox, [event for _, event in good], "cancel") == {
        event: 1 for _, event in good
    }
