"""The figures of one run as rows: each measure beside the reference measured in the same run,
their ratio and the target it must meet; printed as a table and kept as JSON."""

from __future__ import annotations

import json
import operator
import os
import platform
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.dev.redis_server import redis_server_binary

AT_LEAST, AT_MOST = ">=", "<="
COMPARE: Mapping[str, Callable[[float, float], bool]] = {
    AT_LEAST: operator.ge,
    AT_MOST: operator.le,
}


@dataclass(frozen=True)
class Row:
    """One measure. `ratio` is value / reference when there is a reference; the target
    applies to the ratio, or to the value itself when there is none."""

    measure: str
    value: float
    unit: str
    reference: str = ""
    reference_value: float | None = None
    target: str = ""  # e.g. ">= 0.5", "<= 50"; empty: reported, not targeted

    @property
    def ratio(self) -> float | None:
        if not self.reference_value:
            return None
        return self.value / self.reference_value

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        sign, bound = self.target.split()
        measured = self.ratio if self.reference_value else self.value
        return measured is not None and COMPARE[sign](measured, float(bound))


def rows(figures: Mapping[str, Any]) -> list[Row]:
    """The table, from what the phases measured (a phase left out gives no rows)."""
    found: list[Row] = []
    if ingest := figures.get("ingest"):
        ceiling = ingest["parse_only"]["notifications_per_s"]
        found += [
            Row(
                "ingest, worker stopped (notifications/s)",
                ingest["service"]["notifications_per_s"],
                "/s",
                "parse-only ceiling",
                ceiling,
                ">= 0.5",
            ),
            Row(
                "  naive view, apply_async per notification",
                ingest["naive"]["notifications_per_s"],
                "/s",
                "parse-only ceiling",
                ceiling,
            ),
            Row("  ack p50, closed loop", ingest["service"]["p50_ms"], "ms"),
            Row("  ack p99, closed loop", ingest["service"]["p99_ms"], "ms"),
            Row(
                "  appendfsync always, against everysec",
                ingest["service"]["notifications_per_s"],
                "/s",
                "everysec",
                ingest["service_everysec"]["notifications_per_s"],
            ),
        ]
    if opened := figures.get("open_loop"):
        rate = f"{opened['rate'] * 100:g} notifications/s"
        found += [
            Row(f"ack p50 at {rate}, worker running", opened["p50_ms"], "ms"),
            Row(f"ack p99 at {rate}, worker running", opened["p99_ms"], "ms", target="<= 50"),
        ]
    e2e = figures.get("end_to_end", {})
    if one := e2e.get("one_process"):
        found.append(
            Row(
                f"end to end, {one['cancels']} cancels, one worker (effects/s)",
                one["effects_per_s"],
                "/s",
                f"ideal {one['calls_in_flight']} in flight / latency",
                one["ideal_per_s"],
                ">= 0.8",
            )
        )
        if prefork := e2e.get("prefork"):
            found.append(
                Row(
                    "  against Celery's default prefork worker",
                    one["effects_per_s"],
                    "/s",
                    f"prefork x{prefork['calls_in_flight']}",
                    prefork["effects_per_s"],
                    ">= 10",
                )
            )
        found += [
            Row("  ack-to-call p50", one["ack_to_call_p50_ms"], "ms"),
            Row("  ack-to-call p99", one["ack_to_call_p99_ms"], "ms"),
        ]
    if two := e2e.get("two_processes"):
        found.append(
            Row(
                "  two worker processes (effects/s)",
                two["effects_per_s"],
                "/s",
                f"ideal {two['calls_in_flight']} in flight / latency",
                two["ideal_per_s"],
            )
        )
    if ceiling := e2e.get("celery_ceiling"):
        found.append(
            Row(
                "Celery's own ceiling: bare no-op tasks drained/s",
                ceiling["tasks_per_s"],
                "/s",
                "the end-to-end target, 0.8 x ideal",
                round(0.8 * one["ideal_per_s"], 1) if one else None,
            )
        )
    if trips := figures.get("round_trips"):
        found += [
            Row(
                "Redis round trips per operation",
                trips["service"]["round_trips"],
                "",
                "bare Celery no-op task",
                trips["bare_celery"]["round_trips"],
                "<= 2",
            ),
            Row(
                "  commands run by Redis per operation (Lua included)",
                trips["service"]["server_commands"],
                "",
                "bare Celery no-op task",
                trips["bare_celery"]["server_commands"],
            ),
        ]
    if durable := figures.get("replica"):
        found += _replica_rows(durable["with_replica"], durable["without"])
    if memory := figures.get("memory"):
        found += [
            Row("peak RSS, one web process", memory["web_mib"], "MiB", target="<= 120"),
            Row(
                f"peak RSS, worker with {memory['in_flight']} calls in flight",
                memory["worker_mib"],
                "MiB",
                target="<= 250",
            ),
        ]
    return found


def _replica_rows(replica: Mapping[str, Any], without: Mapping[str, Any]) -> list[Row]:
    """A cost, not a verdict: the service with a replica against itself without one."""
    write, write_without = replica["durable_write"], without["durable_write"]
    ack, ack_without = replica["ack"], without["ack"]
    e2e, e2e_without = replica["end_to_end"], without["end_to_end"]
    rate = f"{ack['rate'] * 100:g} notifications/s"
    return [
        Row(
            "with a replica (WAIT): one durable write, idle, p50",
            write["p50_ms"],
            "ms",
            "no replica",
            write_without["p50_ms"],
        ),
        Row(
            f"  ack p50 at {rate}, worker stopped",
            ack["p50_ms"],
            "ms",
            "no replica",
            ack_without["p50_ms"],
        ),
        Row("  ack p99", ack["p99_ms"], "ms", "no replica", ack_without["p99_ms"]),
        Row(
            f"  end to end, {e2e['cancels']} cancels in {e2e['runs']} runs, one worker (effects/s)",
            e2e["effects_per_s"],
            "/s",
            "no replica",
            e2e_without["effects_per_s"],
        ),
        Row(
            "  worker and Redis CPU per effect",
            _worker_and_redis(e2e),
            "ms",
            "no replica",
            _worker_and_redis(e2e_without),
        ),
        Row("  WAITs per effect, each in its write's round trip", e2e["waits_per_effect"], ""),
    ]


def _worker_and_redis(e2e: Mapping[str, Any]) -> float:
    spent = e2e["cpu_ms_per_effect"]
    return round(float(spent["worker"]) + float(spent["redis"]), 2)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found[1] if found else ""
    except OSError:
        pass
    version = subprocess.run(  # noqa: S603 (our own binary, fixed arguments)
        [redis_server_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis": next((w[2:] for w in version if w.startswith("v=")), "?"),
        "system": platform.platform(),
    }


def render(found: list[Row], console: Console) -> None:
    table = Table(title="crmhook bench", title_justify="left")
    for column, justify in [
        ("measure", "left"),
        ("value", "right"),
        ("reference", "left"),
        ("ref. value", "right"),
        ("ratio", "right"),
        ("target", "right"),
        ("", "left"),
    ]:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in found:
        ratio = row.ratio
        verdict = {True: "[green]met[/]", False: "[red]MISSED[/]", None: ""}[row.met]
        table.add_row(
            row.measure,
            f"{row.value:,.1f} {row.unit}".strip(),
            row.reference,
            "" if row.reference_value is None else f"{row.reference_value:,.1f}",
            "" if ratio is None else f"{ratio:.2f}",
            row.target,
            verdict,
        )
    console.print(table)


def write(path: Path, figures: Mapping[str, Any], found: list[Row], plan: Any) -> None:
    document = {
        "machine": machine(),
        "plan": asdict(plan),
        "rows": [asdict(row) | {"ratio": row.ratio, "met": row.met} for row in found],
        "figures": figures,
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
