"""Performing one operation exactly once: claim, (reconcile,) call ChiliPiper, settle.

Plain functions over a Runtime; the Celery task around them only unpacks arguments and turns
`RetryLater` into a Celery retry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from worker.errors import GatewayError, InDoubtError, PermanentError, RetryableError
from worker.operations import Action, Operation
from worker.runtime import Runtime
from worker.store import Claim, State, Verdict

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RECONCILED = "reconciled"  # an earlier, interrupted attempt had already taken effect
    ALREADY_DONE = "already_done"
    BUSY = "busy"  # another worker holds a live claim; it finishes or its message returns
    FAILED = "failed"
    LOST_CLAIM = "lost_claim"


@dataclass
class RetryLater(Exception):
    """The operation should run again later (transient failure or in-doubt call)."""

    error: GatewayError


def perform(runtime: Runtime, operation: Operation, *, owner: str, last_try: bool) -> Outcome:
    """Run `operation` unless it already succeeded; raise RetryLater to be called again.

    `owner` identifies this delivery (the task ID); `last_try` turns a transient failure into
    a dead letter instead of another retry.
    """
    store, settings = runtime.store, runtime.settings
    claim = store.claim(operation, owner, settings.claim_lease_seconds)
    if claim.verdict is Verdict.DONE:
        log.info("%s %s already succeeded; nothing to do", operation.action, operation.key)
        return Outcome.ALREADY_DONE
    if claim.verdict is Verdict.BUSY:
        log.info("%s is being performed by another worker", operation.key)
        return Outcome.BUSY
    try:
        interrupted = operation.action.irreversible and claim.after_interruption
        if interrupted and _already_in_effect(runtime, operation, claim):
            return Outcome.RECONCILED
        result = runtime.gateway.call(operation.action.tool, operation.crm_event_id)
    except PermanentError as exc:
        return _settle(runtime, operation, claim, State.FAILED, exc, Outcome.FAILED)
    except (RetryableError, InDoubtError) as exc:
        state = State.IN_DOUBT if isinstance(exc, InDoubtError) else State.RETRYING
        if last_try:
            return _settle(runtime, operation, claim, State.FAILED, exc, Outcome.FAILED)
        _settle(runtime, operation, claim, state, exc, Outcome.FAILED)
        raise RetryLater(exc) from exc
    recorded = store.settle(operation, claim, State.SUCCEEDED, result=result.to_record())
    if not recorded:
        log.error("%s: succeeded but the claim was taken over; lease too short?", operation.key)
        return Outcome.LOST_CLAIM
    log.info("%s %s succeeded", operation.action.tool, operation.crm_event_id)
    return Outcome.SUCCEEDED


def _already_in_effect(runtime: Runtime, operation: Operation, claim: Claim) -> bool:
    """After an interrupted irreversible call, ask `crm-get` whether it took effect.

    Raises PermanentError when ChiliPiper does not report a status: calling again blind could
    email a customer twice, so an operator decides.
    """
    current = runtime.gateway.call(Action.GET.tool, operation.crm_event_id)
    status = current.meeting_status
    if status is None:
        raise PermanentError(
            f"in doubt: crm-get reported no meeting status for {operation.crm_event_id}; "
            "check ChiliPiper before replaying",
            tool=Action.GET.tool,
        )
    if status != operation.action.final_status:
        log.warning(
            "%s was interrupted before taking effect (status %s); calling again",
            operation.key,
            status,
        )
        return False
    runtime.store.settle(
        operation, claim, State.SUCCEEDED, result={"reconciled": True, **current.to_record()}
    )
    log.warning(
        "%s had taken effect before its worker was interrupted (status %s)", operation.key, status
    )
    return True


def _settle(
    runtime: Runtime,
    operation: Operation,
    claim: Claim,
    state: State,
    error: GatewayError,
    outcome: Outcome,
) -> Outcome:
    log.warning("%s %s: %s (%s)", operation.action.tool, operation.crm_event_id, state, error)
    if not runtime.store.settle(operation, claim, state, error=str(error)):
        return Outcome.LOST_CLAIM
    return outcome
