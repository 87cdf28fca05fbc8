"""A store on its own database of the session's Redis, emptied for each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.conftest import db_url, random_event_id
from worker.dev.redis_server import RedisServer
from worker.domain.operations import Action, Operation
from worker.store import Retention, Store
from worker.store.connection import redis_client

STORE_DB = 2
RETENTION = Retention(
    action_seconds=30 * 86400,
    get_seconds=72 * 3600,
    notification_seconds=72 * 3600,
    quarantine_seconds=7 * 86400,
)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_client(db_url(redis_server, STORE_DB))
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def store(client: redis.Redis) -> Store:
    return Store(client, RETENTION)


def cancel() -> Operation:
    return Operation(Action.CANCEL, random_event_id(), random_event_id("04l"))
