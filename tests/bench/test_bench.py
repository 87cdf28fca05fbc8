"""`crmhook bench --quick`: every figure is produced, printed and written. Speed is never
asserted here (a few seconds of load on a shared CI machine measure nothing); the figures
and their targets are docs/benchmarks.md's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import rows

pytestmark = pytest.mark.slow

MEASURES = [
    "ingest, worker stopped",
    "naive view",
    "appendfsync always",
    "ack p99 at",
    "end to end",
    "against Celery's default prefork worker",
    "ack-to-call p99",
    "two worker processes",
    "Celery's own ceiling",
    "Redis round trips per operation",
    "commands run by Redis",
    "peak RSS, one web process",
    "peak RSS, worker",
    "with a replica (WAIT): one durable write",
    "ack p50 at",
    "WAITs per effect",
]


def test_a_quick_run_produces_and_writes_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    document = json.loads(output.read_text())
    assert set(document["figures"]) == {
        "ingest",
        "open_loop",
        "end_to_end",
        "memory",
        "round_trips",
        "replica",
    }
    written = document["rows"]
    for measure in MEASURES:
        found = [row for row in written if measure in row["measure"]]
        assert found, f"no row for {measure!r}"
        assert all(row["value"] > 0 for row in found), found
        assert measure.split(",")[0] in run.stdout  # printed in the table as well
    # Each targeted figure has its verdict, and the rows are the ones the figures give.
    assert all(row["met"] in (True, False) for row in written if row["target"])
    assert [row["measure"] for row in written] == [r.measure for r in rows(document["figures"])]
    assert document["machine"]["cpus"] >= 1
    assert document["figures"]["end_to_end"]["one_process"]["effects_twice"] == 0
    # The replica's writes waited for it; the reference's did not.
    replica = document["figures"]["replica"]
    assert replica["with_replica"]["end_to_end"]["waits_per_effect"] >= 1
    assert replica["without"]["end_to_end"]["waits"] == 0
