"""Claims on operation records: the Lua-guarded steps that make an effect happen once.

The queue is at-least-once; this is what makes the effect exactly-once. A worker claims an
operation atomically (state, owner, fencing token, lease expiry) and records the outcome only
while its token is still the current one, so a worker that lost its lease cannot overwrite
the work of the one that took over. CLAIMS.md draws the protocol as a state machine.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from worker.domain.operations import Operation, State
from worker.store import keys, lua
from worker.store.connection import text
from worker.store.dead_letters import DeadLetters
from worker.store.pending import Pending
from worker.store.records import Records, seconds
from worker.store.retention import Retention

MAX_ERROR_LENGTH = 2000


class Verdict(StrEnum):
    CLAIMED = "claimed"
    DONE = "done"
    BUSY = "busy"
    FAILED = "failed"


@dataclass(frozen=True)
class Claim:
    verdict: Verdict
    previous_state: str
    token: str
    attempts: int = 0
    since: float = 0.0  # epoch seconds: creation, or the last replay

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.since)

    @property
    def after_interruption(self) -> bool:
        """The last holder started the call and never settled it: it may have taken effect."""
        return self.previous_state in (State.RUNNING, State.IN_DOUBT)


class Claims:
    def __init__(
        self,
        client: redis.Redis,
        retention: Retention,
        pending: Pending,
        dead_letters: DeadLetters,
        records: Records,
    ) -> None:
        self._redis = client
        self._retention = retention
        self._pending = pending
        self._dead_letters = dead_letters
        self._records = records
        self._claim = client.register_script(lua.CLAIM)
        self._renew = client.register_script(lua.RENEW)
        self._release = client.register_script(lua.RELEASE)
        self._settle = client.register_script(lua.SETTLE)
        self._reopen = client.register_script(lua.REOPEN)

    def claim(self, operation: Operation, owner: str, lease_seconds: float) -> Claim:
        """Take the operation for `owner` unless it succeeded, is held by a live claim, or
        failed already for this same source (a redelivery of what failed stays failed; a new
        notification or a replay tries again)."""
        verdict, previous, token, attempts, since = self._claim(
            keys=[keys.operation(operation)],
            args=[
                owner,
                int(lease_seconds * 1000),
                self._retention.for_operation(operation),
                operation.action.value,
                operation.crm_event_id,
                operation.source_id,
            ],
        )
        return Claim(
            Verdict(text(verdict)),
            text(previous),
            text(token),
            int(text(attempts)),
            seconds(since),
        )

    def renew(self, operation: Operation, claim: Claim, lease_seconds: float) -> bool:
        """Extend the lease; False if the claim was lost (then do not call anything)."""
        return bool(
            self._renew(
                keys=[keys.operation(operation)], args=[claim.token, int(lease_seconds * 1000)]
            )
        )

    def release(self, operation: Operation, claim: Claim) -> bool:
        """Give the claim back as if it had not been taken (the call was never sent)."""
        return bool(self._release(keys=[keys.operation(operation)], args=[claim.token]))

    def settle(
        self,
        operation: Operation,
        claim: Claim,
        state: State,
        *,
        error: str = "",
        result: Any = None,
    ) -> bool:
        """Record the outcome if `claim` is still the current one; False means it was lost."""
        key = keys.operation(operation)
        recorded = bool(
            self._settle(
                keys=[key],
                args=[
                    claim.token,
                    state.value,
                    self._retention.for_operation(operation),
                    error[:MAX_ERROR_LENGTH],
                    "" if result is None else json.dumps(result),
                ],
            )
        )
        if recorded:
            # The indexes live in other hash slots (Redis Cluster): kept beside the record.
            # Settling renewed the record's time to live, so its event's index follows.
            pipe = self._redis.pipeline(transaction=False)
            self._records.index(pipe, operation.crm_event_id, key)
            if state in (State.FAILED, State.SUCCEEDED):
                self._pending.remove(pipe, key)
            if state is State.FAILED:
                self._dead_letters.add(pipe, key)
            elif state is State.SUCCEEDED:
                self._dead_letters.remove(pipe, key)
            pipe.execute()
        return recorded

    def reopen(self, operation: Operation, *, force: bool, actor: str) -> tuple[str, int]:
        """Reopen a failed operation (or, with `force`, a succeeded one) for a replay; any
        other is left as it is. Returns the state it was in and its attempts (`missing`
        when nothing is recorded). The caller enqueues it when it was reopened.

        A dead `cancel`/`noshow` is reopened *in doubt*: its last attempt may have reached
        ChiliPiper unanswered, so the replay asks `crm-get` before calling again. A forced
        replay is queued as is: the operator asked for the call.
        """
        key = keys.operation(operation)
        dead_state = State.IN_DOUBT if operation.action.irreversible else State.QUEUED
        previous, attempts = self._reopen(
            keys=[key], args=["1" if force else "0", actor, dead_state.value]
        )
        previous = text(previous)
        if previous == State.FAILED or (previous == State.SUCCEEDED and force):
            pipe = self._redis.pipeline(transaction=False)
            self._dead_letters.remove(pipe, key)
            self._pending.add(pipe, key)
            self._records.index(pipe, operation.crm_event_id, key)
            pipe.execute()
        return previous, int(text(attempts))
