"""What `appendfsync always` costs the edge, against a Redis (broker and store) with
`everysec` and then with `always`, interleaved; prints messages/s and latency, asserts nothing.

    .venv/bin/python -m tests.bench_ingest_fsync [seconds per round] [rounds]

Two measures per round, 8 concurrent senders each, 100-notification messages:
- `http`: Outbound Messages posted to the web app, which runs in this process on werkzeug's
  threaded server (so the senders' and the server's Python share one GIL: a floor, not
  gunicorn's figure);
- `submit`: the edge's Redis work alone, `tasks.publish.submit` (the ingest record and the
  fan-out's publish), where a slower fsync shows undiluted.
No worker runs, so the queue only grows, as in a burst.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
from werkzeug.serving import make_server

from tests.conftest import (
    ORG_ID,
    TOKEN,
    make_settings,
    notification_id,
    outbound_message,
    random_event_id,
)
from webhooks import create_app
from worker.dev.redis_server import RedisServer
from worker.domain.operations import Action, Operation
from worker.ingest import Batch
from worker.store.ingests import Ingests
from worker.tasks.app import make_celery
from worker.tasks.publish import submit

SENDERS = 8


def senders(send: Callable[[], None], seconds: float) -> tuple[float, list[float]]:
    """`send` called over and over by SENDERS threads for `seconds`: (calls a second, the
    latency of each call)."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def sender() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            send()
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / (time.monotonic() - began), latencies


def submit_only(url: str, seconds: float) -> tuple[float, list[float]]:
    settings = make_settings(url, "http://127.0.0.1:9")
    app = make_celery(settings)
    client = redis.Redis.from_url(url)
    ingests = Ingests(client, 3600)
    operations = [
        Operation(Action.CANCEL, random_event_id(), notification_id()) for _ in range(100)
    ]

    def send() -> None:
        submit(app, Batch(ORG_ID, operations, action=Action.CANCEL), ingests)

    try:
        return senders(send, seconds)
    finally:
        client.close()


def run(fsync: str, seconds: float) -> dict[str, tuple[float, list[float]]]:
    with (
        tempfile.TemporaryDirectory() as directory,
        RedisServer(directory=Path(directory)) as server,
    ):
        client = redis.Redis.from_url(server.url)
        client.config_set("appendfsync", fsync)
        client.close()
        server_url = server.url
        settings = make_settings(server_url, "http://127.0.0.1:9")
        server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.port}/salesforce/outbound/cancel?token={TOKEN}"
        headers = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'}
        http = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=SENDERS))

        def send() -> None:
            body = outbound_message([(notification_id(), random_event_id()) for _ in range(100)])
            response = http.post(url, content=body, headers=headers)
            assert response.status_code == 200, response.text

        try:
            posted = senders(send, seconds)
        finally:
            http.close()
            server.shutdown()
        return {"http": posted, "submit": submit_only(server_url, seconds)}


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for fsync in ("everysec", "always"):
            for measure, (rate, latencies) in run(fsync, seconds).items():
                p99 = statistics.quantiles(latencies, n=100)[98] * 1000
                figures.setdefault((measure, fsync), []).append((rate, p99))
                print(
                    f"{measure:6} appendfsync {fsync:8}: {rate:7.1f} messages/s, p99 {p99:6.1f} ms"
                )
    for (measure, fsync), rows in sorted(figures.items()):
        rate = statistics.median(row[0] for row in rows)
        p99 = statistics.median(row[1] for row in rows)
        print(
            f"median of {rounds}: {measure:6} appendfsync {fsync:8}: "
            f"{rate:7.1f} messages/s, p99 {p99:6.1f} ms"
        )


if __name__ == "__main__":
    main()
