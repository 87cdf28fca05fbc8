"""The service's Redis clients follow a Sentinel failover (issue 15, "High availability").

Real processes: one master, one replica, three sentinels. The store's client
(`store_client`) and the Celery app's broker connection (kombu's `sentinel://` transport)
are built from the environment the deployment gives, the master is SIGKILLed, and the same
client objects must reach the replica the sentinels promote. Each failover test prints its
figures.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.ha.conftest import PROTECTED_DB
from tests.ha.sentinel import Address, SentinelCluster
from worker.settings import Settings
from worker.store.connection import store_client
from worker.tasks.app import QUEUE, make_celery

Report = Callable[[str], None]
SettingsFor = Callable[[SentinelCluster], Settings]
KEYS = 200
MAX_ATTEMPTS = 100  # 0.1 s apart; an attempt on loopback fails in milliseconds
NOOP_TASK = "crmhook.noop-for-test"  # never consumed: the message stays in the queue


def other_node(cluster: SentinelCluster, address: Address) -> Address:
    return next(("127.0.0.1", port) for port in cluster.nodes if port != address[1])


def write_until_it_works(client: redis.Redis, key: str) -> tuple[int, Counter[str]]:
    """SET `key` through `client` until a SET succeeds; the attempts, and the errors seen
    before (by type: refused connections to the dead master, then `MasterNotFoundError`
    while the sentinels hold it down and have not promoted the replica yet)."""
    errors: Counter[str] = Counter()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            client.set(key, "written")
            return attempt, errors
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            errors[type(exc).__name__] += 1
            time.sleep(0.1)
    pytest.fail(f"no write succeeded in {MAX_ATTEMPTS} attempts: {dict(errors)}")


@pytest.mark.reliability
def test_store_client_follows_failover_and_ignores_the_restarted_master(
    cluster: SentinelCluster, settings_for: SettingsFor, report: Report
) -> None:
    client = store_client(settings_for(cluster))
    old = cluster.master_address()
    pipe = client.pipeline(transaction=False)  # one connection: WAIT covers these writes
    for i in range(KEYS):
        pipe.set(f"ha:before:{i}", i)
    pipe.wait(1, 2000)
    *_, replicas_acked = pipe.execute()
    assert replicas_acked == 1, "the replica did not confirm the writes"
    assert cluster.client(old).get(f"ha:before:{KEYS - 1}") == str(KEYS - 1)

    killed_at = cluster.kill_master()
    attempts, errors = write_until_it_works(client, "ha:after")
    writes_again = time.monotonic() - killed_at
    failover = cluster.wait_for_failover(old)
    new = cluster.master_address()
    assert new == other_node(cluster, old)
    on_new = cluster.client(new)
    assert on_new.get("ha:after") == "written"
    kept = on_new.mget([f"ha:before:{i}" for i in range(KEYS)])
    assert kept == [str(i) for i in range(KEYS)], "writes confirmed by WAIT 1 were lost"

    # The old master comes back with stale data, believing itself master: the client keeps
    # writing to the sentinels' master, and the old node ends up a copy of it.
    cluster.start_again(old)
    assert cluster.info(old)["role"] == "master"
    client.set("ha:while-stale", "written")
    assert on_new.get("ha:while-stale") == "written"
    assert cluster.client(old).get("ha:while-stale") is None
    demoted = cluster.wait_until_demoted(old)
    assert cluster.client(old).get("ha:while-stale") == "written"
    assert client.get("ha:after") == "written"
    report(
        f"store client: writes work again {writes_again:.2f} s after SIGKILL of the master "
        f"(attempt {attempts}, errors before: {dict(errors) or 'none'}); sentinels all named the "
        f"new master {failover:.2f} s after it; {KEYS}/{KEYS} WAIT-confirmed keys kept; the "
        f"restarted old master was a replica again {demoted:.2f} s after it started"
    )


def test_store_client_uses_the_master_password_and_db_from_redis_url(
    protected_cluster: SentinelCluster, settings_for: SettingsFor
) -> None:
    cluster = protected_cluster
    settings = settings_for(cluster)
    assert settings.redis_url == f"redis://:{cluster.master_password}@ignored-host:1/2"
    assert settings.redis_sentinel_password is not None
    client = store_client(settings)
    client.set("ha:db", "two")
    master = cluster.master_address()
    assert cluster.client(master, db=PROTECTED_DB).get("ha:db") == "two"
    assert cluster.client(master, db=0).get("ha:db") is None
    once = Retry(NoBackoff(), 0)  # redis-py would retry a refused AUTH ten times
    with pytest.raises(redis.AuthenticationError):  # the nodes do require the password
        redis.Redis(port=master[1], retry=once).get("ha:db")
    with pytest.raises(redis.AuthenticationError):  # and so do the sentinels
        redis.Redis(port=cluster.sentinels[0].port, retry=once).ping()


def queued_task_ids(client: redis.Redis) -> list[str]:
    """The ids of the task messages in the queue's list, oldest first."""
    return [json.loads(raw)["headers"]["id"] for raw in reversed(client.lrange(QUEUE, 0, -1))]


@pytest.mark.reliability
def test_celery_publishes_to_the_new_master_after_failover(
    protected_cluster: SentinelCluster, settings_for: SettingsFor, report: Report
) -> None:
    cluster = protected_cluster
    settings = settings_for(cluster)
    assert settings.broker_url.startswith("sentinel://:")  # the master password rides along
    app = make_celery(settings)
    try:
        first = app.send_task(NOOP_TASK, args=[1]).id
        old = cluster.master_address()
        replica = cluster.client(other_node(cluster, old))
        assert queued_task_ids(cluster.client(old)) == [first]
        deadline = time.monotonic() + 5
        while queued_task_ids(replica) != [first]:
            assert time.monotonic() < deadline, "the replica never got the first message"
            time.sleep(0.02)

        cluster.kill_master()
        failover = cluster.wait_for_failover(old)
        began = time.monotonic()
        second = app.send_task(NOOP_TASK, args=[2]).id
        publish = time.monotonic() - began
        new = cluster.master_address()
        assert new != old
        assert queued_task_ids(cluster.client(new)) == [first, second]
        assert cluster.client(new).llen(QUEUE) == 2
    finally:
        app.close()
    report(
        f"celery: failover in {failover:.2f} s; the same app's next publish took "
        f"{publish:.2f} s and landed on the new master (db {PROTECTED_DB}, with the master "
        f"and sentinel passwords); queue holds both messages"
    )
