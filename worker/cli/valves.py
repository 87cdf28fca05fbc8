"""`crmhook pause`, `resume`, `held`, `release-held` and `drop-held`: the operator's hand on
irreversible calls (worker/safety_valves.py says why they exist)."""

from __future__ import annotations

import json

import click
from rich.markup import escape

from worker.cli.commands import JSON_OPTION, _settings, cli_actor, main
from worker.cli.rendering import console, listing, print_results, when
from worker.errors import IrreversiblePaused
from worker.operator import Result
from worker.safety_valves import SafetyValves
from worker.store.holds import REASONS, HeldOperation


def _valves() -> SafetyValves:
    from worker.tasks.app import make_celery
    from worker.tasks.runtime import build_store

    settings = _settings()
    return SafetyValves(build_store(settings), make_celery(settings), cli_actor())


@main.command()
@click.option("--reason", default="", help="Why, for the audit trail and the other operators.")
def pause(reason: str) -> None:
    """Stop every cancel and no-show on every worker at once (reads go on). What comes due
    is held, nothing lost, until `crmhook resume`."""
    done = _valves().pause(reason)
    console.print(
        f"[yellow]paused[/] irreversible calls ({escape(done.actor)}); resume with: crmhook resume"
    )


@main.command()
def resume() -> None:
    """Lift the pause and send what it held (each once; the guard still applies)."""
    print_results(_valves().resume(), dry_run=False)


@main.command()
@click.option("--reason", type=click.Choice(REASONS), help="Only those held by this valve.")
@JSON_OPTION
def held(reason: str | None, as_json: bool) -> None:
    """List the cancels and no-shows the safety valves hold, oldest first."""
    valves = _valves()
    entries = valves.held(reason)
    if as_json:
        click.echo(json.dumps([entry.to_json() for entry in entries], indent=2))
        return
    paused = valves.paused()
    if paused is not None:
        console.print(
            f"[yellow]irreversible calls paused[/] since {when(paused.at)} by "
            f"{escape(paused.actor)}: {escape(paused.reason) or '(no reason given)'}"
        )
    rows = [
        (when(entry.at), entry.reason, entry.operation.action.value, entry.operation.crm_event_id)
        for entry in entries
    ]
    console.print(listing(f"{len(entries)} held", ("held", "by", "action", "event"), rows))


def _chosen(
    valves: SafetyValves, keys: tuple[str, ...], everything: bool, reason: str | None
) -> tuple[list[HeldOperation], list[Result]]:
    if bool(keys) == everything:
        raise click.UsageError("name operation KEYS, or give --all")
    return valves.choose(keys, everything=everything, reason=reason)


@main.command(name="release-held")
@click.argument("keys", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every held operation.")
def release_held(keys: tuple[str, ...], everything: bool) -> None:
    """Send held operations (KEYS as `crmhook held` lists them, or --all), each once; what
    the blast-radius guard held goes past it. Refused during a pause. Audited."""
    valves = _valves()
    chosen, missing = _chosen(valves, keys, everything, None)
    try:
        results = valves.release(chosen)
    except IrreversiblePaused as exc:
        raise click.ClickException(str(exc)) from None
    print_results(results + missing, dry_run=False)


@main.command(name="drop-held")
@click.argument("keys", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every held operation.")
def drop_held(keys: tuple[str, ...], everything: bool) -> None:
    """Send nothing for held operations (KEYS or --all): each becomes a dead letter that
    says who dropped it (`crmhook failed`; `crmhook replay` can still send it). Audited."""
    valves = _valves()
    chosen, missing = _chosen(valves, keys, everything, None)
    print_results(valves.drop(chosen) + missing, dry_run=False)
