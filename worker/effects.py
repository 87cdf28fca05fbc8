"""Performing one operation exactly once: claim, (settle, reconcile,) call ChiliPiper, settle.

Plain functions over a Runtime; the Celery task around them only unpacks arguments and turns
`RetryLater` into a retry. The rules (ARCHITECTURE.md, "Exactly-once effects"; CLAIMS.md):

- Every execution claims under an owner of its own; a live claim elsewhere means "come back
  after its lease", whoever holds it, and costs no attempt.
- While it holds the claim, the process's heartbeat renews the lease; right before an
  irreversible call the lease is renewed again and the send is marked, durably, and each
  request checks the lease by this worker's own clock before it leaves.
- An operation in doubt (an earlier call may have taken effect unanswered) is reconciled
  through `crm-get`, and no sooner than `CHILIPIPER_SETTLE_SECONDS` after that call began:
  the call is sent again only if the meeting is positively still booked.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from enum import StrEnum

from worker import clock, logs, metrics
from worker.chilipiper import ToolResult
from worker.chilipiper.deadline import Deadline
from worker.chilipiper.gate import DeferredSuccesses
from worker.domain.meetings import MeetingStatus
from worker.domain.operations import Action, Operation, State
from worker.errors import (
    ClaimBusy,
    ClaimLost,
    CredentialsRefused,
    CrmhookError,
    DeferredError,
    Held,
    InDoubtError,
    NoMeetingError,
    NotDurable,
    PermanentError,
    RequestRefused,
    RetryableError,
    ToolError,
    UnknownAccount,
    UnknownTool,
    WorkerStopping,
)
from worker.leases import Lease
from worker.settings import TIMING_MARGIN_SECONDS
from worker.store import keys
from worker.store.claims import Claim, Doubt, Settled, Verdict
from worker.tasks.runtime import Runtime

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RECONCILED = "reconciled"  # it had taken effect already (interrupted call, "already...")
    ALREADY_DONE = "already_done"
    ALREADY_FAILED = "already_failed"  # a dead letter: a new notification or a replay reopens it
    FAILED = "failed"  # dead letter
    LOST_CLAIM = "lost_claim"  # another execution took it over: that one finishes it
    HELD = "held"  # the safety valves keep it for an operator (store.holds)


STAND_DOWN = {Verdict.DONE: Outcome.ALREADY_DONE, Verdict.FAILED: Outcome.ALREADY_FAILED}


@dataclass
class RetryLater(Exception):
    """Run the operation again later: after `delay` seconds when given (the shared limits,
    a live claim or the settle time said when), else after a back-off set by the `attempts`
    so far."""

    error: CrmhookError
    attempts: int
    delay: float | None = None


def perform(
    runtime: Runtime, operation: Operation, *, owner: str, redelivered: bool = False
) -> Outcome:
    """Run `operation` unless it already succeeded; raise RetryLater to be called again.

    `owner` names the delivery (its task ID); the claim's owner is this execution's own,
    `owner` and a random suffix, since a message the broker delivers again keeps its task ID.
    `redelivered`: the broker delivered the message before (a holder gone without a send
    marker is then in doubt: `Claims.claim`).
    Permanent errors, and transient ones past TASK_MAX_ATTEMPTS or TASK_MAX_AGE_SECONDS, end
    as a dead letter (state `failed`).
    """
    settings = runtime.settings
    asked_at = clock.now()
    claim = runtime.store.claims.claim(
        operation,
        f"{owner}:{uuid.uuid4().hex[:12]}",
        settings.claim_lease_seconds,
        redelivered=redelivered,
    )
    if claim.verdict is Verdict.BUSY:
        busy = ClaimBusy(
            f"{keys.operation(operation)}: claimed elsewhere", retry_after=claim.busy_for
        )
        log.info("%s: busy elsewhere, back in %.0f s", keys.operation(operation), claim.busy_for)
        raise RetryLater(busy, claim.attempts, delay=claim.busy_for)
    if claim.verdict is not Verdict.CLAIMED:
        log.info("%s: %s, standing down", keys.operation(operation), claim.verdict)
        return STAND_DOWN[claim.verdict]
    # Reading the meeting before the call may take a whole call's deadline too.
    held_for = settings.chilipiper_call_deadline_seconds + TIMING_MARGIN_SECONDS
    with (
        runtime.heartbeat.hold(claim, operation, valid_from=asked_at, renew_for=held_for) as lease,
        # The gate's record of a call's success rides in the settle's round trip.
        runtime.gate.deferring_successes() as successes,
        logs.bound(attempt=claim.attempts),
    ):
        return _Execution(runtime, operation, claim, lease, successes).run()


def _nothing_ran(error: PermanentError) -> bool:
    """Whether a permanent error says the call did not run: ChiliPiper (or the MCP server,
    or Scalekit) refused it with a 4xx, our credentials, an invalid request or a tool it
    does not know."""
    if isinstance(error, RequestRefused | UnknownTool | CredentialsRefused | UnknownAccount):
        return True
    return error.status is not None and 400 <= error.status < 500


class _Execution:
    """One execution holding the claim of one operation, and what it learnt on the way."""

    def __init__(
        self,
        runtime: Runtime,
        operation: Operation,
        claim: Claim,
        lease: Lease,
        successes: DeferredSuccesses,
    ) -> None:
        self.runtime = runtime
        self.operation = operation
        self.claim = claim
        self.lease = lease
        # The gate's successes not yet recorded: the settle sends them with its own writes.
        self.successes = successes
        self.key = keys.operation(operation)
        # Whether an earlier call may still take effect unseen, as far as this execution knows.
        self.doubt = Doubt.KEEP if claim.in_doubt else Doubt.NONE

    def run(self) -> Outcome:
        settings, claim = self.runtime.settings, self.claim
        try:
            return self._attempt()
        except Held as held:
            return self._hold(held)
        except (DeferredError, ClaimLost, NotDurable, WorkerStopping) as exc:
            # Nothing was sent: hand the claim back uncounted and come back when the limit,
            # pause or circuit allows (or soon, for a lease or a replica that failed us).
            if not self.runtime.store.claims.release(self.operation, claim):
                log.error("%s: %s; the claim is another execution's now", self.key, exc)
                return Outcome.LOST_CLAIM
            if isinstance(exc, WorkerStopping):
                raise  # the message goes back to the queue as it is
            delay = exc.retry_after if isinstance(exc, DeferredError) else None
            log.info("%s: not sent (%s), back later", self.key, exc)
            raise RetryLater(exc, claim.attempts - 1, delay=delay) from exc
        except PermanentError as exc:
            return self._settle_error(State.FAILED, str(exc))
        except (RetryableError, InDoubtError) as exc:
            if claim.attempts >= settings.task_max_attempts:
                reason = f"gave up after {claim.attempts} attempts: {exc}"
            elif claim.age_seconds >= settings.task_max_age_seconds:
                reason = f"gave up after {claim.age_seconds:.0f} s: {exc}"
            else:
                state = State.RETRYING if self.doubt is Doubt.NONE else State.IN_DOUBT
                if self._settle_error(state, str(exc)) is Outcome.LOST_CLAIM:
                    return Outcome.LOST_CLAIM
                raise RetryLater(exc, claim.attempts) from exc
            return self._settle_error(State.FAILED, reason)

    def _attempt(self) -> Outcome:
        action, gateway = self.operation.action, self.runtime.gateway
        if action.irreversible and self.claim.in_doubt:
            current = self._reconcile()
            metrics.RECONCILIATIONS.labels(
                action.value, "still_booked" if current is None else "done"
            ).inc()
            if current is not None:
                return self._succeed(current, Outcome.RECONCILED)
            self.doubt = Doubt.NONE  # crm-get saw it still booked, after the settle time
            log.warning("%s: still booked once settled; sending it", self.key)
        if not action.irreversible:
            return self._succeed(gateway.call(action, self.operation.crm_event_id))
        # The call's deadline starts before its send marker (Redis's `call_started_at`), so
        # the settle time reckoned from the marker covers every request it may send.
        seconds = self.runtime.settings.chilipiper_call_deadline_seconds
        deadline = Deadline(seconds)
        self._not_stopping()
        self.lease.mark_sending(seconds)
        try:
            result = gateway.call(
                action,
                self.operation.crm_event_id,
                before_send=self._before_send,
                deadline=deadline,
            )
        except InDoubtError:
            self.doubt = Doubt.CALL  # it may land until the settle time after it began
            raise
        except ToolError as refused:
            return self._after_refusal(refused)
        except PermanentError as failed:
            if _nothing_ran(failed):
                raise
            # An answer we cannot read (a malformed result, an undecodable body...): the
            # call may well have run. In doubt, so crm-get decides once it has settled.
            self.doubt = Doubt.CALL
            raise InDoubtError(f"{failed} (the call may have run)", tool=failed.tool) from failed
        return self._succeed(result)

    def _reconcile(self) -> ToolResult | None:
        """crm-get's answer if the earlier call took effect; None if the meeting is still
        booked. Asked no sooner than the settle time after that call began: before, the
        claim is handed back and the operation comes back then."""
        wait = self.claim.settle_wait(self.runtime.settings.chilipiper_settle_seconds)
        if wait > 0:
            raise DeferredError(
                f"in doubt: crm-get is asked once the earlier call can no longer take effect, "
                f"in {wait:.0f} s",
                retry_after=wait,
            )
        return self._in_effect()

    def _after_refusal(self, refused: ToolError) -> Outcome:
        """ChiliPiper refused the call ("already cancelled"...): fine if the meeting is in
        the state we wanted, else a failure.

        A refusal without a status ChiliPiper wrote ("Error executing tool: timeout") may be
        the MCP server giving up on a cancel that still runs: in doubt from the call's start,
        and a meeting still booked is asked about again once that call has settled."""
        if isinstance(refused, NoMeetingError):
            raise refused
        unreadable = refused.status is None
        if unreadable:
            self.doubt = Doubt.CALL
        try:
            current = self._in_effect()
        except (DeferredError, RetryableError, InDoubtError) as unchecked:
            # The check could not run yet: the refusal may mean it was done already, so the
            # next try reconciles before it sends anything.
            if self.doubt is Doubt.NONE:
                self.doubt = Doubt.KEEP
            raise InDoubtError(
                f"{refused}; crm-get could not check the meeting yet: {unchecked}",
                tool=refused.tool,
            ) from unchecked
        except PermanentError as unclear:
            raise PermanentError(f"{refused}; {unclear}", tool=refused.tool) from unclear
        if current is None and unreadable:
            raise InDoubtError(
                f"{refused}; crm-get still shows the meeting booked, and the call may yet "
                "take effect",
                tool=refused.tool,
            )
        if current is None:
            raise refused
        return self._succeed(current, Outcome.RECONCILED)

    def _in_effect(self) -> ToolResult | None:
        """`crm-get`'s answer if the meeting already is in the state the operation wants;
        None if it is positively still booked, so the call must be sent.

        Raises PermanentError for anything else (no status, an unknown one, another final
        one): calling again blind could email a customer twice, so an operator decides,
        shown the status as ChiliPiper wrote it.
        """
        operation = self.operation
        current = self.runtime.gateway.call(Action.GET, operation.crm_event_id)
        meeting, wanted = current.meeting, operation.action.final_status
        if meeting.status is not None and meeting.status is wanted:
            return current
        if meeting.status is MeetingStatus.BOOKED:
            return None
        seen = (
            f"status {meeting.status_as_sent!r}" if meeting.status_as_sent else "no meeting status"
        )
        raise PermanentError(
            f"in doubt: crm-get reported {seen} for {operation.crm_event_id}, not {wanted}; "
            "check the meeting in ChiliPiper, then replay (or force) this operation",
            tool=Action.GET.tool,
        )

    def _succeed(self, result: ToolResult, outcome: Outcome = Outcome.SUCCEEDED) -> Outcome:
        record = result.to_record()
        if outcome is Outcome.RECONCILED:
            record["reconciled"] = True
        claims = self.runtime.store.claims
        settled = claims.settle(
            self.operation,
            self.claim,
            State.SUCCEEDED,
            result=record,
            also=self.successes.record_into,
        )
        if not settled:
            log.error("%s: succeeded, but the claim had been taken over", self.key)
            return Outcome.LOST_CLAIM
        log.info(
            "%s %s: %s",
            result.tool,
            self.operation.crm_event_id,
            outcome,
            extra={"tool": result.tool, "outcome": str(outcome)},
        )
        return outcome

    def _hold(self, held: Held) -> Outcome:
        """Nothing was sent: the claim goes back as if never taken, and the operation waits
        for an operator (`crmhook resume`, `release-held` or `drop-held`)."""
        if not self.runtime.store.claims.release(self.operation, self.claim):
            log.error("%s: %s; the claim is another execution's now", self.key, held)
            return Outcome.LOST_CLAIM
        if not self.runtime.store.holds.hold(self.operation, held.reason):
            log.info("%s: no longer held (released meanwhile); again soon", self.key)
            raise RetryLater(held, self.claim.attempts - 1, delay=1.0) from held
        log.warning("%s: %s", self.key, held, extra={"outcome": Outcome.HELD.value})
        return Outcome.HELD

    def _before_send(self) -> None:
        """Right before each request of an irreversible call leaves (after the gate's wait):
        the claim still holds by this worker's clock, and this worker is not stopping."""
        self.lease.check()
        self._not_stopping()

    def _not_stopping(self) -> None:
        if self.runtime.stopping.is_set():
            raise WorkerStopping(f"{self.key}: this worker is stopping; not sent")

    def _settle_error(self, state: State, error: str) -> Outcome:
        log.warning("%s: %s (%s)", self.key, state, error)
        claims = self.runtime.store.claims
        settled = claims.settle(
            self.operation,
            self.claim,
            state,
            doubt=self.doubt,
            error=error,
            also=self.successes.record_into,  # a permanent error was an answer, to the gate
        )
        if settled is Settled.REOPENED:
            log.info("%s: asked for again during the run: a fresh budget", self.key)
            raise RetryLater(PermanentError(error), 0)
        if not settled:
            return Outcome.LOST_CLAIM
        return Outcome.FAILED
