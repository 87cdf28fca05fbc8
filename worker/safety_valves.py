"""The operator's hand on irreversible calls: pause and resume them all, and release or drop
what the blast-radius guard held.

A wrong mass update in Salesforce would email thousands of customers before anyone could
react, so two valves stand between a queued cancel or no-show and ChiliPiper, both checked
by the gate in the same script that admits the call (no extra round trip):

- `pause`: every worker stops sending irreversible calls at once (reads go on); what comes
  due meanwhile is held, nothing is lost; `resume` lifts the pause and sends what it held;
- the guard (`IRREVERSIBLE_GUARD_PER_MINUTE`, unset by default): past that many in any
  minute, the excess is held, the `crmhook_held_operations` alert fires, and an operator
  either releases it (each then passes the guard once) or drops it (a dead letter).

Both are audited with the actor, like every operator action (`crmhook audit`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery

from worker.errors import IrreversiblePaused
from worker.operator import Outcome, Result
from worker.store import Store, keys
from worker.store.audit import AuditEntry
from worker.store.connection import text
from worker.store.holds import DROPPED_FROM, HeldOperation
from worker.tasks.publish import publish


@dataclass(frozen=True)
class Pause:
    actor: str
    at: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"actor": self.actor, "paused_at": round(self.at, 3), "reason": self.reason}


class SafetyValves:
    def __init__(self, store: Store, app: Celery, actor: str) -> None:
        self.store = store
        self._app = app
        self.actor = actor

    # --- the pause ---------------------------------------------------------------------------

    def pause(self, reason: str = "") -> Pause:
        """Stop every irreversible call, on every worker, from the next request on."""
        pause = Pause(self.actor, time.time(), reason)
        self.store.redis.hset(
            keys.GATE_IRREVERSIBLE_PAUSE,
            mapping={"actor": pause.actor, "at": pause.at, "reason": pause.reason},
        )
        self._audit("pause", "irreversible calls", "paused", reason)
        return pause

    def paused(self) -> Pause | None:
        found = {
            text(k): text(v)
            for k, v in self.store.redis.hgetall(keys.GATE_IRREVERSIBLE_PAUSE).items()
        }
        if not found:
            return None
        return Pause(found.get("actor", ""), float(found.get("at", 0)), found.get("reason", ""))

    def resume(self) -> list[Result]:
        """Lift the pause, then send what it held (the guard still applies to them)."""
        was = self.store.redis.delete(keys.GATE_IRREVERSIBLE_PAUSE)
        self._audit("resume", "irreversible calls", "resumed" if was else "not paused")
        return self._send(self.held(reason="paused"), "resume")

    # --- what the valves hold ------------------------------------------------------------------

    def held(self, reason: str | None = None) -> list[HeldOperation]:
        """What is held, oldest first; only what `reason` (paused, guard) held when given."""
        return [entry for entry in self.store.holds.all() if reason in (None, entry.reason)]

    def choose(
        self, keys: Sequence[str], *, everything: bool, reason: str | None = None
    ) -> tuple[list[HeldOperation], list[Result]]:
        """The held operations named by `keys` (or every one, held by `reason` when given),
        and a `not_found` result for each key that is not held."""
        entries = self.held(reason)
        if everything:
            return entries, []
        found = {entry.key: entry for entry in entries}
        missing = [
            Result(key, Outcome.NOT_FOUND, "not held", key) for key in keys if key not in found
        ]
        return [found[key] for key in dict.fromkeys(keys) if key in found], missing

    def release(self, chosen: list[HeldOperation]) -> list[Result]:
        """Send `chosen`, each once, what the guard held past the guard. Refused while
        paused: they would only be held again."""
        if self.paused() is not None:
            raise IrreversiblePaused(
                "irreversible calls are paused: `crmhook resume` first (it sends what the "
                "pause held too)"
            )
        return self._send(chosen, "release-held")

    def drop(self, chosen: list[HeldOperation]) -> list[Result]:
        """Make `chosen` dead letters that say who dropped them (`crmhook failed`), sending
        nothing; `crmhook replay` can still send one later. The record is failed before
        the hold ends, so that no copy can slip out in between."""
        results = []
        for entry in chosen:
            before = self.store.holds.drop(entry, self.actor)
            if before in DROPPED_FROM:
                detail = f"dead letter (held: {entry.reason})"
                results.append(Result(entry.key, Outcome.DROPPED, detail, entry.key))
            else:
                results.append(Result(entry.key, Outcome.SKIPPED, f"was {before}", entry.key))
        self.store.audit.write(
            [AuditEntry(self.actor, "drop-held", r.key, r.outcome.value) for r in results]
        )
        return results

    def _send(self, chosen: list[HeldOperation], what: str) -> list[Result]:
        """Send `chosen`: in the pending index first (should this process die part way,
        the sweeper sends what it stamped), past the guard when the guard held them, then
        no longer held, then published."""
        self.store.pending.stamp([entry.operation for entry in chosen])
        self.store.holds.pass_guard(entry for entry in chosen if entry.reason == "guard")
        taken = self.store.holds.take(chosen)
        publish(self._app, [entry.operation for entry in taken])
        results = [
            Result(entry.key, Outcome.QUEUED, f"held: {entry.reason}", entry.key) for entry in taken
        ]
        self.store.audit.write(
            [AuditEntry(self.actor, what, entry.key, "queued") for entry in taken]
        )
        return results + _not_held(chosen, taken)

    def _audit(self, what: str, target: str, outcome: str, detail: str = "") -> None:
        self.store.audit.write([AuditEntry(self.actor, what, target, outcome, detail=detail)])


def _not_held(chosen: list[HeldOperation], taken: list[HeldOperation]) -> list[Result]:
    """Those another operator released or dropped first."""
    gone = {entry.key for entry in taken}
    return [
        Result(entry.key, Outcome.NOT_FOUND, "no longer held", entry.key)
        for entry in chosen
        if entry.key not in gone
    ]
