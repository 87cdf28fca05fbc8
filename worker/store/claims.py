"""Claims on operation records: the Lua-guarded steps that make an effect happen once.

The queue is at-least-once; this is what makes the effect exactly-once. Every execution of a
task claims the operation under an owner of its own (a redelivered message keeps its task
ID, while its first delivery may still be running), so a live lease always means "busy". The
holder renews the lease while it works, marks the record right before an irreversible call
leaves, and records the outcome only while its owner and fencing token are still the
current ones: an execution that lost its lease can neither send nor overwrite the work of
the one that took over. CLAIMS.md draws the protocol as a state machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import redis

from worker.domain.operations import Operation, State
from worker.store import keys, lua
from worker.store.connection import text
from worker.store.dead_letters import DeadLetters
from worker.store.durability import Durability
from worker.store.pending import Pending
from worker.store.records import Records, seconds
from worker.store.retention import Retention

MAX_ERROR_LENGTH = 2000


class Verdict(StrEnum):
    CLAIMED = "claimed"
    DONE = "done"
    BUSY = "busy"
    FAILED = "failed"


class Settled(IntEnum):
    """What `settle` did. False when lost, so `if not claims.settle(...)` reads as before."""

    LOST = 0  # another execution holds the claim now: nothing recorded
    RECORDED = 1
    REOPENED = 2  # a dead letter reopened at once: a notification came in during the run


class Doubt(StrEnum):
    """What an outcome says about whether an earlier call may still take effect unseen."""

    CALL = "call"  # the call just abandoned may have reached ChiliPiper: in doubt from its start
    KEEP = "keep"  # as doubtful as before (a check that could not run, an unclear answer)
    NONE = "none"  # settled: the call was answered, or crm-get said what happened


@dataclass(frozen=True)
class Claim:
    """One execution's claim, or why it got none. Times are epoch seconds by Redis's clock
    (`now` is that clock when the claim was answered)."""

    verdict: Verdict
    previous_state: str
    token: str
    owner: str
    attempts: int = 0
    since: float = 0.0  # the age budget's start: creation, a new notification, or a replay
    doubt_since: float | None = None  # when the last abandoned call began, if one did
    lease_until: float = 0.0
    now: float = 0.0

    @property
    def age_seconds(self) -> float:
        return max(0.0, self.now - self.since)

    @property
    def in_doubt(self) -> bool:
        """An earlier call may have taken effect unanswered: ask crm-get before sending."""
        return self.previous_state == State.IN_DOUBT

    @property
    def busy_for(self) -> float:
        """Seconds until the live claim that made this one `busy` runs out."""
        return max(0.0, self.lease_until - self.now)

    def settle_wait(self, settle_seconds: float) -> float:
        """Seconds to wait before crm-get may be asked: an abandoned call can still take
        effect until `settle_seconds` after it began."""
        if self.doubt_since is None:
            return 0.0
        return max(0.0, self.doubt_since + settle_seconds - self.now)


class Claims:
    def __init__(
        self,
        client: redis.Redis,
        retention: Retention,
        pending: Pending,
        dead_letters: DeadLetters,
        records: Records,
        durability: Durability,
    ) -> None:
        self._redis = client
        self._retention = retention
        self._pending = pending
        self._dead_letters = dead_letters
        self._records = records
        self._durability = durability
        self._claim = client.register_script(lua.CLAIM)
        self._renew = client.register_script(lua.RENEW)
        self._mark_sending = client.register_script(lua.MARK_SENDING)
        self._release = client.register_script(lua.RELEASE)
        self._settle = client.register_script(lua.SETTLE)
        self._reopen = client.register_script(lua.REOPEN)
        # Milliseconds added to Redis's clock by every script: 0 in service; tests move time.
        self.clock_offset_ms = 0

    def claim(
        self,
        operation: Operation,
        owner: str,
        lease_seconds: float,
        *,
        redelivered: bool = False,
    ) -> Claim:
        """Take the operation for the execution `owner` unless it succeeded, failed (a dead
        letter waits for a new notification or an operator), or is held by a live claim.

        `redelivered`: the broker delivered this message before. If its holder is gone
        without a send marker, the claim is in doubt all the same: the marker may be what a
        Redis crash lost. (A settled record needs no such care: its outcome was written
        after any call.)
        """
        reply = self._claim(
            keys=[keys.operation(operation)],
            args=[
                owner,
                int(lease_seconds * 1000),
                self._retention.for_operation(operation),
                operation.action.value,
                operation.crm_event_id,
                operation.source_id,
                "1" if redelivered else "0",
                "1" if operation.action.irreversible else "0",
                self.clock_offset_ms,
            ],
        )
        verdict, previous, token, attempts, since, doubt, lease_until, now = map(text, reply)
        return Claim(
            Verdict(verdict),
            previous,
            token,
            owner,
            int(attempts),
            seconds(since),
            seconds(doubt) if doubt else None,
            seconds(lease_until),
            seconds(now),
        )

    def renew(self, operation: Operation, claim: Claim, lease_seconds: float) -> float | None:
        """Extend the lease; the new lease end (Redis's clock), or None if the claim was lost
        (then nothing may be sent)."""
        until = self._renew(
            keys=[keys.operation(operation)],
            args=[claim.owner, claim.token, int(lease_seconds * 1000), self.clock_offset_ms],
        )
        return seconds(until) if until else None

    def renew_many(
        self, held: list[tuple[Operation, Claim]], lease_seconds: float
    ) -> list[float | None]:
        """`renew` for many claims in one round trip (the heartbeat)."""
        pipe = self._redis.pipeline(transaction=False)
        for operation, claim in held:
            self._renew(
                keys=[keys.operation(operation)],
                args=[claim.owner, claim.token, int(lease_seconds * 1000), self.clock_offset_ms],
                client=pipe,
            )
        return [seconds(until) if until else None for until in pipe.execute()]

    def mark_sending(self, operation: Operation, claim: Claim, lease_seconds: float) -> bool:
        """Renew the lease and mark that an irreversible call is about to leave, durably
        (`Durability`): False when the claim was lost or the mark could not be made durable,
        and then nothing may be sent."""
        marked = self._durability.write(
            self._mark_sending,
            keys=[keys.operation(operation)],
            args=[claim.owner, claim.token, int(lease_seconds * 1000), self.clock_offset_ms],
        )
        return bool(marked)

    def release(self, operation: Operation, claim: Claim) -> bool:
        """Give the claim back as if it had not been taken (nothing was sent)."""
        return bool(
            self._release(
                keys=[keys.operation(operation)],
                args=[claim.owner, claim.token, self.clock_offset_ms],
            )
        )

    def settle(
        self,
        operation: Operation,
        claim: Claim,
        state: State,
        *,
        doubt: Doubt = Doubt.NONE,
        error: str = "",
        result: Any = None,
    ) -> Settled:
        """Record the outcome if `claim` is still the current one (`Settled.LOST`, falsy,
        when not). `doubt` says whether the operation stays in doubt (see `Doubt`). A dead
        letter asked for again by a notification that came in during the run is reopened
        at once instead (`Settled.REOPENED`): the caller runs it again."""
        key = keys.operation(operation)
        settled = Settled(
            self._settle(
                keys=[key],
                args=[
                    claim.owner,
                    claim.token,
                    state.value,
                    self._retention.for_operation(operation),
                    error[:MAX_ERROR_LENGTH],
                    "" if result is None else json.dumps(result),
                    doubt.value,
                    self.clock_offset_ms,
                ],
            )
        )
        if settled:
            # The indexes live in other hash slots (Redis Cluster): kept beside the record.
            # Settling renewed the record's time to live, so its event's index follows.
            dead = settled is Settled.RECORDED and state is State.FAILED
            pipe = self._redis.pipeline(transaction=False)
            self._records.index(pipe, operation.crm_event_id, key)
            if dead or state is State.SUCCEEDED:
                self._pending.remove(pipe, key)
            if dead:
                self._dead_letters.add(pipe, key, keep_seconds=self._retention.longest_seconds)
            elif state is State.SUCCEEDED:
                self._dead_letters.remove(pipe, key)
            pipe.execute()
        return settled

    def reopen(self, operation: Operation, *, force: bool, actor: str) -> tuple[str, int]:
        """Reopen a failed operation (or, with `force`, a succeeded one) for a replay; any
        other is left as it is. Returns the state it was in and its attempts (`missing`
        when nothing is recorded). The caller enqueues it when it was reopened.

        A dead letter whose last attempt was in doubt is reopened *in doubt*: that attempt
        may have reached ChiliPiper unanswered, so the replay asks `crm-get` before calling
        again. A forced replay is queued as is: the operator asked for the call.
        """
        key = keys.operation(operation)
        previous, attempts = self._reopen(
            keys=[key],
            args=[
                "1" if force else "0",
                actor,
                "1" if operation.action.irreversible else "0",
                self.clock_offset_ms,
            ],
        )
        previous = text(previous)
        if previous == State.FAILED or (previous == State.SUCCEEDED and force):
            pipe = self._redis.pipeline(transaction=False)
            self._dead_letters.remove(pipe, key)
            self._pending.add(pipe, key)
            self._records.index(pipe, operation.crm_event_id, key)
            pipe.execute()
        return previous, int(text(attempts))
