"""The safety valves with real processes: the Procfile's worker, the sandbox ChiliPiper, and
`crmhook` as an operator runs it. A burst past the guard is held, nothing is lost, and a
release sends each once; a pause holds every irreversible call (reads go on) until resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import SandboxServer, make_settings, random_event_id, start_worker, wait_for
from worker.dev.redis_server import RedisServer
from worker.domain.operations import Action, Operation
from worker.settings import Settings
from worker.store import keys
from worker.store.connection import redis_client
from worker.tasks.app import make_celery
from worker.tasks.publish import publish

pytestmark = pytest.mark.slow
GUARD = 5
CRMHOOK = str(Path(sys.executable).parent / "crmhook")


@pytest.fixture
def settings(own_redis: RedisServer, sandbox: SandboxServer) -> Settings:  # type: ignore[override]
    return make_settings(own_redis.url, sandbox.url)


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    connection = redis_client(settings.redis_url)
    yield connection
    connection.close()


def crmhook(settings: Settings, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("REDIS_", "CHILIPIPER_", "IRREVERSIBLE_"))
    }
    env["REDIS_URL"] = settings.redis_url
    return subprocess.run(
        [CRMHOOK, *arguments], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def operations(action: Action, count: int) -> list[Operation]:
    return [Operation(action, random_event_id(), f"test:{i}") for i in range(count)]


def state_of(client: redis.Redis, operation: Operation) -> str | None:
    state = client.hget(keys.operation(operation), "state")
    return str(state) if state else None


def held(client: redis.Redis) -> int:
    return int(client.hlen(keys.HELD))


def test_a_burst_past_the_guard_is_held_and_a_release_sends_each_once(
    settings: Settings, sandbox: SandboxServer, client: redis.Redis, tmp_path: Path
) -> None:
    burst = operations(Action.CANCEL, 12)
    guard = {"IRREVERSIBLE_GUARD_PER_MINUTE": str(GUARD)}
    worker = start_worker(settings, tmp_path / "worker.log", concurrency=4, extra_env=guard)
    try:
        publish(make_celery(settings), burst)
        ours = {op.crm_event_id for op in burst}

        def sent() -> set[str]:
            return {c["crmEventId"] for c in sandbox.calls(action="cancel")} & ours

        wait_for(lambda: held(client) == len(burst) - GUARD and len(sent()) == GUARD, 30)
        # Nothing lost: each is done or held, none left in between.
        done = sent()
        wait_for(
            lambda: all(
                state_of(client, op) == "succeeded" for op in burst if op.crm_event_id in done
            )
        )
        assert all(state_of(client, op) == "queued" for op in burst if op.crm_event_id not in done)

        listed = crmhook(settings, "held", "--json")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.count('"reason": "guard"') == len(burst) - GUARD

        released = crmhook(settings, "release-held", "--all")
        assert released.returncode == 0, released.stdout + released.stderr
        wait_for(lambda: all(state_of(client, op) == "succeeded" for op in burst), timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    for operation in burst:  # each exactly once, past the guard after the release
        assert len(sandbox.calls(operation.crm_event_id, action="cancel")) == 1
    assert held(client) == 0
    audit = crmhook(settings, "audit", "--json").stdout
    assert audit.count('"release-held"') == len(burst) - GUARD


def test_a_pause_holds_every_irreversible_call_and_resume_sends_each_once(
    settings: Settings, sandbox: SandboxServer, client: redis.Redis, tmp_path: Path
) -> None:
    cancels = operations(Action.CANCEL, 4)
    reads = operations(Action.GET, 2)
    worker = start_worker(settings, tmp_path / "worker.log", concurrency=4)
    try:
        paused = crmhook(settings, "pause", "--reason", "a wrong mass update")
        assert paused.returncode == 0, paused.stderr
        publish(make_celery(settings), cancels + reads)
        wait_for(lambda: held(client) == len(cancels), timeout=30)
        wait_for(lambda: all(state_of(client, op) == "succeeded" for op in reads), timeout=30)
        assert all(sandbox.calls(op.crm_event_id, action="cancel") == [] for op in cancels)
        refused = crmhook(settings, "release-held", "--all")
        assert refused.returncode == 1
        assert "paused" in refused.stderr

        dropped = cancels[0]
        drop = crmhook(settings, "drop-held", keys.operation(dropped))
        assert drop.returncode == 0, drop.stdout + drop.stderr
        assert state_of(client, dropped) == "failed"

        resumed = crmhook(settings, "resume")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        rest = cancels[1:]
        wait_for(lambda: all(state_of(client, op) == "succeeded" for op in rest), timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    for operation in cancels[1:]:
        assert len(sandbox.calls(operation.crm_event_id, action="cancel")) == 1
    assert sandbox.calls(dropped.crm_event_id, action="cancel") == []
    failed = crmhook(settings, "failed", "--json").stdout
    assert "dropped by cli:" in failed
    audit = crmhook(settings, "audit", "--json").stdout
    for what in ('"pause"', '"resume"', '"drop-held"'):
        assert what in audit
