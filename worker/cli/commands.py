"""`crmhook`, the operator's command line.

Every command reads the same settings as the services (environment and `.env`). Listings
print IDs as stored (canonical, 18 characters); `--json` gives machine-readable output.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import sys
from typing import Any

import click
import redis
from rich.markup import escape

from worker import redaction
from worker.cli.rendering import console, listing, print_results, progress, record_table, when
from worker.domain.salesforce_ids import canonical_id
from worker.errors import ConfigError, CrmhookError, InvalidSalesforceId
from worker.operator import Filters, Operator, Outcome
from worker.settings import SANDBOX_PORT, Settings, load_settings


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    redaction.install(settings)
    return settings


class _Commands(click.Group):
    """Turns an unreachable Redis into one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except redis.RedisError as exc:
            raise click.ClickException(
                f"Redis did not answer ({exc}); check REDIS_URL (or REDIS_SENTINELS)"
            ) from None


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

    Uses an embedded Redis unless REDIS_URL or REDIS_SENTINELS is set, and the sandbox unless
    CHILIPIPER_TRANSPORT is set. Ctrl-C stops everything it started.
    """
    from worker.dev.runner import DevStack

    sys.exit(DevStack(port=port, sandbox_port=sandbox_port, concurrency=concurrency).run())


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=SANDBOX_PORT, show_default=True)
@click.option(
    "--tools",
    type=click.Choice(["v1", "v2", "both", "get-only"]),
    default="both",
    show_default=True,
    help="Tools offered: v1 crm-cancel/crm-noshow, their v2 -post twins, both, or crm-get only.",
)
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Refuse tool calls above this many per second with HTTP 429 (default: no limit).",
)
@click.option(
    "--status-spelling",
    type=click.Choice(["edge", "upper"]),
    default="edge",
    show_default=True,
    help="Meeting statuses as live ChiliPiper writes them (Active, Canceled...) or upper case.",
)
def sandbox(
    host: str, port: int, tools: str, rate_limit: float | None, status_spelling: str
) -> None:
    """Serve the sandbox ChiliPiper (an MCP server with crm-get, crm-cancel[-post],
    crm-noshow[-post])."""
    from werkzeug.serving import make_server

    from worker.dev.sandbox import Sandbox, create_sandbox_app

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    state = Sandbox()
    state.configure(tools=tools, rate_limit=rate_limit, status_spelling=status_spelling)
    server = make_server(host, port, create_sandbox_app(state), threaded=True)
    click.echo(f"sandbox ChiliPiper MCP server on http://{host}:{port}/mcp")
    limit = "no rate limit" if rate_limit is None else f"{rate_limit:g} calls/s"
    click.echo(f"tools {', '.join(state.offered_tools())}; {status_spelling} statuses; {limit}")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


@main.command(name="run")
@click.argument("name")
def run_process(name: str) -> None:
    """Become the Procfile's process NAME (web or worker), as a Procfile runner would.

    The Docker image and docker-compose start the services this way, so the Procfile stays
    the one place their command lines are written.
    """
    from worker.dev.procfile import Procfile, child_environment

    try:
        procfile = Procfile.load()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        argv = procfile.argv(name)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    os.execvpe(argv[0], argv, child_environment())  # noqa: S606 (argv is `sh -c ...`)


@main.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def bench(arguments: tuple[str, ...]) -> None:
    """Measure the whole system on this machine (`crmhook bench --help` for its options).

    The benchmark is its own package (`python -m bench`): it starts web and worker from the
    Procfile and needs both packages, which the worker's command line does not import."""
    argv = [sys.executable, "-m", "bench", *arguments]
    os.execv(sys.executable, argv)  # noqa: S606 (our own interpreter and module)


@main.command()
@click.option("--event", "event_id", help="Also read this CRM event with crm-get.")
def check(event_id: str | None) -> None:
    """Check that the configured transport reaches ChiliPiper, and name the tools in use."""
    from worker.cli.check import check as run_check

    settings = _settings()
    if event_id:
        try:
            event_id = canonical_id(event_id)
        except InvalidSalesforceId as exc:
            raise click.BadParameter(str(exc), param_hint="--event") from None
    report = run_check(settings, event_id)
    for good, line in report.lines:
        console.print(("[green]✓[/] " if good else "[red]✗[/] ") + escape(line), highlight=False)
    sys.exit(0 if report.ok else 1)


def _operator(settings: Settings) -> Operator:
    from worker.tasks.app import make_celery
    from worker.tasks.runtime import build_store

    return Operator(settings, build_store(settings), make_celery(settings), cli_actor())


def cli_actor() -> str:
    """The OS user running `crmhook`: whoever replays from a shell is named in the trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers with arbitrary UIDs)
        return "cli:unknown"


def _filters(action: str | None, since: str | None) -> Filters:
    try:
        return Filters.parse(action, since)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


ACTION_OPTION = click.option("--action", help="Only this action: get, noshow or cancel.")
SINCE_OPTION = click.option(
    "--since", help="Only those failed since: 90s, 30m, 2h, 7d or ISO time."
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
LIMIT_OPTION = click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Page size."
)
OFFSET_OPTION = click.option(
    "--offset", type=click.IntRange(min=0), default=0, show_default=True, help="Newest to skip."
)


def _shown(offset: int, shown: int, total: int) -> str:
    """Which of a listing's `total` entries a page shows, when not all of them."""
    if offset == 0 and shown >= total:
        return ""
    more = f"; next page: --offset {offset + shown}" if offset + shown < total else ""
    return f", {offset + 1}-{offset + shown} shown{more}" if shown else f", none past {offset}"


@main.command()
@click.argument("action")
@click.argument("event_ids", nargs=-1, required=True)
def enqueue(action: str, event_ids: tuple[str, ...]) -> None:
    """Queue ACTION (get, noshow, cancel) for EVENT_IDS, validated as the edge does."""
    try:
        results = _operator(_settings()).enqueue(action, event_ids)
    except CrmhookError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:  # the action
        raise click.BadParameter(str(exc), param_hint="ACTION") from None
    for result in results:
        if result.outcome is Outcome.REJECTED:
            console.print(f"[red]rejected[/] {escape(result.target)}: {escape(result.detail)}")
        else:
            console.print(f"[green]queued[/]   {escape(result.target)} ({escape(result.detail)})")
    sys.exit(1 if any(r.outcome is Outcome.REJECTED for r in results) else 0)


@main.command()
@click.argument("key_or_event_id")
@JSON_OPTION
def status(key_or_event_id: str, as_json: bool) -> None:
    """Show what happened to an operation KEY or to every operation of an EVENT_ID:
    state, attempts, timestamps, last error, result and audit trail."""
    try:
        records = _operator(_settings()).status(key_or_event_id)
    except InvalidSalesforceId as exc:
        raise click.BadParameter(str(exc), param_hint="KEY_OR_EVENT_ID") from None
    if as_json:
        click.echo(json.dumps(records, indent=2, sort_keys=True))
    elif not records:
        console.print(f"nothing recorded for {escape(key_or_event_id)}")
    for record in records if not as_json else []:
        console.print(record_table(record))
    sys.exit(0 if records else 1)


@main.command()
@ACTION_OPTION
@SINCE_OPTION
@LIMIT_OPTION
@OFFSET_OPTION
@JSON_OPTION
def failed(action: str | None, since: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List dead letters (operations that failed for good), newest first."""
    filters = _filters(action, since)
    records, total = _operator(_settings()).failed(filters, offset=offset, limit=limit)
    if as_json:
        click.echo(json.dumps(records, indent=2, sort_keys=True))
        return
    title = f"{total} dead letter(s)" + _shown(offset, len(records), total)
    rows = [
        (
            when(record["failed_at"]),
            record["action"],
            record["crm_event_id"],
            record.get("attempts", ""),
            record.get("last_error", ""),
        )
        for record in records
    ]
    console.print(listing(title, ("failed", "action", "event", "attempts", "last error"), rows))
    if records:
        console.print("Replay them with: crmhook replay --failed (add --dry-run to see first)")


@main.command()
@click.argument("targets", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Replay every dead letter.")
@click.option("--quarantined", is_flag=True, help="Judge quarantined notifications again.")
@ACTION_OPTION
@SINCE_OPTION
@click.option("--force", is_flag=True, help="Run succeeded operations again (audited).")
@click.option("--dry-run", is_flag=True, help="Change nothing; say what would happen.")
@JSON_OPTION
def replay(
    targets: tuple[str, ...],
    all_failed: bool,
    quarantined: bool,
    action: str | None,
    since: str | None,
    force: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Replay operation KEYS or EVENT IDS, every dead letter (--failed), or the quarantine
    (--quarantined, under today's settings).

    Replays go through the same claim as every task: a succeeded operation is skipped unless
    --force is given. Every replay is audited with your OS user name.
    """
    chosen = [
        name
        for name, on in (
            ("TARGETS", targets),
            ("--failed", all_failed),
            ("--quarantined", quarantined),
        )
        if on
    ]
    if len(chosen) != 1:
        raise click.UsageError("give operation keys or event IDs, or --failed, or --quarantined")
    if (action or since) and not all_failed:
        raise click.UsageError("--action and --since filter --failed")
    if force and quarantined:
        raise click.UsageError("--force applies to keys and event IDs, not --quarantined")
    operator = _operator(_settings())
    try:
        with progress(disable=as_json) as advance:
            if all_failed:
                results = operator.replay_failed(
                    _filters(action, since), dry_run=dry_run, progress=advance
                )
            elif quarantined:
                results = operator.replay_quarantined(dry_run=dry_run, progress=advance)
            else:
                results = operator.replay(targets, force=force, dry_run=dry_run, progress=advance)
    except CrmhookError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        print_results(results, dry_run=dry_run)
    sys.exit(1 if any(r.outcome in (Outcome.NOT_FOUND, Outcome.REJECTED) for r in results) else 0)


@main.command(name="audit")
@click.option("--limit", type=int, default=50, show_default=True)
@JSON_OPTION
def audit_log(limit: int, as_json: bool) -> None:
    """List the newest audit entries: replays and manual tasks, who, when, outcome."""
    operator = _operator(_settings())
    entries, _ = operator.audit_log(limit=limit)
    if as_json:
        click.echo(json.dumps(entries, indent=2, sort_keys=True))
        return
    title = f"{len(entries)} audit entr{'y' if len(entries) == 1 else 'ies'}"
    rows = [
        (
            when(entry["at"]),
            entry["actor"],
            entry["what"],
            entry["outcome"],
            entry["target"],
            entry.get("detail", ""),
        )
        for entry in entries
    ]
    columns = ("when", "actor", "what", "outcome", "target", "detail")
    console.print(listing(title, columns, rows))


@main.command()
@LIMIT_OPTION
@OFFSET_OPTION
@JSON_OPTION
def quarantine(limit: int, offset: int, as_json: bool) -> None:
    """List quarantined (rejected) notifications, newest first, with the reason."""
    operator = _operator(_settings())
    entries = [
        {name: value for name, value in entry.items() if name != "entry"}
        for entry in operator.store.quarantine.list(limit, offset)
    ]
    total = operator.store.quarantine.count()
    if as_json:
        click.echo(json.dumps(entries, indent=2, sort_keys=True))
        return
    rows = [
        (
            when(entry["received_at"]),
            entry["action"],
            entry["organization_id"],
            entry["notification_id"],
            entry.get("value") or "",
            entry["reason"],
        )
        for entry in entries
    ]
    columns = ("received", "action", "org", "notification", "value as sent", "reason")
    title = f"{total} quarantined notification(s)" + _shown(offset, len(entries), total)
    console.print(listing(title, columns, rows))
    if entries:
        console.print("After fixing the settings: crmhook replay --quarantined --dry-run")


@main.command()
@click.option("--dry-run", is_flag=True, help="List the pending migrations; change nothing.")
@click.option("--again", is_flag=True, help="Run every migration again (after an upgrade).")
def migrate(dry_run: bool, again: bool) -> None:
    """Apply the store's pending one-off migrations (workers also apply them at start).

    After a rolling upgrade, --again indexes what workers of the older version wrote while
    the new ones were starting."""
    from worker.store import migrations
    from worker.tasks.runtime import build_store

    store = build_store(_settings())
    pending = migrations.pending(store.redis)
    if dry_run or not (pending or again):
        console.print(f"pending migrations: {', '.join(pending) or 'none'}")
        return
    for name, count in migrations.apply(store.redis, store.records, again=again).items():
        console.print(f"[green]applied[/] {name}: {count} record(s)")
