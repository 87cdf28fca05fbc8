"""How `crmhook` shows things: tables, progress, results, times.

Times are epoch seconds everywhere in records and API objects; they are shown here as
ISO 8601 UTC. Piped output is read by scripts and grep, so it is wide enough that nothing
is cut.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from worker.operator import Outcome, Result, summarize

console = Console(width=None if sys.stdout.isatty() else 240)
PROGRESS_LINE_EVERY = 100
ID_WIDTH = 18
RECORD_FIELDS = (
    "action",
    "crm_event_id",
    "state",
    "attempts",
    "created_at",
    "updated_at",
    "succeeded_at",
    "last_error",
    "sources",
    "replayed_at",
    "replayed_by",
    "forced",
    "result",
)
OUTCOME_COLOURS = {
    Outcome.QUEUED: "green",
    Outcome.WOULD_QUEUE: "cyan",
    Outcome.SKIPPED: "yellow",
    Outcome.NOT_FOUND: "red",
    Outcome.REJECTED: "red",
    Outcome.DROPPED: "magenta",
}


def when(seconds: float) -> str:
    """Epoch seconds as an ISO 8601 UTC time, to the second."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def listing(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A table whose last column (prose) wraps; the others hold IDs and times, copied from
    here, so they never wrap and keep room for an 18-character ID. Cells are plain text,
    never markup: they hold what senders and ChiliPiper wrote (`[/bold]` would crash the
    listing, `[link=…]` would dress it up)."""
    table = Table(title=title)
    for index, column in enumerate(columns[:-1]):
        longest = max((len(row[index]) for row in rows), default=0)
        table.add_column(column, no_wrap=True, min_width=min(ID_WIDTH, max(longest, len(column))))
    table.add_column(columns[-1], ratio=1)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def record_table(record: dict[str, Any]) -> Table:
    """One operation record: its fields, then its audit trail."""
    table = Table(show_header=False, title=Text(record["key"]), title_justify="left")
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name in RECORD_FIELDS:
        value = record.get(name)
        if value in (None, ""):
            continue
        if name.endswith("_at"):
            value = when(float(value))
        elif not isinstance(value, str):
            value = json.dumps(value)
        table.add_row(name, Text(str(value)))
    for entry in record.get("audit", []):
        line = f"{when(entry['at'])} {entry['actor']} {entry['what']}: {entry['outcome']}"
        detail = f" ({entry['detail']})" if entry.get("detail") else ""
        table.add_row("audit", Text(line + detail))
    return table


def print_results(results: list[Result], *, dry_run: bool) -> None:
    for result in results:
        shown = result.outcome.value.replace("_", " ")
        console.print(
            f"[{OUTCOME_COLOURS[result.outcome]}]{shown:<11}[/] "
            f"{escape(result.target)}  {escape(result.detail)}",
            highlight=False,
        )
    counts = ", ".join(
        f"{count} {name.replace('_', ' ')}" for name, count in summarize(results).items()
    )
    console.print(
        f"{'dry run: ' if dry_run else ''}{len(results)} target(s): {counts or 'nothing to do'}"
    )


@contextlib.contextmanager
def progress(*, disable: bool) -> Iterator[Callable[[Result], None]]:
    """Progress fed one result at a time: a live bar on a terminal, a line every hundred
    results when piped (logs of a long bulk replay), nothing with --json."""
    errors = Console(stderr=True)
    if disable or not errors.is_terminal:
        done = 0

        def count(_result: Result) -> None:
            nonlocal done
            done += 1
            if not disable and done % PROGRESS_LINE_EVERY == 0:
                errors.print(f"replayed {done}…", highlight=False)

        yield count
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=errors, transient=True) as bar:
        task = bar.add_task("replaying", total=None)
        yield lambda _result: bar.advance(task)
