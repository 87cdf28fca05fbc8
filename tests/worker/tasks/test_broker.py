"""The worker's Redis transports: a channel closed after its connection was lost leaves its
unacknowledged messages to the visibility-timeout sweep instead of stopping the worker."""

from __future__ import annotations

import contextlib

import pytest
import redis
from kombu import Connection

from worker.dev.redis_server import RedisServer
from worker.tasks import broker


def deliver_and_lose_the_client(url: str, transport: str) -> None:
    """Deliver one message without acknowledging it, drop the transport's client as kombu
    does when the connection is lost, then close the channel as Celery does next."""
    connection = Connection(url, transport=transport)
    queue = connection.SimpleQueue("crmhook-broker-test")
    queue.put({"n": 1})
    message = queue.get(timeout=5)  # delivered, not acknowledged
    channel = message.channel
    channel.connection.client = None
    try:
        channel.close()
    finally:
        with contextlib.suppress(Exception):
            connection.release()


def test_closing_after_the_client_is_gone_leaves_the_message_for_the_sweep(
    own_redis: RedisServer,
) -> None:
    broker.install()
    deliver_and_lose_the_client(own_redis.url, "redis")  # the scheme names ours now
    client = redis.Redis(port=own_redis.port, decode_responses=True)
    assert client.hlen("unacked") == 1  # kept: the sweep puts it back in the queue
    client.close()


def test_kombus_own_transport_stops_the_worker_there(own_redis: RedisServer) -> None:
    """The bug worked around (kombu#582, #970). When this test fails, kombu has fixed it,
    and `worker.tasks.broker` can go."""
    with pytest.raises(AttributeError, match="hostname"):
        deliver_and_lose_the_client(own_redis.url, "kombu.transport.redis:Transport")


def test_every_connection_and_every_switch_to_the_next_sentinel_uses_ours() -> None:
    """kombu switches to the next URL of a fail-over list on every failed connection
    attempt, and takes the transport from that URL's scheme again: a failover must not
    leave the worker on kombu's own class."""
    broker.install()
    sentinels = "sentinel://127.0.0.1:1/0;sentinel://127.0.0.1:2/0"
    connection = Connection(sentinels, transport_options={"master_name": "crmhook"})
    assert type(connection.transport) is broker.SentinelTransport
    connection.maybe_switch_next()
    assert connection.port == 2  # the second sentinel
    assert type(connection.transport) is broker.SentinelTransport
    for url in ("redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0"):
        assert type(Connection(url).transport) is broker.Transport
    assert "redis" not in type(Connection("amqp://guest@127.0.0.1//").transport).__module__
