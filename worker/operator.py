"""What operators do by hand: replay dead letters, release the quarantine, queue actions.

Shared by `crmhook` and the admin API, so both follow the same rules:

- a replay goes through the same claim as every task: the record is put back to `queued`
  (failed ones; succeeded ones only when forced) and the operation is enqueued again, so a
  replay of a succeeded `cancel` does nothing unless forced, and never runs beside a live one;
- a dry run reads and changes nothing, and says what would happen;
- quarantined notifications are judged again under today's settings (key prefixes, the event
  ID field), and those that pass go the way of a new delivery;
- everything that changes something is audited, with the actor.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from celery import Celery

from worker.domain.notifications import Rejection, triage
from worker.domain.operations import Action, Operation, State, parse_action
from worker.domain.salesforce_ids import canonical_id, require_prefix
from worker.errors import InvalidSalesforceId
from worker.ingest import Batch
from worker.settings import Settings
from worker.store import Store, keys
from worker.store.audit import AuditEntry
from worker.tasks.publish import publish, submit

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Bulk replays read, reopen and publish this many at a time: memory stays one page.
REPLAY_PAGE = 100


class Outcome(StrEnum):
    QUEUED = "queued"
    WOULD_QUEUE = "would_queue"  # dry run
    SKIPPED = "skipped"
    NOT_FOUND = "not_found"
    REJECTED = "rejected"
    DROPPED = "dropped"  # a held operation made a dead letter (safety_valves)


@dataclass(frozen=True)
class Result:
    """What became of one target (an operation key, an event ID or a notification ID)."""

    target: str
    outcome: Outcome
    detail: str = ""
    key: str = ""

    def to_json(self) -> dict[str, str]:
        shown = {"target": self.target, "outcome": self.outcome.value}
        shown.update(
            {name: value for name, value in (("detail", self.detail), ("key", self.key)) if value}
        )
        return shown


def summarize(results: Iterable[Result]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    return counts


def parse_since(text: str, *, now: float | None = None) -> float:
    """`90s`, `30m`, `2h`, `7d`, `1w` ago, or an ISO 8601 time, as epoch seconds."""
    now = time.time() if now is None else now
    match = _DURATION.fullmatch(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90s, 30m, 2h, 7d) nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add one, such as Z or +02:00")
    return moment.timestamp()


@dataclass(frozen=True)
class Filters:
    """Which dead letters: of one action, failed since a moment (epoch seconds)."""

    action: Action | None = None
    since: float | None = None

    @classmethod
    def parse(cls, action: str | None = None, since: str | None = None) -> Filters:
        """From an operator's words; ValueError saying which one is wrong."""
        try:
            chosen = parse_action(action) if action is not None else None
        except ValueError as exc:
            raise ValueError(f"action: {exc}") from None
        try:
            moment = parse_since(since) if since is not None else None
        except ValueError as exc:
            raise ValueError(f"since: {exc}") from None
        return cls(chosen, moment)


Progress = Callable[[Result], None]


class Operator:
    """One operator (`actor`) acting on the store and the broker."""

    def __init__(self, settings: Settings, store: Store, app: Celery, actor: str) -> None:
        self.settings = settings
        self.store = store
        self._app = app
        self.actor = actor

    # --- reading --------------------------------------------------------------------------

    def status(self, key_or_event_id: str) -> list[dict[str, Any]]:
        """The record of an operation key, or of every operation of an event ID (raises
        InvalidSalesforceId for an ID that is not one)."""
        if keys.is_operation(key_or_event_id):
            record = self.store.records.read(key_or_event_id)
            return [record] if record else []
        return self.store.records.for_event(canonical_id(key_or_event_id))

    def failed(
        self, filters: Filters = Filters(), *, offset: int = 0, limit: int = 100
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of dead letters, newest first, and how many match in all.

        The page is read in Redis. An entry whose record has expired (its retention ran out)
        is taken out of the index as it is met, and the page is filled from the entries
        behind it, so the page holds `limit` records when there are that many and the next
        one starts at `offset + limit`."""
        dead_letters = self.store.dead_letters
        shown: list[dict[str, Any]] = []
        while len(shown) < limit:
            wanted = limit - len(shown)
            page = dead_letters.page(
                filters.since, filters.action, offset=offset + len(shown), limit=wanted
            )
            live, expired = self._dead_records(page)
            shown += [{**record, "failed_at": failed_at} for failed_at, record in live]
            forgotten = dead_letters.forget(expired) if expired else 0
            if len(page) < wanted or not forgotten:
                break
        return shown, dead_letters.count(filters.since, filters.action)

    def audit_log(
        self, *, limit: int = 100, before: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The newest audit entries (before the cursor `before`), and the next cursor."""
        return self.store.audit.recent(limit=limit, before=before)

    # --- replays --------------------------------------------------------------------------

    def replay(
        self,
        targets: Sequence[str],
        *,
        force: bool = False,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> list[Result]:
        """Replay operation keys or event IDs (every operation of the event).

        Records are reopened one by one; the tasks are then published over one connection
        and audited in one round trip (`_enqueue_replays`).
        """
        decided = (
            decision
            for target in targets
            for decision in self._replay_target(target, force=force, dry_run=dry_run)
        )
        return self._enqueue_replays(decided, progress)

    def replay_failed(
        self,
        filters: Filters = Filters(),
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        page: int = REPLAY_PAGE,
    ) -> list[Result]:
        """Replay every dead letter that `filters` match, `page` at a time: each page is
        reopened, published and audited before the next is read (see `paging` for why the
        walk neither skips nor repeats while replayed ones leave the index). Dead letters
        that fail again meanwhile are indexed anew, newer than the walk: not replayed twice.
        An entry whose record has expired is forgotten, not reported (a dry run leaves it)."""
        results: list[Result] = []
        for entries in self.store.dead_letters.walk(filters.since, filters.action, page=page):
            live, expired = self._dead_records(entries)
            if expired and not dry_run:
                self.store.dead_letters.forget(expired)
            decided = (
                self._replay_record(record, force=False, dry_run=dry_run) for _, record in live
            )
            results += self._enqueue_replays(decided, progress)
        return results

    def _dead_records(
        self, entries: Sequence[tuple[str, float]]
    ) -> tuple[list[tuple[float, dict[str, Any]]], list[tuple[str, float]]]:
        """(failed at, record) of the dead letters whose record exists, and the entries
        whose record has expired."""
        records = self.store.records.read_many([key for key, _ in entries])
        live, expired = [], []
        for (key, failed_at), record in zip(entries, records, strict=True):
            if record is None:
                expired.append((key, failed_at))
            else:
                live.append((failed_at, record))
        return live, expired

    def _enqueue_replays(
        self,
        decided: Iterable[tuple[Result, tuple[Operation, AuditEntry] | None]],
        progress: Progress | None,
    ) -> list[Result]:
        """Report each decision, then audit and publish the reopened ones in one round trip
        each. Should the publish fail, the reopened records are in the store's pending
        index, and the lost-message sweeper enqueues them later."""
        results: list[Result] = []
        queued: list[tuple[Operation, AuditEntry]] = []
        for result, reopened in decided:
            results.append(result)
            if reopened is not None:
                queued.append(reopened)
            if progress is not None:
                progress(result)
        self._audit([entry for _, entry in queued])
        publish(self._app, [operation for operation, _ in queued])
        return results

    def _replay_target(
        self, target: str, *, force: bool, dry_run: bool
    ) -> list[tuple[Result, tuple[Operation, AuditEntry] | None]]:
        try:
            records = self.status(target)
        except InvalidSalesforceId as exc:
            return [(Result(target, Outcome.REJECTED, str(exc)), None)]
        if not records:
            return [(Result(target, Outcome.NOT_FOUND, "nothing recorded"), None)]
        return [self._replay_record(record, force=force, dry_run=dry_run) for record in records]

    def _replay_record(
        self, record: dict[str, Any], *, force: bool, dry_run: bool
    ) -> tuple[Result, tuple[Operation, AuditEntry] | None]:
        """The result for one record and, when it must be enqueued, the operation and the
        audit entry that go with it."""
        operation = _operation(record)
        key = keys.operation(operation)
        if key != record["key"]:  # a record without its source: cannot be rebuilt
            return Result(record["key"], Outcome.SKIPPED, "the record lacks its source ID"), None
        if dry_run:
            state, attempts = record["state"], int(record.get("attempts", 0))
        else:
            state, attempts = self.store.claims.reopen(operation, force=force, actor=self.actor)
        decision = _decide(state, attempts, force=force)
        if decision.outcome is not Outcome.QUEUED:
            return Result(key, decision.outcome, decision.detail, key), None
        if dry_run:
            return Result(key, Outcome.WOULD_QUEUE, decision.detail, key), None
        if state not in (State.FAILED, State.SUCCEEDED):
            self.store.pending.stamp([operation])  # reopen stamped the others
        what = "forced-replay" if state == State.SUCCEEDED else "replay"
        entry = AuditEntry(self.actor, what, key, "queued", detail=decision.detail)
        return Result(key, Outcome.QUEUED, decision.detail, key), (operation, entry)

    # --- the quarantine -------------------------------------------------------------------

    def replay_quarantined(
        self,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        page: int = REPLAY_PAGE,
    ) -> list[Result]:
        """Judge every quarantined notification again under today's settings; queue those
        that pass (as a new delivery would be) and release them from the quarantine.

        A page at a time: each is judged, submitted, released and audited before the next
        is read. Those that still fail stay where they are and those that pass leave, so
        the walk goes by score, not rank (see `paging`); rejections that arrive meanwhile
        are newer than the walk and wait for the next replay."""
        results: list[Result] = []
        for entries in self.store.quarantine.walk(page=page):
            judged = self._judge_quarantined(entries, dry_run=dry_run)
            for result in judged:
                if progress is not None:
                    progress(result)
            results += judged
        return results

    def _judge_quarantined(self, entries: list[dict[str, Any]], *, dry_run: bool) -> list[Result]:
        """One page of the quarantine: judged, and (unless `dry_run`) the passing ones
        submitted per organization and action, released and audited."""
        settings = self.settings
        batches: dict[tuple[str, str], list[tuple[dict[str, Any], Operation]]] = {}
        results: list[Result] = []
        for entry in entries:
            rejection = Rejection(
                **{name: entry[name] for name in Rejection.__dataclass_fields__ if name in entry}
            )
            action = Action(entry["action"])
            triaged = triage(
                [rejection.as_notification(settings.salesforce_event_id_field)],
                action,
                settings.salesforce_id_prefixes,
                settings.salesforce_event_id_field,
            )
            target = rejection.notification_id or "(no notification ID)"
            if triaged.rejections:
                results.append(Result(target, Outcome.SKIPPED, triaged.rejections[0].reason))
                continue
            operation = triaged.operations[0]
            batch_of = batches.setdefault((entry["organization_id"], action.value), [])
            batch_of.append((entry, operation))
        for (organization_id, action_name), pairs in batches.items():
            operations = [operation for _, operation in pairs]
            if not dry_run:
                submit(
                    self._app,
                    Batch(organization_id, operations, action=Action(action_name)),
                    self.store.ingests,
                )
                self.store.quarantine.release(entry["entry"] for entry, _ in pairs)
            outcome = Outcome.WOULD_QUEUE if dry_run else Outcome.QUEUED
            for entry, operation in pairs:
                detail = f"{operation.action.tool} {operation.crm_event_id}"
                key = keys.operation(operation)
                results.append(Result(entry["notification_id"], outcome, detail, key))
        if not dry_run:
            self._audit(
                [
                    AuditEntry(self.actor, "quarantine-replay", r.key, r.outcome, detail=r.target)
                    for r in results
                    if r.outcome is Outcome.QUEUED
                ]
            )
        return results

    # --- manual tasks ---------------------------------------------------------------------

    def enqueue(self, action: str, event_ids: Sequence[str]) -> list[Result]:
        """Queue `action` for `event_ids`, validated as the edge validates them."""
        chosen = parse_action(action)
        source = f"{self.actor.split(':', 1)[0]}:{uuid.uuid4().hex}"
        results, operations = [], []
        for raw in event_ids:
            try:
                event_id = require_prefix(canonical_id(raw), self.settings.salesforce_id_prefixes)
            except InvalidSalesforceId as exc:
                results.append(Result(raw, Outcome.REJECTED, str(exc)))
                continue
            operation = Operation(chosen, event_id, source)
            operations.append(operation)
            results.append(Result(event_id, Outcome.QUEUED, chosen.tool, keys.operation(operation)))
        submit(self._app, Batch(source.split(":", 1)[0], operations), self.store.ingests)
        self._audit(
            [AuditEntry(self.actor, "enqueue", keys.operation(op), "queued") for op in operations]
        )
        return results

    def _audit(self, entries: list[AuditEntry]) -> None:
        self.store.audit.write(entries)


@dataclass(frozen=True)
class _Decision:
    outcome: Outcome
    detail: str


def _decide(state: str, attempts: int, *, force: bool) -> _Decision:
    """What a replay does with an operation in `state` (the rules in one table)."""
    if state == "missing":
        return _Decision(Outcome.NOT_FOUND, "nothing recorded")
    if state == State.FAILED:
        return _Decision(Outcome.QUEUED, f"dead letter after {attempts} attempt(s)")
    if state == State.SUCCEEDED:
        if force:
            return _Decision(Outcome.QUEUED, "forced: it had succeeded")
        return _Decision(Outcome.SKIPPED, "already succeeded (force runs it again)")
    if state == State.RUNNING:
        return _Decision(Outcome.SKIPPED, "running now")
    # queued, retrying, in doubt: enqueue again; the claim keeps it to one effect.
    return _Decision(Outcome.QUEUED, f"was {state}: queued again")


def _operation(record: dict[str, Any]) -> Operation:
    source = record.get("source_id") or record.get("last_source") or ""
    return Operation(Action(record["action"]), record["crm_event_id"], source)
