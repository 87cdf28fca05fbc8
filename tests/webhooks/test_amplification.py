"""What one message can make the service keep in Redis: a fuzzer looks for the body of at
most MAX_BODY_BYTES that stores the most (hypothesis `target`), through the real web app and
the real fan-out, and the most any body stores stays a few hundred KiB."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import redis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings, target
from hypothesis import strategies as st

from tests.conftest import ORG_ID, TOKEN, notification_id, random_event_id
from worker.ingest import Batch, fan_out
from worker.settings import Settings
from worker.store import Store
from worker.tasks.app import QUEUE
from worker.tasks.runtime import retention

# Three copies of a message's batch while it is in flight (the broker's message, base64 and
# all; the ingest record; the quarantine) of 100 rejections of at most about 1.1 KB each: the
# most any body can store is about 340 KB, whatever its size.
MAX_STORED_PER_MESSAGE = 384 * 1024
WIDE = "é漢🎉"  # 2, 3 and 4 bytes in UTF-8: bounds must hold in bytes, not only characters


@dataclass(frozen=True)
class Hostile:
    """The shape of an authenticated but hostile Outbound Message."""

    notifications: int = 100
    id_chars: int = 5_000  # the notification Id
    value_chars: int = 1_000  # the event ID field
    type_chars: int = 1_000  # xsi:type
    id_fields: int = 20  # ID-shaped fields of the sObject
    name_chars: int = 60  # their names
    wide: bool = False  # multi-byte characters where text is free
    valid: int = 0  # notifications with a valid Event ID among them

    def body(self) -> bytes:
        char = WIDE[2] if self.wide else "x"
        name_base = (WIDE[1] if self.wide else "F") * self.name_chars
        fields = "".join(
            f"<sf:{name_base}{i}>{random_event_id('001')}</sf:{name_base}{i}>"
            for i in range(self.id_fields)
        )
        parts = []
        for index in range(self.notifications):
            good = index < self.valid
            notification = notification_id() if good else f"{index:03d}" + char * self.id_chars
            event = random_event_id() if good else char * self.value_chars
            parts.append(
                f"<Notification><Id>{notification}</Id>"
                f'<sObject xsi:type="sf:{char * self.type_chars}" '
                'xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
                f"<sf:Id>{event}</sf:Id>{fields}</sObject></Notification>"
            )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
            '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
            f"<OrganizationId>{ORG_ID}</OrganizationId>"
            f"{''.join(parts)}</notifications></soapenv:Body></soapenv:Envelope>"
        ).encode()


def stored_bytes(client: redis.Redis) -> int:
    """What the database holds, by Redis's own account (MEMORY USAGE of every key)."""
    return sum(int(client.memory_usage(key, samples=0) or 0) for key in client.scan_iter())


def post(client: FlaskClient, body: bytes) -> int:
    return client.post(
        f"/salesforce/outbound/cancel?token={TOKEN}",
        data=body,
        headers={"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'},
    ).status_code


def stored_by_one_message(
    client: FlaskClient, idle_redis: redis.Redis, settings: Settings, body: bytes
) -> int:
    """Post `body`, run its fan-out in this process against the same Redis, and measure
    the peak: the broker's message and the ingest record still held (as until a worker
    acknowledges the fan-out), beside the quarantine, the records and their markers."""
    idle_redis.flushdb()
    assert post(client, body) == 200
    [raw] = idle_redis.lrange(QUEUE, 0, -1)
    [message], _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
    store = Store(idle_redis, retention(settings))
    # Under another ingest ID, so that the fan-out leaves the edge's record in place.
    fan_out(store, Batch.from_message(message), ingest_id="peak", publish=lambda ops: None)
    return stored_bytes(idle_redis)


# Ranges within which most bodies fit MAX_BODY_BYTES (those past it are only refused: 413).
shapes = st.builds(
    Hostile,
    notifications=st.integers(1, 100),
    id_chars=st.integers(0, 2_000),
    value_chars=st.integers(0, 2_000),
    type_chars=st.integers(0, 2_000),
    id_fields=st.integers(0, 200),
    name_chars=st.integers(1, 100),
    wide=st.booleans(),
    valid=st.integers(0, 100),
)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(shape=shapes)
# What a review found before the bounds were measured in escaped bytes (753 KiB and 1.2 MiB).
@example(Hostile(id_chars=100, value_chars=100, type_chars=100, id_fields=0, wide=True))
@example(Hostile(id_chars=100, value_chars=100, type_chars=100, name_chars=78, wide=True))
# Every kept field at its bound: the most one message can make us keep.
@example(Hostile(id_chars=150, value_chars=150, type_chars=150, id_fields=10, name_chars=62))
def test_no_message_stores_more_than_a_few_hundred_kib(
    client: FlaskClient, idle_redis: redis.Redis, settings: Settings, shape: Hostile
) -> None:
    body = shape.body()
    if len(body) > settings.max_body_bytes:
        assert post(client, body) == 413
        return
    stored = stored_by_one_message(client, idle_redis, settings, body)
    target(float(stored), label="bytes stored by one message")
    assert stored <= MAX_STORED_PER_MESSAGE, (shape, len(body), stored)
