"""The in-call retry policy: seconds-long retries of transient failures, inside one task run.

Outages (minutes to hours) are the task layer's job; this layer only smooths over blips, so it
is short and bounded. Only `RetryableError` is retried: a permanent error cannot succeed and an
in-doubt irreversible call must not be repeated blindly.
"""

from __future__ import annotations

import logging

from tenacity import (
    RetryCallState,
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from worker.errors import RetryableError

log = logging.getLogger(__name__)

ATTEMPTS = 3
MAX_WAIT_SECONDS = 5.0


class wait_retry_after(wait_base):  # noqa: N801 (named like tenacity's own wait strategies)
    """Wait as long as the server asked (`Retry-After`), capped; otherwise use `fallback`.

    The cap keeps one call within its lease: a server asking for longer than we are willing
    to hold a worker thread is an outage, which the task layer retries later.
    """

    def __init__(self, fallback: wait_base, cap: float = MAX_WAIT_SECONDS) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, RetryableError) and error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.cap)
        return self.fallback(retry_state)


def transient_retries(
    attempts: int = ATTEMPTS, max_wait: float = MAX_WAIT_SECONDS, max_seconds: float = 30.0
) -> Retrying:
    """Retry transient failures up to `attempts` times or `max_seconds`, whichever comes
    first, waiting at most `max_wait` between tries (a longer `Retry-After` is capped).

    Full jitter (`wait_random_exponential`) spreads the retries of many workers that failed
    together, so they do not hit a recovering ChiliPiper in lockstep.
    """
    return Retrying(
        retry=retry_if_exception_type(RetryableError),
        stop=stop_after_attempt(attempts) | stop_after_delay(max_seconds),
        wait=wait_retry_after(
            wait_random_exponential(multiplier=0.25, max=min(2.0, max_wait)), cap=max_wait
        ),
        reraise=True,
        before_sleep=before_sleep_log(log, logging.WARNING),
    )
