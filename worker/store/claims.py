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

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

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
        also: Callable[[Pipeline], None] | None = None,
    ) -> Settled:
        """Record the outcome if `claim` is still the current one (`Settled.LOST`, falsy,
        when not). `doubt` says whether the operation stays in doubt (see `Doubt`). A dead
        letter asked for again by a notification that came in during the run is reopened
        at once instead (`Settled.REOPENED`): the caller runs it again.

        `also` adds commands of the caller's to the settle's pipeline (the gate's record of
        the call's success), sent whether or not the claim was still ours. A success is one
        round trip, those included; another outcome two, as its index writes wait for the
        script's answer."""
        key = keys.operation(operation)
        args = [
            claim.owner,
            claim.token,
            state.value,
            self._retention.for_operation(operation),
            error[:MAX_ERROR_LENGTH],
            "" if result is None else json.dumps(result),
            doubt.value,
            self.clock_offset_ms,
        ]
        if state is State.SUCCEEDED:
            return self._settle_success(operation, key, args, also)
        settled = Settled(self._settle(keys=[key], args=args))
        pipe = self._redis.pipeline(transaction=False)
        if settled:
            # The indexes live in other hash slots (Redis Cluster): kept beside the record.
            # Settling renewed the record's time to live, so its event's index follows.
            self._records.index(pipe, operation.crm_event_id, key)
            if settled is Settled.RECORDED and state is State.FAILED:
                self._pending.remove(pipe, key)
                self._dead_letters.add(pipe, key, keep_seconds=self._retention.longest_seconds)
        if also is not None:
            also(pipe)
        if len(pipe):
            _send(pipe)
        return settled

    def _settle_success(
        self,
        operation: Operation,
        key: str,
        args: list[Any],
        also: Callable[[Pipeline], None] | None,
    ) -> Settled:
        """`settle` of a success: the script, the index writes and `also` in one pipeline
        (not a transaction: the indexes are in other hash slots than the record, which no
        script may touch on Redis Cluster, and a pipeline may mix).

        The index writes go before the script's answer is known, which is safe for a success:
        indexing the key under its event is true whoever settles (and refreshes that index's
        time to live, as every write of it does), and taking it off the pending and
        dead-letter indexes is what a success does. When the success was not recorded (the
        claim was lost: another execution holds it, or held it and settled; or the script
        failed, or nothing is known of what ran), the removals may be wrong, and `_put_back`
        undoes them before anything is raised. Nothing else reads the indexes as a guard:
        the record's state is the truth, the indexes only find records."""
        pipe = self._redis.pipeline(transaction=False)
        self._settle(keys=[key], args=args, client=pipe)
        self._records.index(pipe, operation.crm_event_id, key)
        due_at = len(pipe)
        self._pending.due(pipe, key)  # read before the removal: what `_put_back` restores
        self._pending.remove(pipe, key)
        self._dead_letters.remove(pipe, key)
        state_at = len(pipe)
        pipe.hget(key, "state")  # read after the removals (see `_put_back`)
        if also is not None:
            also(pipe)
        try:
            replies = _replies(pipe)
        except redis.RedisError:
            # Nothing is known of what ran: the removals may have, the script not.
            with contextlib.suppress(redis.RedisError):
                self._put_back(key, None, None)
            raise
        outcome = replies[0]
        if isinstance(outcome, Exception) or Settled(int(outcome)) is Settled.LOST:
            self._put_back(key, _read(replies[due_at]), _read(replies[state_at]))
        for reply in replies:  # the script's failure, or an index or gate write's (OOM)
            if isinstance(reply, Exception):
                raise reply
        return Settled(int(outcome))

    def _put_back(self, key: str, due: Any, state: Any) -> None:
        """Undo the index removals of a success that was not recorded, one round trip more
        (two when the state is not known).

        The pending entry goes back, at the due time it had (a parked retry keeps its
        back-off), or if that is not known at now unless an entry came back meanwhile:
        whoever holds the operation may yet lose its message, and an entry of a settled one
        is harmless, since `Pending.stale` drops the settled entries it meets.

        The dead-letter entry goes back if the record is failed as read *after* our removal:
        the execution that took over may have dead-lettered it, its entry written before our
        removal. An entry written after our removal is still there; and when it was written
        before, the script that failed the record ran before it, hence before our read, which
        so sees `failed` (or a later state that took the entry off again: a reopen). Between
        our read and this write, a reopen could take an entry off that this puts back: the
        race every dead letter's index write already has (settle, then index), and a replay
        of an entry whose record is not failed goes by the record's state."""
        if state is None:
            state = self._redis.hget(key, "state")
        pipe = self._redis.pipeline(transaction=False)
        self._pending.restore(pipe, key, due=None if due is None else float(due))
        if state is not None and text(state) == State.FAILED:
            self._dead_letters.add(pipe, key, keep_seconds=self._retention.longest_seconds)
        pipe.execute()

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


def _send(pipe: Pipeline) -> list[Any]:
    """`_replies`, raising the first error as `pipe.execute()` does."""
    replies = _replies(pipe)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _replies(pipe: Pipeline) -> list[Any]:
    """`pipe.execute()` in one round trip, each command's error in its place in the replies
    (a connection error, when nothing came back, is raised).

    Given scripts, redis-py first asks Redis whether it holds them (`SCRIPT EXISTS`, a round
    trip of its own). Here they are taken as loaded, as they are but for a Redis just
    restarted or failed over: a script Redis does not know ran nothing (NOSCRIPT), so it is
    loaded and run again, on its own; if that fails too, its error takes its place."""
    scripts = {script.sha: script for script in pipe.scripts}
    commands = [args for args, _ in pipe.command_stack]
    pipe.scripts = set()
    replies: list[Any] = pipe.execute(raise_on_error=False)
    for at, reply in enumerate(replies):
        if isinstance(reply, NoScriptError) and commands[at][1] in scripts:
            _, sha, count, *rest = commands[at]
            try:
                replies[at] = scripts[sha](keys=rest[: int(count)], args=rest[int(count) :])
            except redis.RedisError as exc:
                replies[at] = exc
    return replies


def _read(reply: Any) -> Any:
    """A read's reply, or None when the read failed (the caller then does not know)."""
    return None if isinstance(reply, Exception) else reply
