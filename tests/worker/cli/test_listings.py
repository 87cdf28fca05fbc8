"""`crmhook failed`, `quarantine` and the bulk replays, page by page, on a real Redis whose
broker no worker consumes (nothing is performed; what is queued stays to be counted)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from tests.conftest import random_event_id
from worker.cli import main
from worker.domain.notifications import Rejection
from worker.domain.operations import Action, Operation, State
from worker.settings import Settings
from worker.store import Store, keys
from worker.tasks.app import QUEUE
from worker.tasks.runtime import retention


@pytest.fixture
def runner(settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("SALESFORCE_ID_PREFIXES", "00U")
    monkeypatch.delenv("SALESFORCE_EVENT_ID_FIELD", raising=False)
    return CliRunner()


@pytest.fixture
def store(settings: Settings, idle_redis: redis.Redis) -> Store:
    return Store(idle_redis, retention(settings))


def dead_letters(store: Store, count: int) -> list[str]:
    keys_ = []
    for _ in range(count):
        operation = Operation(Action.CANCEL, random_event_id(), random_event_id("04l"))
        store.records.mark_queued([operation])
        claim = store.claims.claim(operation, "worker-1", 60)
        store.claims.settle(operation, claim, State.FAILED, error="No meeting linked")
        keys_.append(keys.operation(operation))
    return keys_


def test_failed_shows_a_page_the_total_and_where_the_next_page_starts(
    runner: CliRunner, store: Store
) -> None:
    dead = dead_letters(store, 5)
    table = runner.invoke(main, ["failed", "--limit", "2", "--offset", "2"], terminal_width=250)
    assert table.exit_code == 0, table.output
    assert "5 dead letter(s), 3-4 shown; next page: --offset 4" in table.output
    page = json.loads(
        runner.invoke(main, ["failed", "--json", "--limit", "2", "--offset", "4"]).output
    )
    assert [record["key"] for record in page] == [dead[0]]
    assert runner.invoke(main, ["failed", "--offset", "-1"]).exit_code == 2


def test_quarantine_shows_a_page_and_the_total(runner: CliRunner, store: Store) -> None:
    rejected = [Rejection(random_event_id("04l"), "bad", "not a Salesforce ID") for _ in range(3)]
    store.quarantine.add(Action.CANCEL, "00D5g000004XyZqEAK", rejected, at=time.time())
    table = runner.invoke(main, ["quarantine", "--limit", "2"], terminal_width=250)
    assert "3 quarantined notification(s), 1-2 shown; next page: --offset 2" in table.output
    rest = json.loads(runner.invoke(main, ["quarantine", "--json", "--offset", "2"]).output)
    assert len(rest) == 1
    assert "entry" not in rest[0]


def test_what_senders_wrote_is_shown_as_text_never_as_markup(
    runner: CliRunner, store: Store
) -> None:
    hostile = Rejection("[/bold]", "[link=https://evil.example]00U[/link]", "not a Salesforce ID")
    store.quarantine.add(Action.CANCEL, "00D5g000004XyZqEAK", [hostile], at=time.time())
    shown = runner.invoke(main, ["quarantine"], terminal_width=250)
    assert shown.exit_code == 0, shown.output
    assert "[/bold]" in shown.output
    assert "[link=https://evil.example]" in shown.output


def test_replaying_more_dead_letters_than_a_page_queues_each_once(
    runner: CliRunner, store: Store, idle_redis: redis.Redis
) -> None:
    dead_letters(store, 130)
    started = time.perf_counter()
    replayed = runner.invoke(main, ["replay", "--failed"])
    elapsed = time.perf_counter() - started
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 100…" in replayed.output
    assert "130 target(s): 130 queued" in replayed.output
    assert idle_redis.llen(QUEUE) == 130
    assert store.dead_letters.count() == 0
    print(f"\n[cli] replay --failed of 130 dead letters in pages of 100: {elapsed:.2f} s")


def test_replaying_the_quarantine_past_one_page_keeps_those_still_invalid(
    runner: CliRunner, store: Store
) -> None:
    values = [random_event_id() if i % 2 else "00U-bad" for i in range(150)]
    rejected = [Rejection(random_event_id("04l"), value, "refused") for value in values]
    store.quarantine.add(Action.CANCEL, "00D5g000004XyZqEAK", rejected, at=time.time())
    replayed = runner.invoke(main, ["replay", "--quarantined", "--json"])
    outcomes = [result["outcome"] for result in json.loads(replayed.output)]
    assert (outcomes.count("queued"), outcomes.count("skipped")) == (75, 75)
    assert store.quarantine.count() == 75
