"""Operators' listings and bulk replays a page at a time, on a real Redis and a broker no
worker consumes (what the replays publish stays there to be read)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import redis

from tests.conftest import random_event_id
from worker.domain.notifications import Rejection
from worker.domain.operations import Action, Operation, State
from worker.operator import Filters, Operator, Outcome, Result
from worker.settings import Settings
from worker.store import Store, keys
from worker.tasks.app import QUEUE, make_celery
from worker.tasks.publish import FAN_OUT_TASK, PERFORM_TASK
from worker.tasks.runtime import retention

ORG = "00D5g000004XyZqEAK"


@pytest.fixture
def store(settings: Settings, idle_redis: redis.Redis) -> Store:
    return Store(idle_redis, retention(settings))


@pytest.fixture
def operator(settings: Settings, store: Store) -> Operator:
    return Operator(settings, store, make_celery(settings), "cli:tester")


def fail(store: Store, action: Action = Action.CANCEL) -> str:
    """One operation failed for good, as a worker records it; its key."""
    operation = Operation(action, random_event_id(), random_event_id("04l"))
    store.records.mark_queued([operation])
    claim = store.claims.claim(operation, "worker-1", 60)
    assert store.claims.settle(operation, claim, State.FAILED, error="No meeting linked")
    return keys.operation(operation)


def tie(client: redis.Redis, dead: list[str], score: float) -> None:
    """Give `dead` one failure time, in every index that lists them."""
    for key in dead:
        action = keys.action_of(key)
        assert action is not None
        for index in (keys.DEAD_LETTERS, keys.dead_letters_of(action)):
            client.zadd(index, {key: score})


def published(client: redis.Redis, task: str) -> list[dict[str, Any]]:
    """The first argument of every `task` message waiting on the broker's queue."""
    found = []
    for raw in client.lrange(QUEUE, 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == task:
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append(args[0])
    return found


def test_the_failed_listing_forgets_expired_records_and_pages_without_gaps(
    operator: Operator, store: Store, idle_redis: redis.Redis
) -> None:
    dead = [fail(store) for _ in range(12)]
    expired = {dead[1], dead[5], dead[6], dead[10]}
    idle_redis.delete(*expired)  # their retention ran out; the index still names them
    shown: list[str] = []
    offset = 0
    while True:
        page, total = operator.failed(offset=offset, limit=3)
        shown += [record["key"] for record in page]
        offset += 3
        if offset >= total:
            break
    assert shown == [key for key in reversed(dead) if key not in expired]
    assert total == 8
    assert store.dead_letters.count(action=Action.CANCEL) == 8


def test_replaying_the_failed_goes_page_by_page_and_replays_each_once(
    operator: Operator, store: Store, idle_redis: redis.Redis
) -> None:
    """More dead letters than a page, a tie longer than a page, some left in the index
    (running now, so skipped) and some expired, and a new dead letter during the replay."""
    dead = [fail(store) for _ in range(23)]
    tie(idle_redis, dead[4:16], time.time() - 5)
    running = dead[2:4] + dead[10:11]
    for key in running:
        idle_redis.hset(key, mapping={"state": "running", "lease_until": 2**50})
    expired = [dead[0], dead[12]]
    idle_redis.delete(*expired)
    arrived: list[str] = []

    def meanwhile(_result: Result) -> None:
        if not arrived:  # a replayed one failing again would land here too: newer
            arrived.append(fail(store))

    results = operator.replay_failed(progress=meanwhile, page=5)

    targets = [result.target for result in results]
    assert sorted(targets) == sorted(set(dead) - set(expired))  # each once, none skipped
    skipped = {r.target for r in results if r.outcome is Outcome.SKIPPED}
    assert skipped == set(running)
    queued = [r.target for r in results if r.outcome is Outcome.QUEUED]
    assert len(queued) == 23 - len(expired) - len(running)
    sent = [keys.operation(Operation.from_message(m)) for m in published(idle_redis, PERFORM_TASK)]
    assert sorted(sent) == sorted(queued)
    left = {key for key, _ in store.dead_letters.since()}
    assert left == set(running) | set(arrived)  # the replayed and the expired are out
    assert store.dead_letters.count(action=Action.CANCEL) == len(left)


def test_replaying_the_failed_of_one_action_leaves_the_others(
    operator: Operator, store: Store, idle_redis: redis.Redis
) -> None:
    cancels = [fail(store, Action.CANCEL) for _ in range(4)]
    noshows = [fail(store, Action.NOSHOW) for _ in range(7)]
    results = operator.replay_failed(Filters(action=Action.NOSHOW), page=3)
    assert sorted(r.target for r in results) == sorted(noshows)
    assert {key for key, _ in store.dead_letters.since()} == set(cancels)


def test_a_dry_run_of_the_failed_walks_every_page_and_changes_nothing(
    operator: Operator, store: Store, idle_redis: redis.Redis
) -> None:
    dead = [fail(store) for _ in range(11)]
    tie(idle_redis, dead, time.time())
    idle_redis.delete(dead[3])  # expired: a dry run leaves the index as it is
    before = store.dead_letters.since()
    results = operator.replay_failed(dry_run=True, page=4)
    assert sorted(r.target for r in results) == sorted(set(dead) - {dead[3]})
    assert {r.outcome for r in results} == {Outcome.WOULD_QUEUE}
    assert store.dead_letters.since() == before
    assert idle_redis.llen(QUEUE) == 0


def quarantine(store: Store, values: list[str], *, at: float) -> list[Rejection]:
    """One message's rejections (they share `at`): valid IDs refused under yesterday's
    settings, which pass today, or IDs that can never pass."""
    rejected = [Rejection(random_event_id("04l"), value, "refused") for value in values]
    store.quarantine.add(Action.CANCEL, ORG, rejected, at=at)
    return rejected


def test_replaying_the_quarantine_goes_page_by_page_releasing_those_that_pass(
    operator: Operator, store: Store, idle_redis: redis.Redis
) -> None:
    now = time.time()
    messages = [
        quarantine(store, [random_event_id() if i % 3 else "00U-bad" for i in range(9)], at=now - m)
        for m in range(1, 7)
    ]
    messages.append(quarantine(store, [random_event_id() for _ in range(30)], at=now - 30))
    original = [r for message in messages for r in message]
    passing = {r.notification_id for r in original if r.value != "00U-bad"}
    arrived: list[Rejection] = []

    def meanwhile(_result: Result) -> None:
        if not arrived:  # a new message of rejections during the replay: newer, not judged
            arrived.extend(quarantine(store, [random_event_id()], at=time.time()))

    results = operator.replay_quarantined(progress=meanwhile, page=4)

    targets = [result.target for result in results]
    assert sorted(targets) == sorted(r.notification_id for r in original)
    assert {r.target for r in results if r.outcome is Outcome.QUEUED} == passing
    assert all(r.outcome is Outcome.SKIPPED for r in results if r.target not in passing)
    submitted = [
        operation["source_id"]
        for batch in published(idle_redis, FAN_OUT_TASK)
        for operation in batch["operations"]
    ]
    assert sorted(submitted) == sorted(passing)  # each once
    left = {entry["notification_id"] for entry in store.quarantine.list(1000)}
    assert left == {r.notification_id for r in original if r.value == "00U-bad"} | {
        arrived[0].notification_id
    }
    audited, _ = operator.audit_log(limit=1000)
    assert len([e for e in audited if e["what"] == "quarantine-replay"]) == len(passing)
    print(f"\n[quarantine replay] {len(original)} entries, pages of 4: {len(passing)} released")
