"""`LOG_FORMAT=json`: every line the Procfile's processes write, gunicorn's and Celery's own
included, is one JSON object, and the lines about an operation say which one it is."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SALESFORCE, TOKEN, SandboxServer, wait_for
from tests.test_processes import ROOT, service_environment, start_honcho, stop_group
from worker import logs
from worker.dev.redis_server import RedisServer, free_port

# honcho prefixes each line with its time and the process: "12:00:00 web.1    | ..."
HONCHO_LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<process>[\w.]+)\s+\| (?P<line>.*)$")
EVENT = "00U5g00000MnOpQEAV"
NOTIFICATIONS = {"04l5g00000QrStUAAV", "04l5g00000QrStVAAV"}  # synthetic_2x_event.xml's


def parse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Each process line as (process, object); a line that is not JSON fails the test."""
    found = []
    for raw in text.splitlines():
        match = HONCHO_LINE.match(raw)
        assert match, f"not a honcho line: {raw!r}"
        if match["process"] == "system":  # honcho's own: "web.1 started (pid=…)"
            continue
        try:
            found.append((match["process"], json.loads(match["line"])))
        except json.JSONDecodeError:
            pytest.fail(f"{match['process']} wrote a line that is not JSON: {match['line']!r}")
    return found


@pytest.mark.slow
def test_a_scripted_session_logs_one_json_object_per_line_with_correlation_fields(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    port = free_port()
    with RedisServer() as redis_server:
        env = service_environment(
            redis_server.url,
            CHILIPIPER_SANDBOX_URL=sandbox.url,
            WEB_CONCURRENCY="1",
            WORKER_CONCURRENCY="4",
            LOG_FORMAT="json",
        )
        process, output = start_honcho(ROOT / "Procfile", port, env, tmp_path)
        try:
            with sandbox.state.lock:
                sandbox.state.meetings[EVENT] = "BOOKED"
            base = f"http://127.0.0.1:{port}/salesforce/outbound/noshow"
            body = (SALESFORCE / "synthetic_2x_event.xml").read_bytes()
            posted = httpx.post(f"{base}?token={TOKEN}", content=body, headers=XML)
            assert posted.status_code == 200
            refused = httpx.post(f"{base}?token=wrong-{TOKEN}", content=body, headers=XML)
            assert refused.status_code == 401
            wait_for(lambda: '"outcome"' in output.text, timeout=30)
        finally:
            stop_group(process)
            output.close()
    lines = parse(output.text)
    for process_name, line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), (process_name, line)
        assert line["level"] in logging.getLevelNamesMapping(), line
    assert {name.split(".")[0] for name, _ in lines} == {"web", "worker"}
    # gunicorn's access lines are JSON too, and carry the path without the token.
    access = [line for _, line in lines if line["logger"] == "gunicorn.access"]
    assert any("/salesforce/outbound/noshow" in line["message"] for line in access), access
    assert TOKEN not in output.text
    # The line that says what happened to the operation names it in fields.
    done = [line for _, line in lines if line.get("outcome")]
    assert done, [line for _, line in lines if line["logger"].startswith("worker")]
    # Every correlation field but the fan-out's own (`ingest_id`) names this operation.
    for field in set(logs.CORRELATION_FIELDS) - {"ingest_id"}:
        assert field in done[0], (field, done[0])
    assert done[0]["notification_id"] in NOTIFICATIONS
    assert done[0]["event_id"] == EVENT
    assert done[0]["action"] == "noshow"


XML = {"Content-Type": "text/xml"}
