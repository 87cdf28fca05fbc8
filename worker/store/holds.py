"""Irreversible operations the safety valves held back, until an operator acts.

The gate holds a cancel or no-show instead of sending it while an operator has paused every
irreversible call (`crmhook pause`), or when more were due within a minute than
`IRREVERSIBLE_GUARD_PER_MINUTE` (the blast-radius guard against a wrong mass update). The
claim is handed back as if never taken, and the operation waits here, out of the pending
index, so that no sweeper sends it behind the operator's back. `crmhook resume` sends what
the pause held, `crmhook release-held` what the guard held (past the guard, once each), and
`crmhook drop-held` turns them into dead letters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from worker.domain.operations import Operation
from worker.store import keys, lua
from worker.store.connection import text
from worker.store.dead_letters import DeadLetters
from worker.store.retention import Retention

# Why an operation is held: the operator's pause, or the guard. (The gate also answers
# `held` for a copy of an operation held already; that keeps the first entry's reason.)
REASONS = ("paused", "guard")
# How long a release lets its operations past the guard.
RELEASED_SECONDS = 3600
# The states `lua.DROP` turns into a dead letter.
DROPPED_FROM = ("queued", "retrying", "in_doubt", "running")


@dataclass(frozen=True)
class HeldOperation:
    key: str
    operation: Operation
    reason: str  # paused | guard
    at: float  # epoch seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "action": self.operation.action.value,
            "crm_event_id": self.operation.crm_event_id,
            "reason": self.reason,
            "held_at": round(self.at, 3),
        }


# KEYS: held, irreversible pause. ARGV: identity, entry JSON, reason. Keeps the entry (an
# earlier one for the same operation stays as it was). 0, holding nothing, when what held
# it has gone since the gate answered: the pause was lifted, or the held copy released or
# dropped; the caller then runs the operation again rather than leave it held with nobody
# to release it.
_HOLD = """
if ARGV[3] == 'paused' and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if ARGV[3] == 'held' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class Holds:
    def __init__(
        self, client: redis.Redis, dead_letters: DeadLetters, retention: Retention
    ) -> None:
        self._redis = client
        self._dead_letters = dead_letters
        self._retention = retention
        self._hold = client.register_script(_HOLD)
        self._drop = client.register_script(lua.DROP)

    def hold(self, operation: Operation, reason: str) -> bool:
        """Keep `operation` for an operator (its claim already handed back); False when
        what held it has gone meanwhile (see `_HOLD`): then it is not held. Out of the
        pending index once held, so that no sweeper sends it; the gate holds any copy."""
        entry = {"operation": operation.to_message(), "reason": reason, "at": time.time()}
        held = self._hold(
            keys=[keys.HELD, keys.GATE_IRREVERSIBLE_PAUSE],
            args=[operation.identity, json.dumps(entry), reason],
        )
        if held:
            self._redis.zrem(keys.PENDING, keys.operation(operation))
        return bool(held)

    def all(self) -> list[HeldOperation]:
        """Every held operation, oldest first."""
        found = [_entry(text(raw)) for raw in self._redis.hvals(keys.HELD)]
        return sorted(found, key=lambda entry: entry.at)

    def counts(self) -> dict[str, int]:
        """How many are held, by reason (for the metrics)."""
        counted = dict.fromkeys(REASONS, 0)
        for entry in self.all():
            counted[entry.reason] = counted.get(entry.reason, 0) + 1
        return counted

    def take(self, chosen: Iterable[HeldOperation]) -> list[HeldOperation]:
        """Remove `chosen` from the holds; answers those this call removed (another operator
        may have taken some first), so that each is released or dropped once."""
        entries = list(chosen)
        with self._redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.hdel(keys.HELD, entry.operation.identity)
            removed = pipe.execute()
        return [entry for entry, gone in zip(entries, removed, strict=True) if gone]

    def pass_guard(self, entries: Iterable[HeldOperation]) -> None:
        """Let each of these past the guard (its retries included) for `RELEASED_SECONDS`:
        an operator released them."""
        until = (time.time() + RELEASED_SECONDS) * 1000  # the gate reckons in ms
        released = {entry.operation.identity: until for entry in entries}
        if released:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(keys.GATE_GUARD_RELEASED, released)
                pipe.zremrangebyscore(keys.GATE_GUARD_RELEASED, "-inf", time.time() * 1000)
                pipe.execute()

    def drop(self, entry: HeldOperation, actor: str) -> str:
        """Make a held operation a dead letter, then stop holding it; answers its state
        before (see `lua.DROP`). One a live claim holds ('busy') stays held."""
        before = str(self._drop(keys=[entry.key], args=[actor, entry.reason, 0]))
        if before in DROPPED_FROM:
            with self._redis.pipeline(transaction=False) as pipe:
                self._dead_letters.add(pipe, entry.key, keep_seconds=self._retention.action_seconds)
                pipe.execute()
        if before != "busy":
            self.take([entry])
        return before


def _entry(raw: str) -> HeldOperation:
    data = json.loads(raw)
    operation = Operation.from_message(data["operation"])
    return HeldOperation(keys.operation(operation), operation, data["reason"], float(data["at"]))
