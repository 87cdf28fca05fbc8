"""The claim protocol (docs/CLAIMS.md) as a hypothesis state machine, run against the real Lua
scripts on a real Redis.

One cancel of one meeting per run. Up to three executions at a time claim it, wait out the
settle time, reconcile through crm-get, mark the send, send and settle, by the rules
`worker.effects` and `worker.leases` follow, while the broker hands messages out again,
retries come back, executions crash or stop heartbeating, a new notification or an operator
reopens a dead letter, and ChiliPiper runs each call it received at any moment until it is
off the wire, or never. Time never sleeps: it moves by `Claims.clock_offset_ms`, which every
record script adds to Redis's clock; the model's clock is Redis's clock plus that offset,
and it is each execution's own clock too.

A call's deadline starts right before its send marker (`effects._Execution._attempt` makes
the `Deadline` before `mark_sending` and hands it to the gateway), so the model starts it at
the mark. Its request may leave later (the shared gate, in-call retries, a stall) as long
as the execution's own lease check lets it, but not after the deadline, and it is off the
wire `ON_THE_WIRE` after the deadline began. `ClaimProtocol.DEADLINE_FROM_MARK = False`
starts the deadline when the request leaves instead, as a gateway that starts its own
deadline does after a stall between `mark_sending` and the call: hypothesis then finds a
second cancel (a stall of 25 to 60 s is enough, shorter than the lease: the settle time
and the heartbeat's end count from the mark, the call's time on the wire from the gateway).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import make_settings, random_event_id
from tests.worker.store.conftest import RETENTION, cancel
from worker.domain.operations import State
from worker.settings import on_the_wire_seconds, timing_problems
from worker.store import Store, keys
from worker.store.claims import Claim, Doubt, Settled, Verdict
from worker.store.connection import text

# The protocol's timings: the defaults, a configuration `settings.timing_problems` accepts.
LEASE = 60.0  # CLAIM_LEASE_SECONDS
HEARTBEAT = 15.0  # CLAIM_HEARTBEAT_SECONDS
DEADLINE = 120.0  # CHILIPIPER_CALL_DEADLINE_SECONDS
ON_THE_WIRE = 140.0  # settings.on_the_wire_seconds: the deadline, a pool wait, a connect, a read
MARGIN = 2.0  # TIMING_MARGIN_SECONDS
SETTLE = 150.0  # CHILIPIPER_SETTLE_SECONDS
MAX_ATTEMPTS = 4  # TASK_MAX_ATTEMPTS, small enough to be reached
BACKOFF = 30.0  # a retry's back-off when nothing says when to come back
MAX_EXECUTIONS = 3
ASKED_AGAIN = 2  # broker copies, new notifications, replays: of each, per run


class Meeting(Enum):
    BOOKED = "BOOKED"
    CANCELLED = "CANCELLED"


@dataclass
class Call:
    """One irreversible call, from the moment its request left."""

    owner: str
    began: float  # when its deadline started
    sent_at: float
    status: str = "wire"  # wire | landed | lost (never lands) | refused (a 429: never ran)

    @property
    def closes(self) -> float:
        """After this it can no longer land."""
        return self.began + ON_THE_WIRE


@dataclass
class Message:
    """A task message for the operation: a delivery, a retry, or a copy the broker hands out
    again (`redelivered`)."""

    redelivered: bool
    due: float
    why: str


@dataclass
class Execution:
    """One run of the task, holding (or having held) a claim."""

    owner: str
    claim: Claim
    valid_until: float  # its lease by its own clock: last renew sent + LEASE
    renew_until: float  # no heartbeat after (the call's deadline)
    doubt: Doubt  # what it knows of an earlier call (effects._Execution.doubt)
    gated: bool = False
    reconciled: bool = False
    marked_at: float | None = None
    call: Call | None = None
    frozen: bool = False  # its heartbeat stopped
    lost: bool = False  # a renew found the claim taken


class ClaimProtocol(RuleBasedStateMachine):
    DEADLINE_FROM_MARK: ClassVar[bool] = True

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.claims = store.claims
        self.claims.clock_offset_ms = 0
        self._redis_ms: int | None = None
        self.owners = itertools.count(1)
        self.operation = cancel()
        self.key = keys.operation(self.operation)
        self.meeting = Meeting.BOOKED
        self.calls: list[Call] = []
        self.crm_gets: list[tuple[float, Meeting]] = []  # (asked at, answer)
        self.messages: list[Message] = []
        self.executions: list[Execution] = []
        self.tokens = 0  # successful claims so far: the record's fencing token
        self.asked = {"broker": 0, "salesforce": 0, "operator": 0}
        # The fan-out's ENQUEUE for the first notification, and its message.
        self.store.records.mark_queued([self.operation])
        self.messages.append(Message(redelivered=False, due=self.now(), why="notification"))

    def teardown(self) -> None:
        """Remove this operation's keys; the clock back to Redis's."""
        redis_ = self.store.redis
        redis_.delete(
            self.key,
            keys.sources(self.key),
            keys.audit_trail(self.key),
            keys.event_index(self.operation.crm_event_id),
        )
        redis_.zrem(keys.PENDING, self.key)
        redis_.zrem(keys.DEAD_LETTERS, self.key)
        self.claims.clock_offset_ms = 0

    # --- the model's clock and the record ----------------------------------------------------

    def now(self) -> float:
        """The model clock: Redis's clock plus the offset, as every record script reads it.
        Read once per step (`the_invariants_hold` forgets it): the scripts a step runs read
        Redis's clock a little later, so a time taken before a renew is never ahead of the
        lease, as an execution's own clock is not."""
        if self._redis_ms is None:
            seconds, microseconds = self.store.redis.time()
            self._redis_ms = seconds * 1000 + microseconds // 1000
        return (self._redis_ms + self.claims.clock_offset_ms) / 1000

    def record(self) -> dict[str, str]:
        names = ["state", "owner", "token", "lease_until", "doubt_since", "call_started_at"]
        values = self.store.redis.hmget(self.key, names)
        return {name: text(value) for name, value in zip(names, values, strict=True) if value}

    def holds(self, execution: Execution) -> bool:
        """Whether `execution` is the record's current holder (state, owner and token)."""
        record = self.record()
        return (
            record.get("state") == State.RUNNING
            and record.get("owner") == execution.owner
            and record.get("token") == execution.claim.token
        )

    # --- picking -----------------------------------------------------------------------------

    def pick(self, index: int) -> Execution:
        return self.executions[index % len(self.executions)]

    def due_messages(self) -> list[Message]:
        now = self.now()
        return [message for message in self.messages if message.due <= now]

    def in_flight(self) -> list[Call]:
        now = self.now()
        return [call for call in self.calls if call.status == "wire" and now <= call.closes]

    # --- the world ---------------------------------------------------------------------------

    def land(self, call: Call) -> None:
        """ChiliPiper runs the call: the cancel, and its e-mail to the customer."""
        assert self.meeting is Meeting.BOOKED, (
            f"second effect: the call {call} landed on a meeting already cancelled "
            f"(calls: {self.calls}, crm-gets: {self.crm_gets})"
        )
        self.meeting = Meeting.CANCELLED
        call.status = "landed"

    @precondition(lambda self: self.in_flight())
    @rule(index=st.integers(0, 5), lands=st.booleans())
    def call_fate(self, index: int, lands: bool) -> None:
        """A call on the wire lands now, or is lost for good."""
        calls = self.in_flight()
        call = calls[index % len(calls)]
        if lands:
            self.land(call)
        else:
            call.status = "lost"

    @rule(
        seconds=st.one_of(st.none(), st.sampled_from([15, 45, 61, 91, 151]), st.integers(1, 200)),
        late=st.booleans(),
    )
    def time_passes(self, seconds: int | None, late: bool) -> None:
        """The clock moves on (`None`: until the next message is due), in heartbeat-sized
        steps: each execution whose heartbeat still runs renews its lease on the way; a call
        whose deadline passes on the way lands at its last moment (`late`) or never."""
        if seconds is None:
            now = self.now()
            waiting = [message.due - now for message in self.messages if message.due > now]
            seconds = math.ceil(min(waiting, default=1.0))
        left = float(seconds)
        while left > 0:
            # Heartbeat-sized steps while executions run; one jump when none does.
            step = min(HEARTBEAT, left) if self.executions else left
            left -= step
            horizon = self.now() + step
            for call in self.calls:
                if call.status == "wire" and call.closes <= horizon:
                    if late:
                        self.land(call)
                    else:
                        call.status = "lost"
            self.claims.clock_offset_ms += int(step * 1000)
            self.heartbeat()

    def heartbeat(self) -> None:
        """`leases.Heartbeat.beat`: renew every lease held whose heartbeat is due."""
        for execution in self.executions:
            sent_at = self.now()
            if execution.frozen or execution.lost or sent_at >= execution.renew_until:
                continue
            expected = self.holds(execution)
            until = self.claims.renew(self.operation, execution.claim, LEASE)
            assert (until is not None) == expected, "a renew must succeed iff it holds the claim"
            if until is None:
                execution.lost = True
            else:
                execution.valid_until = max(execution.valid_until, sent_at + LEASE)

    # --- the broker and the people -----------------------------------------------------------

    @precondition(lambda self: len(self.executions) < MAX_EXECUTIONS and self.due_messages())
    @rule(index=st.integers(0, 5))
    def deliver(self, index: int) -> None:
        """A worker takes a due message and claims the operation (`effects.perform`)."""
        due = self.due_messages()
        message = due[index % len(due)]
        self.messages.remove(message)
        before = self.record()
        owner = f"exec-{next(self.owners)}"
        asked_at = self.now()
        claim = self.claims.claim(self.operation, owner, LEASE, redelivered=message.redelivered)
        live = int(before.get("lease_until", "0")) > round(claim.now * 1000)
        state = before.get("state")
        expected = (
            Verdict.DONE
            if state == State.SUCCEEDED
            else Verdict.FAILED
            if state == State.FAILED
            else Verdict.BUSY
            if state == State.RUNNING and live
            else Verdict.CLAIMED
        )
        assert claim.verdict is expected, (before, claim)
        if claim.verdict is Verdict.BUSY:
            # RetryLater(delay=busy_for): back once the live claim runs out, no attempt spent.
            self.messages.append(Message(False, self.now() + claim.busy_for, "busy"))
            return
        if claim.verdict is not Verdict.CLAIMED:
            return  # stand down: done, or a dead letter; the message is acknowledged
        self.tokens += 1
        assert claim.token == str(self.tokens), "each claim takes the next fencing token"
        self.executions.append(
            Execution(
                owner=owner,
                claim=claim,
                valid_until=asked_at + LEASE,
                renew_until=asked_at + DEADLINE + MARGIN,
                doubt=Doubt.KEEP if claim.in_doubt else Doubt.NONE,
            )
        )

    @precondition(lambda self: min(self.asked.values()) < ASKED_AGAIN)
    @rule(who=st.sampled_from(["broker", "salesforce", "operator"]))
    def asked_again(self, who: str) -> None:
        """The operation is asked for again (by the next one who still may, when `who` may
        not). The broker hands a message out again, flagged as redelivered (its visibility
        timeout ran out under a slow execution, or its ack was lost). Salesforce sends a new
        notification for the event: ENQUEUE (it reopens a dead letter) and the fan-out's
        message. An operator replays it, not forced: a dead letter is reopened, an unsettled
        one queued again, a running or succeeded one left alone."""
        order = ["broker", "salesforce", "operator"]
        start = order.index(who)
        who = next(name for name in order[start:] + order[:start] if self.asked[name] < ASKED_AGAIN)
        self.asked[who] += 1
        now = self.now()
        if who == "broker":
            self.messages.append(Message(True, now, "copy"))
        elif who == "salesforce":
            source = random_event_id("04l")
            self.store.records.mark_queued([dataclasses.replace(self.operation, source_id=source)])
            self.messages.append(Message(False, now, "new notification"))
        else:
            previous, _ = self.claims.reopen(self.operation, force=False, actor="cli:test")
            if previous in (State.FAILED, State.QUEUED, State.RETRYING, State.IN_DOUBT):
                self.messages.append(Message(False, now, "replay"))

    # --- an execution, step by step (effects._Execution) --------------------------------------

    def finish(self, execution: Execution) -> None:
        self.executions.remove(execution)

    def retry_later(self, delay: float, why: str) -> None:
        self.messages.append(Message(False, self.now() + delay, why))

    def release(self, execution: Execution, delay: float, why: str) -> None:
        """Nothing was sent: hand the claim back uncounted and come back later (or, when the
        claim is another's now, stand down: LOST_CLAIM)."""
        expected = self.holds(execution)
        released = self.claims.release(self.operation, execution.claim)
        assert released == expected, "a release must succeed iff it holds the claim"
        self.finish(execution)
        if released:
            self.retry_later(delay, why)

    def settle(self, execution: Execution, state: State, doubt: Doubt) -> None:
        """Record the outcome (only the holder can); RETRYING and IN_DOUBT come back, and so
        does a dead letter that a notification asked for again during the run (REOPENED)."""
        expected = self.holds(execution)
        settled = self.claims.settle(
            self.operation, execution.claim, state, doubt=doubt, error=f"model: {state}"
        )
        assert bool(settled) == expected, "a settle must succeed iff it holds the claim"
        self.finish(execution)
        if settled is Settled.REOPENED:
            self.retry_later(BACKOFF, "reopened")
        elif settled and state in (State.RETRYING, State.IN_DOUBT):
            self.retry_later(BACKOFF, str(state))

    def settle_error(self, execution: Execution, *, give_up: bool = False) -> None:
        """A transient failure (`_Execution.run`): retry, in doubt if it is, or a dead letter
        once the attempts are spent."""
        if give_up or execution.claim.attempts >= MAX_ATTEMPTS:
            self.settle(execution, State.FAILED, execution.doubt)
        else:
            state = State.RETRYING if execution.doubt is Doubt.NONE else State.IN_DOUBT
            self.settle(execution, state, execution.doubt)

    @precondition(lambda self: self.executions)
    @rule(
        index=st.integers(0, 2),
        steps=st.integers(1, 4),
        hitch=st.sampled_from(["", "", "", "", "", "transient", "give up", "deferred"]),
        outcome=st.sampled_from(["answered", "timeout", "timeout, give up", "429", "refused"]),
    )
    def moves_on(self, index: int, steps: int, hitch: str, outcome: str) -> None:
        """An execution moves on (`_Execution._attempt`): before its call, its next `steps`
        (settle gate, crm-get, mark, send), then a hitch if one comes before anything is
        sent; once its call is sent, what it hears of it (its `outcome`)."""
        execution = self.pick(index)
        if execution.call is None:
            self.next_steps(execution, steps, hitch)
        else:
            self.hears(execution, outcome)

    def next_steps(self, execution: Execution, steps: int, hitch: str) -> None:
        """Its next steps, then the hitch: crm-get or the call's first request failed (retry,
        in doubt while not reconciled); a status nobody knows (a dead letter, with the doubt
        it has); the shared limits hold it back (release, come back)."""
        for _ in range(steps):
            if execution not in self.executions or execution.call is not None:
                return
            in_doubt = execution.claim.in_doubt
            if in_doubt and not execution.gated:
                self.settle_gate(execution)
            elif in_doubt and not execution.reconciled:
                self.reconcile(execution)
            elif execution.marked_at is None:
                self.mark_sending(execution)
            else:
                self.send(execution)
        if execution not in self.executions or execution.call is not None:
            return
        if hitch == "deferred":
            self.release(execution, BACKOFF, "deferred")
        elif hitch:
            self.settle_error(execution, give_up=hitch == "give up")

    def settle_gate(self, execution: Execution) -> None:
        """`_reconcile`: in doubt and the earlier call may still land: release, come back."""
        wait = execution.claim.settle_wait(SETTLE)
        if wait > 0:
            self.release(execution, wait, "settle")
        else:
            execution.gated = True

    def reconcile(self, execution: Execution) -> None:
        """crm-get: cancelled already → succeeded without a call; booked → may send."""
        self.crm_gets.append((self.now(), self.meeting))
        if self.meeting is Meeting.CANCELLED:
            self.settle(execution, State.SUCCEEDED, Doubt.NONE)
        else:
            execution.reconciled = True
            execution.doubt = Doubt.NONE

    def mark_sending(self, execution: Execution) -> None:
        """`Lease.mark_sending`: renew and mark the send; a lost claim sends nothing."""
        sent_at = self.now()
        expected = self.holds(execution)
        marked = self.claims.mark_sending(self.operation, execution.claim, LEASE)
        assert marked == expected, "mark_sending must succeed iff it holds the claim"
        if not marked:
            execution.lost = True
            self.release(execution, BACKOFF, "lost")  # ClaimLost
            return
        execution.marked_at = sent_at
        execution.valid_until = max(execution.valid_until, sent_at + LEASE)
        execution.renew_until = sent_at + DEADLINE

    def send(self, execution: Execution) -> None:
        """The request leaves, if the lease still holds by the execution's own clock
        (`Lease.check`, the gateway's `before_send`); else ClaimLost: release."""
        now = self.now()
        if execution.lost or now >= execution.valid_until:
            self.release(execution, BACKOFF, "own clock")
            return
        assert execution.marked_at is not None
        began = execution.marked_at if self.DEADLINE_FROM_MARK else now
        if now >= began + DEADLINE:
            # No request starts after the call's deadline (`Deadline.before_request`): a
            # ConnectTimeout, never sent.
            self.settle_error(execution)
            return
        for earlier in self.calls:
            if earlier.status == "refused":
                continue
            cleared = [
                asked
                for asked, seen in self.crm_gets
                if seen is Meeting.BOOKED and earlier.began + SETTLE <= asked <= now
            ]
            assert cleared, (
                f"{execution.owner} sends a second call at {now} while {earlier} was never "
                f"reconciled after it settled (crm-gets: {self.crm_gets})"
            )
        execution.call = Call(execution.owner, began=began, sent_at=now)
        self.calls.append(execution.call)

    def hears(self, execution: Execution, outcome: str) -> None:
        """What the execution hears of its call. Answered: it ran (now, if not yet). A
        timeout, a dropped connection, a 502: it may still land (Doubt.CALL). A 429 or a
        permanent refusal: it never ran."""
        call = execution.call
        assert call is not None
        if outcome == "answered" and call.status in ("wire", "landed"):
            if call.status == "wire":
                self.land(call)
            self.settle(execution, State.SUCCEEDED, Doubt.NONE)
        elif outcome in ("429", "refused") and call.status in ("wire", "lost"):
            call.status = "refused"
            self.settle_error(execution, give_up=outcome == "refused")
        else:
            execution.doubt = Doubt.CALL
            self.settle_error(execution, give_up=outcome == "timeout, give up")

    @precondition(lambda self: self.executions)
    @rule(index=st.integers(0, 2), crash=st.booleans())
    def trouble(self, index: int, crash: bool) -> None:
        """The worker dies mid-way (nothing settled; the broker hands its message out again,
        flagged as redelivered), or the execution's heartbeat stops (a stall, Redis out of
        reach: it goes on later, its lease running out)."""
        execution = self.pick(index)
        if crash:
            self.finish(execution)
            self.messages.append(Message(True, self.now(), "crash"))
        else:
            execution.frozen = True

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def the_invariants_hold(self) -> None:
        """CLAIMS.md's invariants, after every step (with the checks made on the way):

        1. No second effect: no call lands on a meeting already cancelled (`land`).
        2. One live lease at a time, the record's holder's (`one_live_lease`); only the
           holder's renew, mark, release and settle succeed (asserted where they run).
        3. A call follows an earlier one only after a crm-get, asked at or after that call's
           start + SETTLE, saw the meeting booked (`send`).
        4. Never forgotten (`never_forgotten`); and no success recorded that did not happen.
        """
        self._redis_ms = None
        record = self.record()
        self.one_live_lease(record)
        self.never_forgotten(record)
        if record.get("state") == State.SUCCEEDED:
            assert self.meeting is Meeting.CANCELLED, "recorded a success that did not happen"

    def one_live_lease(self, record: dict[str, str]) -> None:
        """At most one execution holds a live lease (by its own clock, which never runs
        ahead of the record's), and it is the record's holder, with the latest token."""
        now = self.now()
        live = [e for e in self.executions if not e.lost and now < e.valid_until]
        assert len(live) <= 1, f"two live leases at {now}: {live}"
        if live:
            assert record.get("state") == State.RUNNING, (live[0], record)
            assert (record.get("owner"), record.get("token")) == (
                live[0].owner,
                live[0].claim.token,
            ), (live[0], record)
        if record.get("state") == State.RUNNING:
            assert record.get("token") == str(self.tokens), record

    def never_forgotten(self, record: dict[str, str]) -> None:
        """Succeeded or failed; or a message will run it; or it is running and its holder is
        still at work (a holder that crashed gave its message back)."""
        state = record.get("state")
        if state in (State.SUCCEEDED, State.FAILED) or self.messages:
            return
        assert state == State.RUNNING, f"forgotten: {record}, no message, no execution"
        holder = [e for e in self.executions if e.owner == record.get("owner")]
        assert holder, f"forgotten: {record}, its holder gone without a message"


RUN = settings(
    max_examples=600,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_the_model_times_are_a_valid_configuration() -> None:
    settings_ = make_settings(
        "redis://127.0.0.1:1/0",
        "http://127.0.0.1:1/mcp",
        claim_lease_seconds=LEASE,
        claim_heartbeat_seconds=HEARTBEAT,
        chilipiper_call_deadline_seconds=DEADLINE,
        chilipiper_timeout_seconds=10,
        chilipiper_settle_seconds=SETTLE,
    )
    assert timing_problems(settings_) == []
    assert on_the_wire_seconds(settings_) == ON_THE_WIRE


def test_the_claim_protocol_sends_one_cancel(client: redis.Redis) -> None:
    store = Store(client, RETENTION)
    run_state_machine_as_test(lambda: ClaimProtocol(store), settings=RUN)


class SkipsTheSettleGate(ClaimProtocol):
    """A broken execution: it reconciles an in-doubt claim at once."""

    def settle_gate(self, execution: Execution) -> None:
        execution.gated = True


def abandoned_then_claimed_again(machine: ClaimProtocol) -> None:
    """A cancel is sent and times out; its retry claims the operation 30 s later."""
    for step, args in [
        (machine.deliver, (0,)),
        (machine.moves_on, (0, 2, "", "")),  # mark, send
        (machine.moves_on, (0, 1, "", "timeout")),  # in doubt since the mark
        (machine.time_passes, (None, False)),  # the retry is due
        (machine.deliver, (0,)),
    ]:
        step(*args)
        machine.the_invariants_hold()


@pytest.mark.parametrize("lands_late", [False, True])
def test_an_abandoned_cancel_is_sent_again_only_once_it_settled(
    client: redis.Redis, lands_late: bool
) -> None:
    """The path the machine exists for, step by step: the retry that claims it in doubt
    hands it back until the settle time; then crm-get decides, and the first call, which
    could land until then, either did (no second call) or never will (one more call)."""
    machine = ClaimProtocol(Store(client, RETENTION))
    try:
        abandoned_then_claimed_again(machine)
        for step, args in [
            (machine.moves_on, (0, 4, "", "")),  # the settle gate: released
            (machine.time_passes, (None, lands_late)),  # the settle time; the call's fate
            (machine.deliver, (0,)),
            (machine.moves_on, (0, 4, "", "")),  # gate, crm-get, (mark, send)
        ]:
            step(*args)
            machine.the_invariants_hold()
        [(_, seen)] = machine.crm_gets
        if lands_late:
            assert seen is Meeting.CANCELLED
            assert [call.status for call in machine.calls] == ["landed"]
        else:
            assert seen is Meeting.BOOKED
            assert [call.status for call in machine.calls] == ["lost", "wire"]
            machine.moves_on(0, 1, "", "answered")
            machine.the_invariants_hold()
        assert machine.record()["state"] == State.SUCCEEDED
        assert machine.meeting is Meeting.CANCELLED
    finally:
        machine.teardown()


def test_the_machine_catches_a_reconcile_before_the_settle_time(client: redis.Redis) -> None:
    """The assertions can fail: an execution that skips the settle gate sends again while
    the first call may still land."""
    machine = SkipsTheSettleGate(Store(client, RETENTION))
    try:
        abandoned_then_claimed_again(machine)
        with pytest.raises(AssertionError, match="never reconciled after it settled"):
            machine.moves_on(0, 4, "", "")  # gate (skipped), crm-get, mark, send
    finally:
        machine.teardown()
