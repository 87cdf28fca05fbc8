"""Real parts for the tests: a private redis-server, the sandbox ChiliPiper on loopback, the
web app, and (for end-to-end tests) a real Celery worker process."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr
from werkzeug.serving import BaseWSGIServer, make_server

# The message builders live with the benchmark, which posts the same messages; tests import
# them from here.
from bench.messages import ORG_ID
from bench.messages import notification_id as notification_id
from bench.messages import outbound_message as outbound_message
from bench.messages import random_event_id as random_event_id
from bench.stack import BenchError, wait_until
from tests.scalekit_standin import (
    CLIENT_ID,
    CLIENT_SECRET,
    IDENTIFIER,
    ScalekitState,
    create_scalekit_app,
)
from webhooks import create_app
from worker.dev.procfile import Procfile, child_environment
from worker.dev.redis_server import RedisServer, terminate
from worker.dev.sandbox import ACTIONS, DEFAULT_CONFIG, Faults, Sandbox, create_sandbox_app
from worker.settings import Settings, load_settings
from worker.store import Store
from worker.store.connection import store_client
from worker.tasks.runtime import retention

FIXTURES = Path(__file__).parent / "fixtures"
SALESFORCE = FIXTURES / "salesforce"
TOKEN = "test-token-0123456789abcdef"
OTHER_TOKEN = "rotated-token-abcdefghijklmnop"
WORKER_DB = 0  # the Celery worker consumes this database
IDLE_DB = 1  # no worker listens here: what the edge publishes stays visible


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    try:
        return wait_until("condition", predicate, timeout, interval)
    except BenchError as exc:
        pytest.fail(f"{exc}")


# --- servers --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, for workers whose queue and store nothing else shares."""
    with RedisServer() as server:
        yield server


@dataclass
class SandboxServer:
    state: Sandbox
    server: BaseWSGIServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/mcp"

    def calls(
        self, crm_event_id: str | None = None, action: str | None = None, tool: str | None = None
    ) -> list[dict[str, Any]]:
        """The logged tool calls, filtered by event, by action ("get", "cancel", "noshow",
        whichever tool version did it) and/or by the exact tool name."""
        if action is not None and action not in set(ACTIONS.values()):
            raise ValueError(f"unknown action {action!r}: filter tool names with tool=")
        with self.state.lock:
            return [
                call
                for call in self.state.calls
                if (crm_event_id is None or call["crmEventId"] == crm_event_id)
                and (action is None or call["action"] == action)
                and (tool is None or call["tool"] == tool)
            ]

    def set_faults(self, **faults: Any) -> None:
        with self.state.lock:
            self.state.faults = Faults(**faults)

    def configure(self, **values: Any) -> dict[str, Any]:
        """Set the sandbox's switches (tools, status_spelling, missing_permission,
        rate_limit, rate_limit_retry_after)."""
        return self.state.configure(**values)


def serve(app: Flask) -> BaseWSGIServer:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    state = Sandbox()
    server = serve(create_sandbox_app(state))
    yield SandboxServer(state, server)
    server.shutdown()


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxServer]:
    """The shared sandbox, with its faults off and its switches at their defaults (both tool
    versions, Edge spellings, no rate limit, every permission) before and after the test."""
    sandbox_server.set_faults()
    sandbox_server.configure(**DEFAULT_CONFIG)
    yield sandbox_server
    sandbox_server.set_faults()
    sandbox_server.configure(**DEFAULT_CONFIG)


def make_settings(redis_url: str | None, sandbox_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "webhook_tokens": f"{TOKEN},{OTHER_TOKEN}",
        "salesforce_org_ids": ORG_ID,
        "chilipiper_transport": "sandbox",
        "chilipiper_sandbox_url": sandbox_url,
        "chilipiper_timeout_seconds": 2.0,
        "chilipiper_rate_limit": "1000/s",  # the rate-limit tests set their own
        "_env_file": None,
    }
    values.update(overrides)
    return load_settings(**values)


def db_url(server: RedisServer, db: int) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture
def settings(redis_server: RedisServer, sandbox_server: SandboxServer) -> Settings:
    """Settings whose broker no worker consumes: published messages stay inspectable."""
    return make_settings(db_url(redis_server, IDLE_DB), sandbox_server.url)


@pytest.fixture
def idle_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(db_url(redis_server, IDLE_DB), decode_responses=True)
    client.flushdb()  # our own server's database: nothing else uses it
    yield client
    client.close()


@pytest.fixture
def app(settings: Settings, idle_redis: redis.Redis) -> Flask:
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# --- a real worker --------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    settings: Settings
    log: Path


def worker_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("REDIS_URL", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "CELERY_BROKER_URL"):
        env.pop(name, None)  # the machine's own, if any, must not reach our workers
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
    if settings.redis_sentinels:
        env["REDIS_SENTINELS"] = ",".join(settings.redis_sentinels)
        env["REDIS_SENTINEL_MASTER"] = settings.redis_sentinel_master or ""
    env.update(
        {
            "CHILIPIPER_TRANSPORT": "sandbox",
            "CHILIPIPER_SANDBOX_URL": settings.chilipiper_sandbox_url,
            "CHILIPIPER_TIMEOUT_SECONDS": str(settings.chilipiper_timeout_seconds),
            "CHILIPIPER_RATE_LIMIT": settings.chilipiper_rate_limit or "",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_worker(
    settings: Settings,
    log: Path,
    concurrency: int = 16,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the Procfile's `worker` line, as production runs it, and wait until it is ready."""
    command = Procfile.load().argv("worker")
    command[-1] += " --without-heartbeat"  # as the tests' workers always ran
    env = {**worker_environment(settings), "WORKER_CONCURRENCY": str(concurrency)}
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            command,
            env=child_environment({**env, **(extra_env or {})}),
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
        )
    wait_for(lambda: b"ready." in log.read_bytes() or process.poll() is not None, timeout=60)
    if process.poll() is not None:
        pytest.fail(f"worker exited: {log.read_text()[-2000:]}")
    return process


def stop_process(process: subprocess.Popen[bytes]) -> None:
    terminate(process, timeout=15)


@pytest.fixture(scope="session")
def worker_settings(redis_server: RedisServer, sandbox_server: SandboxServer) -> Settings:
    return make_settings(db_url(redis_server, WORKER_DB), sandbox_server.url)


@pytest.fixture(scope="session")
def celery_worker(
    worker_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_worker(worker_settings, log)
    yield WorkerProcess(process, worker_settings, log)
    stop_process(process)


@pytest.fixture
def worker_redis(celery_worker: WorkerProcess) -> Iterator[redis.Redis]:
    """The Redis (broker and store) the running worker uses."""
    client = store_client(celery_worker.settings)
    yield client
    client.close()


@pytest.fixture
def worker_store(celery_worker: WorkerProcess, worker_redis: redis.Redis) -> Store:
    return Store(worker_redis, retention(celery_worker.settings))


@pytest.fixture
def live_app(celery_worker: WorkerProcess) -> Flask:
    """The web app wired to the running worker."""
    return create_app(celery_worker.settings)


@pytest.fixture
def live_server(live_app: Flask) -> Iterator[str]:
    """The web app on a loopback port (threaded), for concurrent senders."""
    server = serve(live_app)
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


# --- a Scalekit stand-in --------------------------------------------------------------------


@dataclass
class ScalekitServer:
    state: ScalekitState
    server: BaseWSGIServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture(scope="session")
def scalekit_server(sandbox_server: SandboxServer) -> Iterator[ScalekitServer]:
    state = ScalekitState(sandbox_server.state)
    server = serve(create_scalekit_app(state))
    yield ScalekitServer(state, server)
    server.shutdown()


@pytest.fixture
def scalekit(scalekit_server: ScalekitServer, sandbox: SandboxServer) -> Iterator[ScalekitServer]:
    """The shared stand-in with its faults switched off again after the test."""
    yield scalekit_server
    with scalekit_server.state.lock:
        scalekit_server.state.fail_next = 0
        scalekit_server.state.reject_tokens = 0
        scalekit_server.state.retry_after = None
        scalekit_server.state.token_lifetime = 3600


def scalekit_settings(settings: Settings, scalekit: ScalekitServer) -> Settings:
    return settings.model_copy(
        update={
            "chilipiper_transport": "scalekit",
            "scalekit_env_url": scalekit.url,
            "scalekit_client_id": CLIENT_ID,
            "scalekit_client_secret": SecretStr(CLIENT_SECRET),
            "scalekit_identifier": IDENTIFIER,
        }
    )
