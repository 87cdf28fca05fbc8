"""What every worker process and host shares about ChiliPiper: one rate, one pause, one circuit.

ChiliPiper sees one account however many workers there are, so the limits live in Redis:

- the rate (`limiter.AdaptiveLimiter`): learnt from ChiliPiper's 429s, paced by GCRA;
- a shared pause: a 429 with `Retry-After` stops every worker's calls until then;
- the circuit (`breaker.CircuitBreaker`): opens on a failure rate, then a few trials decide.

A deferred request was never sent: `DeferredError` is neither retried in-call nor counted as
an attempt. All keys share one hash tag, so each script runs on Redis Cluster too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis

from worker.chilipiper.breaker import BreakerSettings, CircuitBreaker
from worker.chilipiper.limiter import AdaptiveLimiter, Answer, LimiterPolicy
from worker.errors import DeferredError, GatewayError, InDoubtError, RetryableError
from worker.store import keys
from worker.store.lua import NOW

log = logging.getLogger(__name__)

# KEYS: pause. ARGV: ms. Extends the pause, never shortens it.
_PAUSE = (
    NOW
    + """
local until_ms = now + tonumber(ARGV[1])
if until_ms > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
end
return until_ms
"""
)


@dataclass(frozen=True)
class GateSettings:
    ceiling_per_second: float | None
    max_block_seconds: float
    breaker: BreakerSettings
    limiter: LimiterPolicy = field(default_factory=LimiterPolicy)


class Gate:
    """The shared limits, checked before each request to ChiliPiper and told how it went."""

    def __init__(self, client: redis.Redis, settings: GateSettings) -> None:
        self._redis = client
        self._settings = settings
        self.limiter = AdaptiveLimiter(client, settings.ceiling_per_second, settings.limiter)
        self.breaker = CircuitBreaker(client, settings.breaker)
        self._pause = client.register_script(_PAUSE)

    def enter(self) -> None:
        """Return when this request may go (after a short sleep at most), or raise
        DeferredError saying for how long calls are held back, and why."""
        paused = self._paused_for()
        if paused > 0:
            raise DeferredError("ChiliPiper calls held back: paused", retry_after=paused)
        admission = self.breaker.admit()
        if not admission.allowed:
            raise DeferredError(
                f"ChiliPiper calls held back: {admission.reason}", retry_after=admission.wait
            )
        slot = self.limiter.reserve(self._settings.max_block_seconds)
        if not slot.granted:
            if admission.reason == "trial":
                self.breaker.return_trial()
            raise DeferredError("ChiliPiper calls held back: rate limit", retry_after=slot.wait)
        if slot.wait > 0:
            time.sleep(slot.wait)
            # A pause or an open circuit may have begun while we waited for our slot.
            held = self.deferral()
            if held > 0:
                raise DeferredError("ChiliPiper calls held back: paused", retry_after=held)

    def deferral(self) -> float:
        """Seconds until calls may go at all (pause or open circuit); 0 when they may."""
        return max(self._paused_for(), self.breaker.opened_for(time.time() * 1000))

    def succeeded(self) -> None:
        self.limiter.record(Answer.ACCEPTED)
        self.breaker.record(failed=False)

    def failed(self, error: RetryableError | InDoubtError) -> None:
        """A 429 is the limiter's signal (and its Retry-After pauses everyone); any other
        transient failure counts toward the circuit."""
        if isinstance(error, RetryableError) and error.status == 429:
            decision, rate = self.limiter.record(Answer.LIMITED)
            if decision == "cut":
                log.warning("ChiliPiper is refusing calls (429): rate cut to %.1f/s", rate)
            if error.retry_after:
                self._pause(keys=[keys.GATE_PAUSE], args=[int(error.retry_after * 1000)])
                log.warning(
                    "ChiliPiper asked to wait %.1f s: every worker pauses", error.retry_after
                )
            return
        if error.status is not None or isinstance(error, InDoubtError):
            self.limiter.record(Answer.ACCEPTED)  # it answered (or may have): not a limit
        if self.breaker.record(failed=True) == "opened":
            log.warning(
                "circuit open: ChiliPiper calls stop for %.0f s",
                self._settings.breaker.cooldown_seconds,
            )

    def _paused_for(self) -> float:
        until = float(self._redis.get(keys.GATE_PAUSE) or 0)
        return max(0.0, until - time.time() * 1000) / 1000


class OpenGate:
    """No shared limits (tests of a gateway alone, `crmhook check`)."""

    def enter(self) -> None:
        return None

    def succeeded(self) -> None:
        return None

    def failed(self, error: GatewayError) -> None:
        return None
