"""The foundation's end-to-end test again, with CHILIPIPER_TRANSPORT=scalekit: the sample
Outbound Message cancels both meetings through a Scalekit stand-in on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import (
    SALESFORCE,
    TOKEN,
    SandboxServer,
    ScalekitServer,
    db_url,
    make_settings,
    start_worker,
    stop_process,
    wait_for,
)
from tests.scalekit_standin import CLIENT_ID, CLIENT_SECRET, IDENTIFIER
from webhooks import create_app
from worker.dev.redis_server import RedisServer
from worker.settings import Settings
from worker.store import Store
from worker.store.connection import redis_client
from worker.tasks.runtime import retention

pytestmark = pytest.mark.slow
SCALEKIT_DB = 3
EVENTS = ["00U5g00000MnOpQEAV", "00U5g00000MnOpREAV"]


@pytest.fixture(scope="module")
def scalekit_worker(
    redis_server: RedisServer,
    sandbox_server: SandboxServer,
    scalekit_server: ScalekitServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    settings = make_settings(db_url(redis_server, SCALEKIT_DB), sandbox_server.url)
    redis.Redis.from_url(settings.redis_url).flushdb()
    env = {
        "CHILIPIPER_TRANSPORT": "scalekit",
        "SCALEKIT_ENVIRONMENT_URL": scalekit_server.url,  # the alias of SCALEKIT_ENV_URL
        "SCALEKIT_CLIENT_ID": CLIENT_ID,
        "SCALEKIT_CLIENT_SECRET": CLIENT_SECRET,
        "SCALEKIT_IDENTIFIER": IDENTIFIER,
    }
    log: Path = tmp_path_factory.mktemp("scalekit-worker") / "worker.log"
    process = start_worker(settings, log, concurrency=4, extra_env=env)
    yield settings
    stop_process(process)


def test_sample_message_cancels_both_meetings_through_scalekit(
    scalekit_worker: Settings, sandbox: SandboxServer, scalekit: ScalekitServer
) -> None:
    with sandbox.state.lock:
        for event in EVENTS:
            sandbox.state.meetings[event] = "BOOKED"
    executions_before = len(scalekit.state.executions)
    body = (SALESFORCE / "synthetic_2x_event.xml").read_bytes()
    response = (
        create_app(scalekit_worker)
        .test_client()
        .post(f"/salesforce/outbound/cancel?token={TOKEN}", data=body, content_type="text/xml")
    )
    assert response.status_code == 200
    wait_for(lambda: all(sandbox.state.meetings[event] == "CANCELLED" for event in EVENTS))
    store = Store(redis_client(scalekit_worker.redis_url), retention(scalekit_worker))
    for event in EVENTS:
        [record] = wait_for(
            lambda event=event: [
                r for r in store.records.for_event(event) if r["state"] == "succeeded"
            ]
        )
        assert record["result"]["execution_id"]  # Scalekit's execution, kept with the key
    executions = scalekit.state.executions[executions_before:]
    assert sorted(e["tool_name"] for e in executions) == ["chilipipermcp_crm_cancel_post"] * 2
