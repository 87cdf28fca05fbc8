"""The quarantine: listed a page at a time in Redis, bounded in time and in number."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import random_event_id
from tests.worker.store.conftest import RETENTION
from worker.domain.notifications import Rejection
from worker.domain.operations import Action
from worker.store import keys
from worker.store.quarantine import MAX_ENTRIES, Quarantine

ORG = "00D5g000004XyZqEAK"


def rejections(count: int) -> list[Rejection]:
    return [
        Rejection(random_event_id("04l"), "00U-not-an-id", "not a Salesforce ID")
        for _ in range(count)
    ]


def test_listing_pages_newest_first_with_a_total(client: redis.Redis) -> None:
    quarantine = Quarantine(client, RETENTION.quarantine_seconds)
    now = time.time()
    messages = [rejections(3) for _ in range(3)]
    for age, message in zip((30, 20, 10), messages, strict=True):
        quarantine.add(Action.CANCEL, ORG, message, at=now - age)
    listed = [entry["notification_id"] for entry in quarantine.list(4)]
    listed += [entry["notification_id"] for entry in quarantine.list(4, offset=4)]
    listed += [entry["notification_id"] for entry in quarantine.list(4, offset=8)]
    assert len(listed) == 9
    newest_first = [{r.notification_id for r in message} for message in reversed(messages)]
    assert [set(listed[0:3]), set(listed[3:6]), set(listed[6:9])] == newest_first
    assert quarantine.count() == 9


def test_entries_past_their_retention_are_neither_listed_nor_counted_and_go_on_next_write(
    client: redis.Redis,
) -> None:
    [old] = rejections(1)
    Quarantine(client, retention_seconds=3600).add(Action.CANCEL, ORG, [old], at=time.time() - 120)
    later = Quarantine(client, retention_seconds=60)  # as seen once its retention ran out
    assert client.zcard(keys.QUARANTINE) == 1  # still stored: nothing was written since
    assert (later.list(), later.count(), list(later.walk())) == ([], 0, [])
    later.add(Action.CANCEL, ORG, rejections(1), at=time.time())
    assert client.zcard(keys.QUARANTINE) == 1
    assert later.list()[0]["notification_id"] != old.notification_id


def test_a_flood_keeps_the_newest_entries_and_warns(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    quarantine = Quarantine(client, RETENTION.quarantine_seconds, max_entries=5)
    now = time.time()
    first, second, third = rejections(2), rejections(2), rejections(3)
    quarantine.add(Action.CANCEL, ORG, first, at=now - 3)
    quarantine.add(Action.CANCEL, ORG, second, at=now - 2)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="worker.store.quarantine"):
        quarantine.add(Action.NOSHOW, ORG, third, at=now - 1)
    kept = {entry["notification_id"] for entry in quarantine.list(10)}
    assert kept == {r.notification_id for r in second + third}
    assert quarantine.count() == 5
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert "dropped the 2 oldest" in warning.getMessage()
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    assert f"at most {MAX_ENTRIES:,} of them".replace(",", " ") in readme  # as documented
