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
        with pytest.raises(NotDurable, match="0 of the 1 replicas"):
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


def wait_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


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
    waits = wait_calls(client)
    answer = post_cancel(app, random_event_id())
    assert answer.status_code == 200
    assert wait_calls(client) == waits + 1  # the Ack waited for the replica
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


def test_every_online_replica_must_confirm(
    replicated: tuple[redis.Redis, RedisServer], tmp_path: Path
) -> None:
    """Sentinel may promote any replica, not the quickest to answer: one that is behind
    makes the write not durable."""
    client, _ = replicated
    port = client.connection_pool.connection_kwargs["port"]
    (tmp_path / "second").mkdir()
    quick = ("--repl-diskless-sync-delay", "0", "--shutdown-timeout", "0")
    with RedisServer(
        directory=tmp_path / "second", extra_args=(*quick, "--replicaof", "127.0.0.1", str(port))
    ) as second:
        wait_for(lambda: synced(redis_client(second.url)), timeout=10)
        store = Store(client, RETENTION)
        wait_for(lambda: store.durability.replicas() == 2, timeout=5)
        operation = cancel()
        claim = store.claims.claim(operation, "e1", lease_seconds=60)
        assert second.process is not None
        os.kill(second.process.pid, signal.SIGSTOP)  # the other replica still confirms
        try:
            with pytest.raises(NotDurable, match="1 of the 2 replicas"):
                store.claims.mark_sending(operation, claim, 60)
        finally:
            os.kill(second.process.pid, signal.SIGCONT)


def test_a_write_refused_for_want_of_replicas_or_a_refused_wait_is_not_durable(
    replicated: tuple[redis.Redis, RedisServer], sandbox_server: SandboxServer
) -> None:
    client, _ = replicated
    store = Store(client, RETENTION)
    operation = cancel()
    claim = store.claims.claim(operation, "e1", lease_seconds=60)
    client.config_set("min-replicas-to-write", 2)  # one replica: every write is refused
    try:
        with pytest.raises(NotDurable, match="NOREPLICAS"):
            store.claims.mark_sending(operation, claim, 60)
    finally:
        client.config_set("min-replicas-to-write", 0)
    # A user that may not WAIT (an ACL; some managed services forbid it): no call leaves,
    # no message is acknowledged, and /readyz says the Redis is not ready.
    client.acl_setuser(
        "nowait",
        enabled=True,
        passwords=["+nowait-pass"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-wait"],
    )
    port = client.connection_pool.connection_kwargs["port"]
    url = f"redis://nowait:nowait-pass@127.0.0.1:{port}/0"
    limited = Store(redis_client(url), RETENTION)
    with pytest.raises(NotDurable, match="refused WAIT"):
        limited.claims.mark_sending(operation, claim, 60)
    app = create_app(make_settings(url, sandbox_server.url))
    assert post_cancel(app, random_event_id()).status_code == 503
    assert client.zcard(keys.INGESTS) == 0  # taken back
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503
    assert ready.json["checks"]["redis"].startswith("refuses WAIT")


def test_a_redis_that_refuses_config_gets_one_warning_not_a_failure() -> None:
    """Managed Redis often refuses CONFIG: /readyz says what to check instead of failing."""
    with RedisServer() as alone:
        admin = redis_client(alone.url)
        admin.acl_setuser(
            "noconfig",
            enabled=True,
            passwords=["+noconfig-pass"],
            keys=["*"],
            commands=["+@all", "-config"],
        )
        limited = redis_client(f"redis://noconfig:noconfig-pass@127.0.0.1:{alone.port}/0")
        [warning] = durability_warnings(limited)
        assert warning.startswith("cannot read the Redis configuration")
        assert durability_warnings(admin) == []  # the same Redis, read whole
        limited.close()
        admin.close()
