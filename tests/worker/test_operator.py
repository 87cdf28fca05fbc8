"""Operators' replays through `crmhook`, performed by the running worker on the sandbox."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from flask import Flask

from tests.conftest import (
    ORG_ID,
    TOKEN,
    SandboxServer,
    WorkerProcess,
    random_event_id,
    wait_for,
)
from worker.cli import main
from worker.domain.operations import Action, Operation, State
from worker.store import Store, keys
from worker.store.claims import Doubt

pytestmark = pytest.mark.slow


@pytest.fixture
def runner(celery_worker: WorkerProcess, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(celery_worker.log.parent)  # no stray .env
    monkeypatch.setenv("REDIS_URL", celery_worker.settings.redis_url)
    monkeypatch.setenv("SALESFORCE_ID_PREFIXES", "00U")
    monkeypatch.delenv("SALESFORCE_EVENT_ID_FIELD", raising=False)
    return CliRunner()


def state_of(store: Store, event: str, action: Action = Action.CANCEL) -> str | None:
    record = store.records.read(keys.operation(Operation(action, event, "")))
    return record["state"] if record else None


def dead_letter(runner: CliRunner, sandbox: SandboxServer, store: Store) -> str:
    """A cancel that failed for good: ChiliPiper had no meeting for the event."""
    event = random_event_id()
    with sandbox.state.lock:
        sandbox.state.unlinked.add(event)
    assert runner.invoke(main, ["enqueue", "cancel", event]).exit_code == 0
    wait_for(lambda: state_of(store, event) == State.FAILED)
    return event


def link(sandbox: SandboxServer, *events: str) -> None:
    """The fix: the meetings exist now."""
    with sandbox.state.lock:
        sandbox.state.unlinked.difference_update(events)


def test_failed_lists_dead_letters_with_their_error(
    runner: CliRunner, sandbox: SandboxServer, worker_store: Store
) -> None:
    event = dead_letter(runner, sandbox, worker_store)
    listed = json.loads(runner.invoke(main, ["failed", "--json", "--since", "5m"]).output)
    [record] = [r for r in listed if r["crm_event_id"] == event]
    assert record["state"] == "failed"
    assert "No meeting linked" in record["last_error"]
    assert event not in runner.invoke(main, ["failed", "--action", "noshow", "--json"]).output
    table = runner.invoke(main, ["failed"], terminal_width=250)
    assert event in table.output


def test_replayed_dead_letter_after_the_fix_is_called_exactly_once(
    runner: CliRunner, sandbox: SandboxServer, worker_store: Store
) -> None:
    event = dead_letter(runner, sandbox, worker_store)
    link(sandbox, event)
    key = keys.operation(Operation(Action.CANCEL, event, ""))
    replayed = runner.invoke(main, ["replay", key])
    assert replayed.exit_code == 0, replayed.output
    assert "1 queued" in replayed.output
    wait_for(lambda: state_of(worker_store, event) == State.SUCCEEDED)
    calls = [(call["action"], call["ok"]) for call in sandbox.calls(event)]
    # The dead letter, answered (no meeting linked): nothing in doubt, so the replay calls.
    assert calls == [("cancel", False), ("cancel", True)]
    assert key not in [dead for dead, _ in worker_store.dead_letters.since()]
    trail = worker_store.records.read(key)["audit"]  # type: ignore[index]
    assert [(e["what"], e["outcome"]) for e in trail] == [
        ("enqueue", "queued"),
        ("replay", "queued"),
    ]
    assert trail[1]["actor"].startswith("cli:")


def test_replay_of_a_dead_cancel_that_had_taken_effect_sends_no_second_cancel(
    runner: CliRunner, sandbox: SandboxServer, worker_store: Store
) -> None:
    event = random_event_id()
    operation = Operation(Action.CANCEL, event, random_event_id("04l"))
    worker_store.records.mark_queued([operation])
    claim = worker_store.claims.claim(operation, "earlier-worker", 60)
    # Its last attempt timed out after sending: ChiliPiper did cancel, unbeknown to us.
    assert worker_store.claims.mark_sending(operation, claim, 60)
    worker_store.claims.settle(
        operation, claim, State.FAILED, doubt=Doubt.CALL, error="gave up after 12 attempts"
    )
    worker_store.redis.hset(keys.operation(operation), "doubt_since", 0)  # long settled
    with sandbox.state.lock:
        sandbox.state.meetings[event] = "CANCELLED"
    assert runner.invoke(main, ["replay", keys.operation(operation)]).exit_code == 0
    wait_for(lambda: state_of(worker_store, event) == State.SUCCEEDED)
    assert [call["action"] for call in sandbox.calls(event)] == ["get"]
    record = worker_store.records.read(keys.operation(operation))
    assert record is not None
    assert record["result"]["reconciled"] is True
    # Read from ChiliPiper's own field and spelling: {"meetingStatus": "Canceled", ...}.
    assert record["result"]["meeting"]["status_as_sent"] == "Canceled"
    assert record["result"]["meeting"]["status"] == "CANCELLED"


def test_replaying_a_succeeded_cancel_sends_nothing_unless_forced(
    runner: CliRunner, sandbox: SandboxServer, worker_store: Store
) -> None:
    event = random_event_id()
    runner.invoke(main, ["enqueue", "cancel", event])
    wait_for(lambda: state_of(worker_store, event) == State.SUCCEEDED)

    skipped = runner.invoke(main, ["replay", event])
    assert "skipped" in skipped.output
    assert "already succeeded" in skipped.output
    dry = runner.invoke(main, ["replay", event, "--force", "--dry-run", "--json"])
    assert json.loads(dry.output)[0]["outcome"] == "would_queue"
    assert state_of(worker_store, event) == State.SUCCEEDED
    assert len(sandbox.calls(event, action="cancel")) == 1

    forced = runner.invoke(main, ["replay", event, "--force"])
    assert "forced" in forced.output
    wait_for(lambda: len(sandbox.calls(event, action="cancel")) == 2)
    wait_for(lambda: state_of(worker_store, event) == State.SUCCEEDED)
    shown = runner.invoke(main, ["status", event], terminal_width=250)
    assert "forced-replay: queued" in shown.output
    record = worker_store.records.read(keys.operation(Operation(Action.CANCEL, event, "")))
    assert record is not None
    assert record["forced"].startswith("cli:")
    audited = json.loads(runner.invoke(main, ["audit", "--json"]).output)
    assert any(e["what"] == "forced-replay" and event in e["target"] for e in audited)


def test_dry_run_of_the_failed_changes_nothing(
    runner: CliRunner, sandbox: SandboxServer, worker_store: Store
) -> None:
    event = dead_letter(runner, sandbox, worker_store)
    link(sandbox, event)
    dry = runner.invoke(main, ["replay", "--failed", "--since", "5m", "--dry-run"])
    assert dry.exit_code == 0
    assert "would queue" in dry.output
    assert "dry run" in dry.output
    assert state_of(worker_store, event) == State.FAILED
    assert len(sandbox.calls(event, action="cancel")) == 1
    record = worker_store.records.read(keys.operation(Operation(Action.CANCEL, event, "")))
    assert record is not None
    assert [e["what"] for e in record["audit"]] == ["enqueue"]  # no replay audited


def custom_object_message(notification_id: str, record_id: str, event_id: str) -> bytes:
    """An Outbound Message on a custom object whose `Event_Id__c` names the Event."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{ORG_ID}</OrganizationId><ActionId>04k5g000000AbCdAAK</ActionId>"
        f"<Notification><Id>{notification_id}</Id>"
        '<sObject xsi:type="sf:Meeting__c" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        f"<sf:Id>{record_id}</sf:Id><sf:Event_Id__c>{event_id}</sf:Event_Id__c></sObject>"
        "</Notification></notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


def test_quarantine_replay_after_fixing_the_event_id_field_queues_and_performs(
    runner: CliRunner,
    live_app: Flask,
    sandbox: SandboxServer,
    worker_store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    note, event = random_event_id("04l"), random_event_id()
    body = custom_object_message(note, random_event_id("a0D"), event)
    posted = live_app.test_client().post(f"/salesforce/outbound/cancel?token={TOKEN}", data=body)
    assert posted.status_code == 200  # acknowledged; quarantined for its a0D… Id
    wait_for(lambda: any(e["notification_id"] == note for e in worker_store.quarantine.list(1000)))

    unchanged = runner.invoke(main, ["replay", "--quarantined", "--json"])
    [still] = [r for r in json.loads(unchanged.output) if r["target"] == note]
    assert still["outcome"] == "skipped"
    assert "key prefix 'a0D'" in still["detail"]

    monkeypatch.setenv("SALESFORCE_EVENT_ID_FIELD", "Event_Id__c")  # the operator's fix
    dry = runner.invoke(main, ["replay", "--quarantined", "--dry-run", "--json"])
    assert {"target": note, "outcome": "would_queue"}.items() <= next(
        r for r in json.loads(dry.output) if r["target"] == note
    ).items()
    replayed = runner.invoke(main, ["replay", "--quarantined", "--json"])
    [done] = [r for r in json.loads(replayed.output) if r["target"] == note]
    assert done["outcome"] == "queued"
    assert done["detail"] == f"crm-cancel {event}"
    wait_for(lambda: state_of(worker_store, event) == State.SUCCEEDED)
    assert len(sandbox.calls(event, action="cancel")) == 1
    assert all(e["notification_id"] != note for e in worker_store.quarantine.list(1000))
    again = runner.invoke(main, ["replay", "--quarantined", "--json"])
    assert all(r["target"] != note for r in json.loads(again.output))


def test_bulk_replay_of_500_dead_letters_shows_progress_and_a_summary(
    runner: CliRunner, sandbox: SandboxServer, worker_store: Store
) -> None:
    events = [random_event_id() for _ in range(500)]
    operations = [Operation(Action.NOSHOW, event, random_event_id("04l")) for event in events]
    worker_store.records.mark_queued(operations)
    for operation in operations:  # each failed for good, as a worker records it
        claim = worker_store.claims.claim(operation, "earlier-worker", 60)
        assert worker_store.claims.settle(operation, claim, State.FAILED, error="HTTP 503, gave up")

    failed = len(worker_store.dead_letters.since(time.time() - 300, Action.NOSHOW))
    assert failed >= 500  # ours, and any other test's no-show dead letters
    replayed = runner.invoke(main, ["replay", "--failed", "--action", "noshow", "--since", "5m"])
    assert replayed.exit_code == 0
    assert "replayed 500…" in replayed.output  # progress, one line per hundred when piped
    assert f"{failed} target(s): {failed} queued" in replayed.output
    wait_for(
        lambda: all(state_of(worker_store, e, Action.NOSHOW) == State.SUCCEEDED for e in events),
        timeout=60,
    )
    noshows = [c for c in sandbox.calls(action="noshow") if c["crmEventId"] in set(events)]
    print(f"\n[replay] 500 dead letters replayed: {len(noshows)} no-show calls")
    assert len(noshows) == 500


def test_replay_needs_exactly_one_kind_of_target(runner: CliRunner) -> None:
    assert runner.invoke(main, ["replay"]).exit_code == 2
    both = runner.invoke(main, ["replay", "--failed", "--quarantined"])
    assert both.exit_code == 2
    assert "or --failed, or --quarantined" in both.output
    assert runner.invoke(main, ["replay", "--failed", "--since", "yesterday"]).exit_code == 2


def test_replay_of_an_unknown_key_exits_1(runner: CliRunner) -> None:
    result = runner.invoke(main, ["replay", random_event_id()])
    assert result.exit_code == 1
    assert "not found" in result.output
