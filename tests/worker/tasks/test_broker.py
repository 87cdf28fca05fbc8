"""The worker's Redis transports: a channel closed after its connection was lost leaves its
unacknowledged messages to the visibility-timeout sweep instead of stopping the worker."""

from __future__ import annotations

import contextlib

import pytest
import redis
from kombu import Connection

from worker.dev.redis_server import RedisServer
from worker.tasks.broker import transport_for


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
    transport = transport_for(own_redis.url)
    assert transport == "worker.tasks.broker:Transport"
    deliver_and_lose_the_client(own_redis.url, transport)
    client = redis.Redis(port=own_redis.port, decode_responses=True)
    assert client.hlen("unacked") == 1  # kept: the sweep puts it back in the queue
    client.close()


def test_kombus_own_transport_stops_the_worker_there(own_redis: RedisServer) -> None:
    """The bug worked around (kombu#582, #970). When this test fails, kombu has fixed it,
    and `worker.tasks.broker` can go."""
    with pytest.raises(AttributeError, match="hostname"):
        deliver_and_lose_the_client(own_redis.url, "redis")


def test_other_brokers_keep_kombus_transports() -> None:
    assert transport_for("sentinel://h:26379/0;sentinel://h2:26379/0") == (
        "worker.tasks.broker:SentinelTransport"
    )
    assert transport_for("amqp://guest@h//") is None
    assert transport_for("rediss://h:6380/0") is None
