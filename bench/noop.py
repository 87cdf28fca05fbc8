"""The reference for Redis round trips: a bare Celery task that does nothing, run by the
Procfile's worker line with this app in place of ours (`--app bench.noop`), published one
by one as a hand-rolled producer would. Everything else is Celery's default."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from worker.store import keys

APP = "bench.noop"
TASK = "bench.noop"

app = Celery("bench-noop", broker=os.environ.get("REDIS_URL"))


@app.task(name=TASK)
def noop() -> None:
    """Nothing: what is left is Celery's own traffic."""


def run(broker_url: str, count: int, direct_url: str) -> None:
    """Publish `count` no-op tasks through `broker_url` and wait until they all ran (watching
    through `direct_url`, so the watching is not counted)."""
    sender = Celery("bench-noop-sender", broker=broker_url)
    with sender.producer_or_acquire() as producer:
        for _ in range(count):
            sender.send_task(TASK, producer=producer)
    wait_drained(direct_url)


def publish_at_once(broker_url: str, count: int) -> None:
    """Queue `count` no-op tasks in pipelined batches: the quickest way to give a worker a
    backlog, so that draining it measures the worker alone."""
    sender = Celery("bench-noop-sender", broker=broker_url)
    with sender.producer_or_acquire() as producer, producer.batch(max_size=500):
        for _ in range(count):
            sender.send_task(TASK, producer=producer)


def wait_drained(url: str, timeout: float = 120.0, interval: float = 0.5) -> None:
    """Until nothing is queued, delivered and unacknowledged, or unfinished at the edge;
    polled twice a second by default, so the polling's own commands stay out of the figures'
    way."""
    deadline = time.monotonic() + timeout
    with redis.Redis.from_url(url) as client:
        while time.monotonic() < deadline:
            queued = sum(
                int(client.llen(name)) for name in client.scan_iter(match="celery*", _type="list")
            )
            if not queued and not client.hlen("unacked") and not client.zcard(keys.INGESTS):
                return
            time.sleep(interval)
    raise TimeoutError(f"queues not drained within {timeout:g} s")
