"""Performing one operation exactly once: claim, (reconcile,) call ChiliPiper, settle.

Plain functions over a Runtime; the Celery task around them only unpacks arguments and turns
`RetryLater` into a retry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from worker.chilipiper import ToolResult
from worker.domain.meetings import MeetingStatus
from worker.domain.operations import Action, Operation, State
from worker.errors import (
    DeferredError,
    GatewayError,
    InDoubtError,
    NoMeetingError,
    PermanentError,
    RetryableError,
    ToolError,
)
from worker.store import keys
from worker.store.claims import Claim, Verdict
from worker.tasks.runtime import Runtime

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RECONCILED = "reconciled"  # it had taken effect already (interrupted call, "already...")
    ALREADY_DONE = "already_done"
    ALREADY_FAILED = "already_failed"  # a redelivery of what failed permanently
    BUSY = "busy"  # another worker holds a live claim; it finishes or its message returns
    FAILED = "failed"  # dead letter
    LOST_CLAIM = "lost_claim"


STAND_DOWN = {
    Verdict.DONE: Outcome.ALREADY_DONE,
    Verdict.BUSY: Outcome.BUSY,
    Verdict.FAILED: Outcome.ALREADY_FAILED,
}


@dataclass
class RetryLater(Exception):
    """Run the operation again later: after `delay` seconds when given (the shared limits
    said when), else after a back-off set by the `attempts` so far."""

    error: GatewayError
    attempts: int
    delay: float | None = None


def perform(runtime: Runtime, operation: Operation, *, owner: str) -> Outcome:
    """Run `operation` unless it already succeeded; raise RetryLater to be called again.

    `owner` identifies this delivery (the task ID). Permanent errors, and transient ones past
    TASK_MAX_ATTEMPTS or TASK_MAX_AGE_SECONDS, end as a dead letter (state `failed`).
    """
    settings = runtime.settings
    claim = runtime.store.claims.claim(operation, owner, settings.claim_lease_seconds)
    if claim.verdict is not Verdict.CLAIMED:
        log.info("%s: %s, standing down", keys.operation(operation), claim.verdict)
        return STAND_DOWN[claim.verdict]
    try:
        return _attempt(runtime, operation, claim)
    except DeferredError as exc:
        # Nothing was sent: hand the claim back uncounted and come back when the limit,
        # pause or circuit allows.
        runtime.store.claims.release(operation, claim)
        log.info("%s deferred %.1f s: %s", keys.operation(operation), exc.retry_after, exc)
        raise RetryLater(exc, claim.attempts - 1, delay=exc.retry_after) from exc
    except PermanentError as exc:
        return _settle_error(runtime, operation, claim, State.FAILED, str(exc))
    except (RetryableError, InDoubtError) as exc:
        if claim.attempts >= settings.task_max_attempts:
            reason = f"gave up after {claim.attempts} attempts: {exc}"
        elif claim.age_seconds >= settings.task_max_age_seconds:
            reason = f"gave up after {claim.age_seconds:.0f} s: {exc}"
        else:
            # Still in doubt until a crm-get has answered: a check that failed transiently
            # leaves the operation as doubtful as it was, so the next run checks again.
            doubtful = operation.action.irreversible and claim.after_interruption
            in_doubt = isinstance(exc, InDoubtError) or doubtful
            state = State.IN_DOUBT if in_doubt else State.RETRYING
            _settle_error(runtime, operation, claim, state, str(exc))
            raise RetryLater(exc, claim.attempts) from exc
        return _settle_error(runtime, operation, claim, State.FAILED, reason)


def _attempt(runtime: Runtime, operation: Operation, claim: Claim) -> Outcome:
    action, store = operation.action, runtime.store
    if action.irreversible and claim.after_interruption:
        current = _in_effect(runtime, operation)
        if current is not None:
            return _succeed(runtime, operation, claim, current, Outcome.RECONCILED)
        log.warning(
            "%s was interrupted before it took effect; sending it again", keys.operation(operation)
        )
    if action.irreversible and not store.claims.renew(
        operation, claim, runtime.settings.claim_lease_seconds
    ):
        # Fencing: another worker took over while we checked; it owns the call now.
        log.error("%s: claim lost before the call; not sending it", keys.operation(operation))
        return Outcome.LOST_CLAIM
    try:
        result = runtime.gateway.call(action, operation.crm_event_id)
    except ToolError as refused:
        # "Already cancelled": fine if the meeting is in the state we wanted, else a failure.
        if action.irreversible and not isinstance(refused, NoMeetingError):
            try:
                current = _in_effect(runtime, operation)
            except (DeferredError, RetryableError, InDoubtError) as unchecked:
                # The check could not run yet: the refusal may mean it was done already, so
                # the next try reconciles before it sends anything.
                raise InDoubtError(
                    f"{refused}; crm-get could not check the meeting yet: {unchecked}",
                    tool=refused.tool,
                ) from unchecked
            except PermanentError as unclear:
                raise PermanentError(f"{refused}; {unclear}", tool=refused.tool) from unclear
            if current is not None:
                return _succeed(runtime, operation, claim, current, Outcome.RECONCILED)
        raise
    return _succeed(runtime, operation, claim, result, Outcome.SUCCEEDED)


def _in_effect(runtime: Runtime, operation: Operation) -> ToolResult | None:
    """`crm-get`'s answer if the meeting already is in the state `operation` wants; None if
    it is still booked, so the call must be sent.

    Raises PermanentError for anything else (no status, an unknown one, another final one):
    calling again blind could email a customer twice, so an operator decides, shown the
    status as ChiliPiper wrote it.
    """
    current = runtime.gateway.call(Action.GET, operation.crm_event_id)
    meeting, wanted = current.meeting, operation.action.final_status
    if meeting.status is not None and meeting.status is wanted:
        return current
    if meeting.status is MeetingStatus.BOOKED:
        return None
    seen = f"status {meeting.status_as_sent!r}" if meeting.status_as_sent else "no meeting status"
    raise PermanentError(
        f"in doubt: crm-get reported {seen} for {operation.crm_event_id}, not {wanted}; "
        "check ChiliPiper before replaying",
        tool=Action.GET.tool,
    )


def _succeed(
    runtime: Runtime, operation: Operation, claim: Claim, result: ToolResult, outcome: Outcome
) -> Outcome:
    record = result.to_record()
    if outcome is Outcome.RECONCILED:
        record["reconciled"] = True
    if not runtime.store.claims.settle(operation, claim, State.SUCCEEDED, result=record):
        log.error("%s: succeeded, but the claim had been taken over", keys.operation(operation))
        return Outcome.LOST_CLAIM
    log.info("%s %s: %s", result.tool, operation.crm_event_id, outcome)
    return outcome


def _settle_error(
    runtime: Runtime, operation: Operation, claim: Claim, state: State, error: str
) -> Outcome:
    log.warning("%s: %s (%s)", keys.operation(operation), state, error)
    if not runtime.store.claims.settle(operation, claim, state, error=error):
        return Outcome.LOST_CLAIM
    return Outcome.FAILED
