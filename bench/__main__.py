"""`python -m bench` (also `crmhook bench`): measure the whole system on this machine."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from bench import phases, report
from bench.phases import Plan
from bench.stack import BenchError, Stack

PHASES = ("ingest", "open_loop", "end_to_end", "memory", "round_trips", "replica")


def measure(
    stack: Stack, plan: Plan, chosen: tuple[str, ...], say: Callable[[str], None]
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    steps: list[tuple[str, str, Callable[[], Any]]] = [
        ("ingest", "ingest", lambda: phases.ingest(stack, plan)),
        ("open_loop", "open_loop", lambda: phases.open_loop(stack, plan)),
        ("end_to_end", "one_process", lambda: phases.end_to_end(stack, plan, plan.cancels)),
        (
            "end_to_end",
            "two_processes",
            lambda: phases.end_to_end(stack, plan, plan.cancels, processes=2),
        ),
        (
            "end_to_end",
            "prefork",
            lambda: phases.end_to_end(stack, plan, plan.prefork_cancels, prefork=True),
        ),
        ("end_to_end", "celery_ceiling", lambda: phases.celery_ceiling(stack, plan)),
        ("memory", "memory", lambda: phases.peak_rss(stack, plan)),
        ("round_trips", "round_trips", lambda: phases.round_trips(stack, plan)),
        ("replica", "replica", lambda: phases.replica(stack, plan)),
    ]
    for phase, name, run in steps:
        if phase not in chosen:
            continue
        say(f"{phase}: {name} ...")
        started = time.monotonic()
        result = run()
        say(f"{phase}: {name} done in {time.monotonic() - started:.0f} s: {result}")
        if phase == name:
            figures[phase] = result
        else:
            figures.setdefault(phase, {})[name] = result
    return figures


@click.command()
@click.option(
    "--quick", is_flag=True, help="A few seconds of each phase: every figure, no meaning."
)
@click.option(
    "--phases",
    "chosen",
    default=",".join(PHASES),
    show_default=True,
    help="Comma-separated phases to run.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench-results.json"),
    show_default=True,
    help="Where the JSON goes.",
)
@click.option("--seconds", type=float, help="Seconds of each closed-loop ingest run (20).")
@click.option("--cancels", type=int, help="Cancels of the end-to-end run (5000).")
@click.option("--latency", type=float, help="ChiliPiper's latency in seconds (0.1).")
@click.option(
    "--keep-logs", is_flag=True, help="Keep the processes' logs (their directory is printed)."
)
def main(
    quick: bool,
    chosen: str,
    output: Path,
    seconds: float | None,
    cancels: int | None,
    latency: float | None,
    keep_logs: bool,
) -> None:
    """Start Redis, the sandbox ChiliPiper, the Procfile's web and workers on loopback, measure
    ingest, end to end, Redis round trips, memory and the cost of waiting for a replica, each
    beside a reference measured in the same run, print the table and write the figures as
    JSON."""
    names = tuple(name.strip() for name in chosen.split(",") if name.strip())
    unknown = sorted(set(names) - set(PHASES))
    if unknown:
        raise click.BadParameter(
            f"unknown phase(s) {unknown}; known: {', '.join(PHASES)}", param_hint="--phases"
        )
    plan = Plan.quick() if quick else Plan()
    if seconds is not None:
        plan = dataclasses.replace(plan, seconds=seconds)
    if cancels is not None:
        plan = dataclasses.replace(plan, cancels=cancels)
    if latency is not None:
        plan = dataclasses.replace(plan, latency=latency)
    console = Console(width=None if sys.stdout.isatty() else 150)
    directory = Path(tempfile.mkdtemp(prefix="crmhook-bench-"))

    def say(line: str) -> None:
        console.print(f"[dim]{line}[/]", highlight=False)

    say(f"process logs in {directory}")
    try:
        with Stack.start(directory) as stack:
            stack.start_web()
            figures = measure(stack, plan, names, say)
    except BenchError as exc:
        console.print(f"[red]crmhook bench: {exc}[/]")
        sys.exit(1)
    finally:
        if not keep_logs:
            shutil.rmtree(directory, ignore_errors=True)
    found = report.rows(figures)
    report.render(found, console)
    report.write(output, figures, found, plan)
    missed = [row.measure for row in found if row.met is False]
    console.print(
        f"figures written to {output}; targets met: "
        f"{sum(row.met is True for row in found)} of {sum(row.met is not None for row in found)}"
    )
    if missed:
        console.print(f"[red]missed: {'; '.join(m.strip() for m in missed)}[/]")


if __name__ == "__main__":
    main(prog_name="crmhook bench")
