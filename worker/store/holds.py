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

REASONS = ("paused", "guard")
# How long a release lets its operations past the guard, at most.
RELEASED_SECONDS = 24 * 3600


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


class Holds:
    def __init__(
        self, client: redis.Redis, dead_letters: DeadLetters, retention: Retention
    ) -> None:
        self._redis = client
        self._dead_letters = dead_letters
        self._retention = retention
        self._drop = client.register_script(lua.DROP)

    def hold(self, operation: Operation, reason: str) -> None:
        """Keep `operation` for an operator (its claim already handed back)."""
        key = keys.operation(operation)
        entry = {"operation": operation.to_message(), "reason": reason, "at": time.time()}
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.HELD, key, json.dumps(entry))
            pipe.zrem(keys.PENDING, key)
            pipe.execute()

    def all(self) -> list[HeldOperation]:
        """Every held operation, oldest first."""
        held = self._redis.hgetall(keys.HELD)
        found = [_entry(text(key), text(raw)) for key, raw in held.items()]
        return sorted(found, key=lambda entry: entry.at)

    def counts(self) -> dict[str, int]:
        """How many are held, by reason (for the metrics)."""
        counted = dict.fromkeys(REASONS, 0)
        for raw in self._redis.hvals(keys.HELD):
            reason = json.loads(raw).get("reason", "guard")
            counted[reason] = counted.get(reason, 0) + 1
        return counted

    def take(self, chosen: Iterable[HeldOperation]) -> list[HeldOperation]:
        """Remove `chosen` from the holds; answers those this call removed (another operator
        may have taken some first), so that each is released or dropped once."""
        entries = list(chosen)
        with self._redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.hdel(keys.HELD, entry.key)
            removed = pipe.execute()
        return [entry for entry, gone in zip(entries, removed, strict=True) if gone]

    def pass_guard_once(self, entries: Iterable[HeldOperation]) -> None:
        """Let each of these through the guard once: an operator released them."""
        identities = [entry.operation.identity for entry in entries]
        if identities:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.sadd(keys.GATE_GUARD_RELEASED, *identities)
                # One that never reaches the gate (done meanwhile) must not stay exempt.
                pipe.expire(keys.GATE_GUARD_RELEASED, RELEASED_SECONDS)
                pipe.execute()

    def drop(self, entry: HeldOperation, actor: str) -> str:
        """Make a held operation a dead letter; answers its state before (see `lua.DROP`)."""
        before = str(self._drop(keys=[entry.key], args=[actor, entry.reason, 0]))
        if before in ("queued", "retrying", "in_doubt", "running"):
            with self._redis.pipeline(transaction=False) as pipe:
                self._dead_letters.add(pipe, entry.key, keep_seconds=self._retention.action_seconds)
                pipe.execute()
        return before


def _entry(key: str, raw: str) -> HeldOperation:
    data = json.loads(raw)
    return HeldOperation(
        key, Operation.from_message(data["operation"]), data["reason"], float(data["at"])
    )
