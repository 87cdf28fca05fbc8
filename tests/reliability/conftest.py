"""A whole stack per test, tuned for fast failure recovery: its own redis-server (AOF), its own
sandbox ChiliPiper, the web app on a loopback port and real Celery worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from werkzeug.serving import BaseWSGIServer

from tests.conftest import (
    TOKEN,
    SandboxServer,
    make_settings,
    notification_id,
    outbound_message,
    serve,
    start_worker,
    stop_process,
    wait_for,
)
from webhooks import create_app
from worker.dev.redis_server import RedisServer
from worker.dev.sandbox import Sandbox, create_sandbox_app
from worker.settings import Settings
from worker.store import Store
from worker.store.connection import store_client
from worker.tasks.app import QUEUE
from worker.tasks.runtime import retention

# Timings scaled down so a killed worker's tasks return in seconds, and still holding the
# invariant the worker checks at start-up: heartbeat 2 x 2 s + 2 < lease 8; settle 10 s >=
# deadline 3 + pool wait and connect 2 x 1.5 + one read 1.5 + 2; requeue 40 > 2 x visibility 16.
FAST = {
    "chilipiper_timeout_seconds": 1.5,
    "chilipiper_attempts": 2,
    "chilipiper_max_wait_seconds": 1.0,
    "chilipiper_call_deadline_seconds": 3,
    "chilipiper_settle_seconds": 10,
    "chilipiper_rate_limit": "1000/s",
    "claim_heartbeat_seconds": 2,
    "claim_lease_seconds": 8,
    "broker_visibility_timeout_seconds": 16,
    "requeue_after_seconds": 40,
    "retry_base_seconds": 0.2,
    "retry_max_seconds": 2.0,
    "task_max_attempts": 60,
    "salesforce_id_prefixes": "00U,00V",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "reliability" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)


@dataclass
class Stack:
    redis_server: RedisServer
    sandbox: SandboxServer
    settings: Settings
    web: BaseWSGIServer
    log_dir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web.port}"

    def start_worker(self, concurrency: int = 16, **overrides: str) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"worker-{len(self.workers)}.log"
        env = {name.upper(): str(value) for name, value in {**FAST, **overrides}.items()}
        process = start_worker(self.settings, log, concurrency=concurrency, extra_env=env)
        self.workers.append(process)
        return process

    def kill_workers(self) -> int:
        """SIGKILL every running worker, as the OOM killer or a node loss would."""
        killed = 0
        for process in self.workers:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                killed += 1
        return killed

    def redis(self) -> redis.Redis:
        return store_client(self.settings)

    def store(self) -> Store:
        return Store(self.redis(), retention(self.settings))

    def post_outbound(
        self, action: str, events: list[str], deliveries: int = 1, per_message: int = 100
    ) -> list[int]:
        """Post `events` as Outbound Messages of `per_message` notifications, each message
        `deliveries` times concurrently (as Salesforce's retries can). Returns the statuses."""
        messages = [
            outbound_message([(notification_id(), event) for event in events[i : i + per_message]])
            for i in range(0, len(events), per_message)
        ]
        url = f"{self.url}/salesforce/outbound/{action}?token={TOKEN}"
        with httpx.Client(timeout=30) as client:

            def post(body: bytes) -> int:
                headers = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'}
                return client.post(url, content=body, headers=headers).status_code

            with ThreadPoolExecutor(8) as pool:
                return list(pool.map(post, [m for m in messages for _ in range(deliveries)]))

    def drained(self) -> bool:
        """Nothing queued, nothing delivered-but-unacknowledged, no retry parked."""
        client = self.redis()
        try:
            return (
                client.llen(QUEUE) == 0
                and client.hlen("unacked") == 0
                and client.zcard("crmhook:scheduled") == 0
            )
        finally:
            client.close()

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 120) -> Any:
        return wait_for(predicate, timeout=timeout, interval=0.2)

    def close(self) -> None:
        """Stop the workers this stack started, then its web server."""
        for process in self.workers:
            stop_process(process)
        self.web.shutdown()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    sandbox_state = Sandbox()
    sandbox_http = serve(create_sandbox_app(sandbox_state))
    sandbox = SandboxServer(sandbox_state, sandbox_http)
    (tmp_path / "redis").mkdir()
    with RedisServer(directory=tmp_path / "redis") as server:
        settings = make_settings(server.url, sandbox.url, **FAST)
        web = serve(create_app(settings))
        stack = Stack(server, sandbox, settings, web, tmp_path)
        try:
            yield stack
        finally:
            stack.close()
            sandbox_http.shutdown()


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Print a scenario's figures to the terminal, whatever pytest captures."""

    def emit(line: str) -> None:
        with capsys.disabled():
            print(f"\n[reliability] {line}", flush=True)

    return emit


def cancels_per_event(sandbox: SandboxServer, events: list[str], action: str) -> dict[str, int]:
    """Calls of `action` that reached a meeting, per event."""
    counts = dict.fromkeys(events, 0)
    for call in sandbox.calls(action=action):
        if call["crmEventId"] in counts:
            counts[call["crmEventId"]] += 1
    return counts


def second_effects(sandbox: SandboxServer, action: str) -> int:
    """Calls of an irreversible action on a meeting that was no longer BOOKED: each one would
    have been a second effect (a second e-mail) had ChiliPiper not refused it."""
    return sum(1 for call in sandbox.calls(action=action) if call["before"] != "BOOKED")
