"""What `appendfsync always` costs the edge: the same 100-notification Outbound Message posted
by 8 concurrent senders for a while, against a Redis (broker and store) with `everysec` and
then with `always`, interleaved. Prints messages/s and latency; asserts nothing.

    .venv/bin/python -m tests.bench_ingest_fsync [seconds per round] [rounds]

The web app runs in this process on werkzeug's threaded server (the edge's own cost, not
gunicorn's); no worker runs, so the queue only grows, as in a burst.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis
from werkzeug.serving import make_server

from tests.conftest import TOKEN, make_settings, notification_id, outbound_message, random_event_id
from webhooks import create_app
from worker.dev.redis_server import RedisServer

SENDERS = 8


def run(fsync: str, seconds: float) -> tuple[float, list[float]]:
    with (
        tempfile.TemporaryDirectory() as directory,
        RedisServer(directory=Path(directory)) as server,
    ):
        client = redis.Redis.from_url(server.url)
        client.config_set("appendfsync", fsync)
        client.close()
        settings = make_settings(server.url, "http://127.0.0.1:9")
        server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.port}/salesforce/outbound/cancel?token={TOKEN}"
        headers = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'}
        latencies: list[float] = []
        stop = time.monotonic() + seconds

        def sender() -> None:
            with httpx.Client(timeout=30) as http:
                while time.monotonic() < stop:
                    body = outbound_message(
                        [(notification_id(), random_event_id()) for _ in range(100)]
                    )
                    started = time.perf_counter()
                    response = http.post(url, content=body, headers=headers)
                    latencies.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text

        threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - began
        server.shutdown()
        return len(latencies) / elapsed, latencies


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    figures: dict[str, list[tuple[float, float, float]]] = {"everysec": [], "always": []}
    for _ in range(rounds):
        for fsync in figures:
            rate, latencies = run(fsync, seconds)
            cuts = statistics.quantiles(latencies, n=100)
            figures[fsync].append((rate, cuts[49] * 1000, cuts[98] * 1000))
            print(
                f"appendfsync {fsync:8}: {rate:6.1f} messages/s, p50 {cuts[49] * 1000:5.1f} ms, "
                f"p99 {cuts[98] * 1000:5.1f} ms",
                flush=True,
            )
    for fsync, rows in figures.items():
        print(
            f"median of {rounds}, appendfsync {fsync:8}: "
            f"{statistics.median(r[0] for r in rows):6.1f} messages/s, "
            f"p99 {statistics.median(r[2] for r in rows):5.1f} ms"
        )


if __name__ == "__main__":
    main()
