"""A claim is durable before its irreversible call leaves: on a replica when there is one."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from tests.conftest import (
    TOKEN,
    SandboxServer,
    make_settings,
    notification_id,
    outbound_message,
    random_event_id,
    wait_for,
)
from tests.worker.store.conftest import RETENTION, cancel
from webhooks import create_app
from worker.dev.redis_server import RedisServer
from worker.errors import NotDurable
from worker.store import Store, keys
from worker.store.connection import redis_client
from worker.store.durability import durability_warnings
from worker.tasks.app import QUEUE


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[redis.Redis, RedisServer]]:
    """A private master (the store) and its replica, linked."""
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    # The replica syncs at once, and neither waits for the other to stop.
    quick = ("--repl-diskless-sync-delay", "0", "--shutdown-timeout", "0")
    with RedisServer(directory=tmp_path / "master", extra_args=quick) as master:
        replica_of = (*quick, "--replicaof", "127.0.0.1", str(master.port))
        with RedisServer(directory=tmp_path / "replica", extra_args=replica_of) as replica:
            client = redis_client(master.url)
            follower = redis_client(replica.url)
            wait_for(lambda: synced(follower), timeout=10)
            follower.close()
            yield client, replica
            client.close()


def synced(replica: redis.Redis) -> bool:
    """Linked, and done rewriting its AOF after the first sync (a replica asked to stop
    during that rewrite takes seconds to)."""
    linked = replica.info("replication")["master_link_status"] == "up"
    return linked and replica.info("persistence")["aof_rewrite_in_progress"] == 0


def test_the_send_marker_waits_for_the_replica(
    replicated: tuple[redis.Redis, RedisServer],
) -> None:
    client, replica = replicated
    store = Store(client, RETENTION)
    operation = cancel()
    claim = store.claims.claim(operation, "e1", lease_seconds=60)
    assert store.claims.mark_sending(operation, claim, 60)
    on_replica = redis.Redis(port=replica.port, decode_responses=True)
    # Confirmed before mark_sending returned: the replica has the claim and the marker.
    assert on_replica.hget(keys.operation(operation), "owner") == "e1"
    assert on_replica.hget(keys.operation(operation), "call_started_at") is not None
    on_replica.close()


def test_no_call_leaves_when_no_replica_confirms(
    replicated: tuple[redis.Redis, RedisServer],
) -> None:
    client, replica = replicated
    store = Store(client, RETENTION)
    store.durability.replicas()  # learnt while the replica answers
    operation = cancel()
    claim = store.claims.claim(operation, "e1", lease_seconds=60)
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)  # connected, but confirming nothing
    try:
        with pytest.raises(NotDurable, match="no replica"):
            store.claims.mark_sending(operation, claim, 60)
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert store.claims.release(operation, claim)  # nothing was sent: handed back


def test_readyz_warns_when_a_crash_could_forget_a_claim_or_an_acknowledged_message(
    replicated: tuple[redis.Redis, RedisServer],
) -> None:
    client, _ = replicated
    [split] = durability_warnings(client)  # a master cut off from its replicas writes alone
    assert "set min-replicas-to-write 1" in split
    client.config_set("min-replicas-to-write", 1)
    assert durability_warnings(client) == []  # the replica confirms messages and claims
    client.config_set("appendfsync", "everysec")
    try:
        [warning] = durability_warnings(client)  # a master restarting before a failover
    finally:
        client.config_set("appendfsync", "always")
        client.config_set("min-replicas-to-write", 0)
    assert "acknowledged Salesforce messages" in warning
    assert "no replica" not in warning
    with RedisServer() as alone:
        lone = redis_client(alone.url)
        assert durability_warnings(lone) == []  # appendfsync always, as `crmhook dev` runs it
        lone.config_set("appendfsync", "everysec")
        [warning] = durability_warnings(lone)
        assert "appendfsync=everysec and no replica" in warning
        assert "set appendfsync always" in warning
        lone.close()


def master_url(client: redis.Redis) -> str:
    return f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"


def post_cancel(app: Flask, event_id: str) -> Any:
    return app.test_client().post(
        f"/salesforce/outbound/cancel?token={TOKEN}",
        data=outbound_message([(notification_id(), event_id)]),
        headers={"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'},
    )


def test_the_edge_acks_a_message_only_once_a_replica_has_its_record(
    replicated: tuple[redis.Redis, RedisServer], sandbox_server: SandboxServer
) -> None:
    client, replica = replicated
    app = create_app(make_settings(master_url(client), sandbox_server.url))
    answer = post_cancel(app, random_event_id())
    assert answer.status_code == 200
    on_replica = redis.Redis(port=replica.port, decode_responses=True)
    # Read at once after the Ack: WAIT made the master wait for the replica before it.
    [ingest_id] = on_replica.zrange(keys.INGESTS, 0, -1)
    assert on_replica.exists(keys.ingest(ingest_id))
    on_replica.close()


def test_the_edge_answers_503_when_no_replica_confirms_the_record(
    replicated: tuple[redis.Redis, RedisServer], sandbox_server: SandboxServer
) -> None:
    client, replica = replicated
    app = create_app(make_settings(master_url(client), sandbox_server.url))
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)  # connected, but confirming nothing
    try:
        answer = post_cancel(app, random_event_id())
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert answer.status_code == 503  # Salesforce sends it again
    assert client.zcard(keys.INGESTS) == 0  # taken back
    assert client.llen(QUEUE) == 0  # and never published
