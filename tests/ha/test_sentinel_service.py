"""The whole service on a Sentinel deployment with passwords: it works, `/readyz` tells the
state of the sentinels, and no password reaches a log line."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import (
    TOKEN,
    SandboxServer,
    make_settings,
    notification_id,
    outbound_message,
    random_event_id,
    start_worker,
    stop_process,
    wait_for,
)
from tests.ha.conftest import MASTER_PASSWORD, REDIS_VARIABLES, SENTINEL_PASSWORD
from tests.ha.sentinel import SentinelCluster
from webhooks import create_app
from worker.cli.commands import main


def test_a_protected_deployment_serves_reports_its_sentinels_and_logs_no_password(
    protected_cluster: SentinelCluster,
    sandbox: SandboxServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in REDIS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = protected_cluster.settings_env()
    settings = make_settings(
        env["REDIS_URL"],  # only the master's password and database
        sandbox.url,
        redis_sentinels=env["REDIS_SENTINELS"],
        redis_sentinel_master=env["REDIS_SENTINEL_MASTER"],
        redis_sentinel_password=env["REDIS_SENTINEL_PASSWORD"],
    )
    log = tmp_path / "worker.log"
    worker = start_worker(
        settings, log, concurrency=4, extra_env={"REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}
    )
    try:
        client = create_app(settings).test_client()
        event = random_event_id()
        answer = client.post(
            f"/salesforce/outbound/cancel?token={TOKEN}",
            data=outbound_message([(notification_id(), event)]),
            headers={"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'},
        )
        assert answer.status_code == 200
        wait_for(lambda: sandbox.calls(event, action="cancel"), timeout=30)

        # The CLI reads the same settings from the environment.
        for name, value in env.items():
            monkeypatch.setenv(name, value)

        def state() -> str:
            shown = CliRunner().invoke(main, ["status", event, "--json"])
            assert shown.exit_code == 0, shown.output
            [record] = json.loads(shown.output)
            return str(record["state"])

        wait_for(lambda: state() == "succeeded", timeout=10)

        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json["checks"] == {"redis": "ok", "broker": "ok"}
        assert not any("sentinel" in warning for warning in ready.json["warnings"])

        # A frozen sentinel host (connections accepted, nothing answered) costs its
        # one-second timeout, not redis-py's ten retries of it.
        frozen = protected_cluster.sentinels[0].process
        assert frozen is not None
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            ready = client.get("/readyz")
            took = time.monotonic() - began
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        assert ready.status_code == 200  # the master still answers
        [silent] = [w for w in ready.json["warnings"] if "sentinels do not answer" in w]
        assert silent.startswith("1 of 3 sentinels do not answer")
        assert took < 5, f"/readyz took {took:.1f} s with one sentinel frozen"
    finally:
        stop_process(worker)
    written = log.read_text() + caplog.text
    assert "crmhook.perform" in written  # the worker did log its work
    assert MASTER_PASSWORD not in written
    assert SENTINEL_PASSWORD not in written
