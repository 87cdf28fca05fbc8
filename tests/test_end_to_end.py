"""Outbound Message in, ChiliPiper call out: the web app, a real Celery worker process, a
real Redis and the sandbox over HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from flask import Flask

from tests.conftest import (
    SALESFORCE,
    TOKEN,
    SandboxServer,
    WorkerProcess,
    notification_id,
    outbound_message,
    random_event_id,
    wait_for,
)
from worker.store import Store
from worker.tasks.app import QUEUE

pytestmark = pytest.mark.slow
SOAP_HEADERS = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'}


def test_sample_message_cancels_both_meetings(
    live_app: Flask, sandbox: SandboxServer, worker_store: Store
) -> None:
    body = (SALESFORCE / "synthetic_2x_event.xml").read_bytes()
    events = ["00U5g00000MnOpQEAV", "00U5g00000MnOpREAV"]
    response = live_app.test_client().post(
        f"/salesforce/outbound/cancel?token={TOKEN}", data=body, headers=SOAP_HEADERS
    )
    assert response.status_code == 200
    wait_for(lambda: all(sandbox.calls(event, action="cancel") for event in events))
    for event in events:
        [record] = wait_for(
            lambda event=event: [
                r for r in worker_store.records.for_event(event) if r["state"] == "succeeded"
            ]
        )
        assert record["sources"]
        assert len(sandbox.calls(event, action="cancel")) == 1


def test_same_message_posted_three_times_concurrently_cancels_each_event_once(
    live_server: str, sandbox: SandboxServer, worker_redis: redis.Redis
) -> None:
    pairs = [(notification_id(), random_event_id()) for _ in range(20)]
    body = outbound_message(pairs)
    url = f"{live_server}/salesforce/outbound/cancel?token={TOKEN}"

    def deliver(_: int) -> int:
        return httpx.post(url, content=body, headers=SOAP_HEADERS, timeout=30).status_code

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(deliver, range(3))) == [200, 200, 200]
    events = [event for _, event in pairs]
    wait_for(lambda: all(sandbox.calls(event, action="cancel") for event in events))
    # Let every queued duplicate run (or be skipped) before counting calls.
    wait_for(lambda: _broker_drained(worker_redis), timeout=20)
    calls = {event: len(sandbox.calls(event, action="cancel")) for event in events}
    assert set(calls.values()) == {1}, calls


def test_hundred_notifications_with_ten_bad_ids_end_to_end(
    live_app: Flask, sandbox: SandboxServer, worker_store: Store
) -> None:
    good = [(notification_id(), random_event_id()) for _ in range(90)]
    bad = [(notification_id(), random_event_id("a0X")) for _ in range(10)]
    response = live_app.test_client().post(
        f"/salesforce/outbound/noshow?token={TOKEN}",
        data=outbound_message(bad[:5] + good + bad[5:]),
        headers=SOAP_HEADERS,
    )
    assert response.status_code == 200
    wait_for(lambda: all(sandbox.calls(event, action="noshow") for _, event in good))
    wait_for(
        lambda: (
            {entry["notification_id"] for entry in worker_store.quarantine.list(1000)}
            >= {note for note, _ in bad}
        )
    )
    assert all(not sandbox.calls(event) for _, event in bad)


def test_redelivered_notification_is_not_queued_again(
    live_app: Flask, sandbox: SandboxServer, celery_worker: WorkerProcess
) -> None:
    event = random_event_id()
    body = outbound_message([(notification_id(), event)])
    client = live_app.test_client()
    assert (
        client.post(
            f"/salesforce/outbound/get?token={TOKEN}", data=body, headers=SOAP_HEADERS
        ).status_code
        == 200
    )
    wait_for(lambda: sandbox.calls(event, action="get"))
    assert (
        client.post(
            f"/salesforce/outbound/get?token={TOKEN}", data=body, headers=SOAP_HEADERS
        ).status_code
        == 200
    )
    wait_for(lambda: b"'skipped': 1" in celery_worker.log.read_bytes())
    assert len(sandbox.calls(event, action="get")) == 1


def test_json_events_reach_chilipiper(live_app: Flask, sandbox: SandboxServer) -> None:
    cancel, noshow = random_event_id(), random_event_id()
    response = live_app.test_client().post(
        "/v1/events",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={
            "events": [
                {"action": "cancel", "crmEventId": cancel},
                {"action": "noshow", "crmEventId": noshow[:15]},
            ]
        },
    )
    assert response.status_code == 202
    wait_for(
        lambda: sandbox.calls(cancel, action="cancel") and sandbox.calls(noshow, action="noshow")
    )


def test_failed_call_is_retried_by_the_worker_until_it_succeeds(
    live_app: Flask, sandbox: SandboxServer
) -> None:
    event = random_event_id()
    sandbox.set_faults(fail_next=4, status=503)  # more than one task run's in-call retries
    response = live_app.test_client().post(
        "/v1/events",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"action": "cancel", "crmEventId": event},
    )
    assert response.status_code == 202
    wait_for(lambda: sandbox.calls(event, action="cancel"), timeout=60)
    assert len(sandbox.calls(event, action="cancel")) == 1


def _broker_drained(client: redis.Redis) -> bool:
    """Nothing waiting in the queue and nothing delivered but unacknowledged."""
    return client.llen(QUEUE) == 0 and client.hlen("unacked") == 0
