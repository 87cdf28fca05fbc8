"""`crmhook` commands against a real Redis (and, for `enqueue`, the running worker)."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from flask import Flask

from tests.conftest import TOKEN, SandboxServer, WorkerProcess, random_event_id, wait_for
from worker.cli import main
from worker.domain.operations import Action, Operation
from worker.store import Store, keys

pytestmark = pytest.mark.slow  # most commands here talk to the running worker


@pytest.fixture
def runner(celery_worker: WorkerProcess, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(celery_worker.log.parent)  # no stray .env
    monkeypatch.setenv("REDIS_URL", celery_worker.settings.redis_url)
    monkeypatch.setenv("SALESFORCE_ID_PREFIXES", "00U")
    return CliRunner()


def test_enqueue_validates_like_the_edge_and_the_worker_performs(
    runner: CliRunner, sandbox: SandboxServer
) -> None:
    event = random_event_id()
    result = runner.invoke(main, ["enqueue", "noshow", event[:15], "003000000000001"])
    assert result.exit_code == 1  # one ID was rejected
    assert f"queued   {event}" in result.output
    assert "rejected 003000000000001" in result.output
    wait_for(lambda: sandbox.calls(event, action="noshow"))


def test_enqueue_refuses_an_unknown_action(runner: CliRunner) -> None:
    result = runner.invoke(main, ["enqueue", "reschedule", random_event_id()])
    assert result.exit_code == 2
    assert "expected one of: get, noshow, cancel" in result.output


def test_status_shows_state_attempts_and_result(
    runner: CliRunner, sandbox: SandboxServer, worker_store: Store
) -> None:
    event = random_event_id()
    runner.invoke(main, ["enqueue", "cancel", event])
    wait_for(lambda: any(r["state"] == "succeeded" for r in worker_store.records.for_event(event)))
    shown = runner.invoke(main, ["status", event.lower()])  # repaired from its checksum
    assert shown.exit_code == 0
    assert f"crmhook:op:{{cancel:{event}}}" in shown.output
    assert "succeeded" in shown.output
    as_json = json.loads(runner.invoke(main, ["status", "--json", event]).output)
    assert as_json[0]["attempts"] == "1"
    assert as_json[0]["result"]["meeting"]["status"] == "CANCELLED"
    by_key = runner.invoke(main, ["status", as_json[0]["key"]])
    assert by_key.exit_code == 0


def test_status_of_an_unknown_event_exits_1(runner: CliRunner) -> None:
    result = runner.invoke(main, ["status", random_event_id()])
    assert result.exit_code == 1
    assert "nothing recorded" in result.output


def test_status_of_a_bad_id_says_why(runner: CliRunner) -> None:
    result = runner.invoke(main, ["status", "00U5g00000MnOpQEAX"])
    assert result.exit_code == 2
    assert "checksum" in result.output


def test_quarantine_lists_rejected_notifications_as_sent(
    runner: CliRunner, live_app: Flask, worker_store: Store
) -> None:
    from tests.conftest import outbound_message

    bad_note = random_event_id("04l")
    body = outbound_message([(bad_note, "00U-not-an-id")])
    assert (
        live_app.test_client()
        .post(f"/salesforce/outbound/cancel?token={TOKEN}", data=body)
        .status_code
        == 200
    )
    wait_for(lambda: any(e["notification_id"] == bad_note for e in worker_store.quarantine.list()))
    listing = runner.invoke(main, ["quarantine", "--json"])
    [entry] = [e for e in json.loads(listing.output) if e["notification_id"] == bad_note]
    assert entry["value"] == "00U-not-an-id"
    assert "not a Salesforce ID" in entry["reason"]
    table = runner.invoke(main, ["quarantine"], terminal_width=250)
    assert bad_note in table.output


def test_missing_configuration_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.chdir(str(tmp_path))
    result = CliRunner().invoke(main, ["quarantine"])
    assert result.exit_code == 1
    assert "REDIS_URL: is not set" in result.output


def test_unreachable_redis_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.chdir(str(tmp_path))
    result = CliRunner().invoke(main, ["status", random_event_id()])
    assert result.exit_code == 1
    assert "Redis did not answer" in result.output


def test_status_of_a_dead_letter_shows_attempts_and_last_error(
    runner: CliRunner, sandbox: SandboxServer, worker_store: Store
) -> None:
    event = random_event_id()
    with sandbox.state.lock:
        sandbox.state.unlinked.add(event)  # ChiliPiper has no meeting for it
    runner.invoke(main, ["enqueue", "cancel", event])
    wait_for(lambda: any(r["state"] == "failed" for r in worker_store.records.for_event(event)))
    shown = runner.invoke(main, ["status", event], terminal_width=200)
    assert shown.exit_code == 0
    assert "failed" in shown.output
    assert "attempts" in shown.output
    assert "No meeting linked" in shown.output


def test_migrate_indexes_records_of_an_older_version(
    runner: CliRunner, worker_store: Store
) -> None:
    client = worker_store.redis
    wait_for(lambda: client.hexists(keys.MIGRATIONS, "event-index"))  # the worker did, at start
    client.hdel(keys.MIGRATIONS, "event-index")  # as if this Redis came from an older version
    old = Operation(Action.CANCEL, random_event_id(), random_event_id("04l"))
    created_ms = int(time.time() * 1000)
    client.hset(
        keys.operation(old),
        mapping={
            "state": "failed",
            "action": "cancel",
            "crm_event_id": old.crm_event_id,
            "source_id": old.source_id,
            "created_at": created_ms,
        },
    )
    assert runner.invoke(main, ["status", old.crm_event_id]).exit_code == 1  # not indexed

    pending = runner.invoke(main, ["migrate", "--dry-run"])
    assert "pending migrations: event-index" in pending.output
    applied = runner.invoke(main, ["migrate"])
    assert applied.exit_code == 0, applied.output
    assert "applied event-index" in applied.output

    shown = json.loads(runner.invoke(main, ["status", "--json", old.crm_event_id]).output)
    assert shown[0]["created_at"] == created_ms / 1000
    assert "pending migrations: none" in runner.invoke(main, ["migrate"]).output
