"""`crmhook`, the operator's command line.

Every command reads the same settings as the services (environment and `.env`). Listings
print IDs as stored (canonical, 18 characters); `--json` gives machine-readable output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import click
import redis
from rich.console import Console
from rich.table import Table

from worker.errors import ConfigError, CrmhookError, InvalidSalesforceId
from worker.operations import KEY_PREFIX, Operation, parse_action
from worker.salesforce_ids import canonical_id, require_prefix
from worker.settings import SANDBOX_PORT, Settings, load_settings

# Piped output is read by scripts and grep: wide enough that nothing is cut.
console = Console(width=None if sys.stdout.isatty() else 240)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


class _Commands(click.Group):
    """Turns an unreachable Redis into one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis did not answer ({exc}); check REDIS_URL") from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Salesforce Event notifications to ChiliPiper meeting actions, exactly once."""


@main.command()
@click.option(
    "--port",
    type=int,
    default=lambda: int(os.environ.get("PORT", "8000")),
    show_default="$PORT or 8000",
    help="Port of the web app.",
)
@click.option(
    "--sandbox-port",
    type=int,
    default=8765,
    show_default=True,
    help="Port of the sandbox ChiliPiper.",
)
@click.option(
    "--concurrency",
    type=int,
    default=16,
    show_default=True,
    help="Worker threads (calls in flight).",
)
def dev(port: int, sandbox_port: int, concurrency: int) -> None:
    """Run the whole system here: Redis, sandbox ChiliPiper, web and worker.

    Uses an embedded Redis unless REDIS_URL is set, and the sandbox unless
    CHILIPIPER_TRANSPORT is set. Ctrl-C stops everything it started.
    """
    from worker.dev import DevStack

    sys.exit(DevStack(port=port, sandbox_port=sandbox_port, concurrency=concurrency).run())


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=SANDBOX_PORT, show_default=True)
def sandbox(host: str, port: int) -> None:
    """Serve the sandbox ChiliPiper (an MCP server with crm-get, crm-noshow, crm-cancel)."""
    from werkzeug.serving import make_server

    from worker.chilipiper.sandbox import create_sandbox_app

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server(host, port, create_sandbox_app(), threaded=True)
    click.echo(f"sandbox ChiliPiper MCP server on http://{host}:{port}/mcp")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


@main.command()
@click.option("--event", "event_id", help="Also read this CRM event with crm-get.")
def check(event_id: str | None) -> None:
    """Check that the configured transport reaches ChiliPiper and offers the three tools."""
    from worker.check import check as run_check

    settings = _settings()
    if event_id:
        try:
            event_id = canonical_id(event_id)
        except InvalidSalesforceId as exc:
            raise click.BadParameter(str(exc), param_hint="--event") from None
    report = run_check(settings, event_id)
    for good, line in report.lines:
        console.print(("[green]✓[/] " if good else "[red]✗[/] ") + line, highlight=False)
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("action")
@click.argument("event_ids", nargs=-1, required=True)
def enqueue(action: str, event_ids: tuple[str, ...]) -> None:
    """Queue ACTION (get, noshow, cancel) for EVENT_IDS, validated as the edge does."""
    from worker.celery_app import make_celery
    from worker.ingest import Batch, submit

    settings = _settings()
    try:
        chosen = parse_action(action)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ACTION") from None
    source = f"cli:{uuid.uuid4().hex}"
    operations, failed = [], False
    for raw in event_ids:
        try:
            event_id = require_prefix(canonical_id(raw), settings.salesforce_id_prefixes)
        except InvalidSalesforceId as exc:
            console.print(f"[red]rejected[/] {raw}: {exc}")
            failed = True
            continue
        operations.append(Operation(chosen, event_id, source))
        console.print(f"[green]queued[/]   {event_id} ({chosen.tool})")
    try:
        submit(make_celery(settings), Batch("cli", operations))
    except CrmhookError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("key_or_event_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(key_or_event_id: str, as_json: bool) -> None:
    """Show what happened to an operation KEY or to every operation of an EVENT_ID."""
    from worker.runtime import redis_client, retention
    from worker.store import Store

    settings = _settings()
    store = Store(redis_client(settings.redis_url), retention(settings))
    if key_or_event_id.startswith(f"{KEY_PREFIX}:op:"):
        record = store.record(key_or_event_id)
        records = [record] if record else []
    else:
        try:
            records = store.records_for_event(canonical_id(key_or_event_id))
        except InvalidSalesforceId as exc:
            raise click.BadParameter(str(exc), param_hint="KEY_OR_EVENT_ID") from None
    if as_json:
        click.echo(json.dumps(records, indent=2, sort_keys=True))
    elif not records:
        console.print(f"nothing recorded for {key_or_event_id}")
    for record in records if not as_json else []:
        console.print(_record_table(record))
    sys.exit(0 if records else 1)


@main.command()
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def quarantine(limit: int, as_json: bool) -> None:
    """List quarantined (rejected) notifications, newest first, with the reason."""
    from worker.runtime import redis_client, retention
    from worker.store import Store

    settings = _settings()
    entries = Store(redis_client(settings.redis_url), retention(settings)).quarantined(limit)
    if as_json:
        click.echo(json.dumps(entries, indent=2, sort_keys=True))
        return
    table = Table(title=f"{len(entries)} quarantined notification(s)")
    for column in ("received", "action", "org", "notification", "value as sent"):
        table.add_column(column, no_wrap=True, min_width=18 if column != "action" else 6)
    table.add_column("reason", ratio=1)  # IDs are copied from here: only the reason wraps
    for entry in entries:
        table.add_row(
            _when(entry["received_at"] * 1000),
            entry["action"],
            entry["organization_id"],
            entry["notification_id"],
            entry.get("value") or "",
            entry["reason"],
        )
    console.print(table)


def _record_table(record: dict[str, Any]) -> Table:
    table = Table(show_header=False, title=record["key"], title_justify="left")
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name in (
        "action",
        "crm_event_id",
        "state",
        "attempts",
        "created_at",
        "updated_at",
        "succeeded_at",
        "last_error",
        "sources",
        "result",
    ):
        value = record.get(name)
        if value in (None, ""):
            continue
        if name.endswith("_at"):
            value = _when(float(value))
        elif not isinstance(value, str):
            value = json.dumps(value)
        table.add_row(name, str(value))
    return table


def _when(milliseconds: float) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    main()
