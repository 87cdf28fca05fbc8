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
import threading
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


# KEYS: pause[, breaker]. Milliseconds until the pause and an open circuit end, by Redis's
# clock (every worker host may have its own).
_HOLDS = (
    NOW
    + """
local until_ms = tonumber(redis.call('GET', KEYS[1]) or '0')
if KEYS[2] and redis.call('HGET', KEYS[2], 'state') == 'open' then
  until_ms = math.max(until_ms, tonumber(redis.call('HGET', KEYS[2], 'until') or '0'))
end
return math.max(0, until_ms - now)
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
        self._holds = client.register_script(_HOLDS)
        self._calls = _ThisCall()

    def enter(self) -> None:
        """Return when this request may go (after a short sleep at most), or raise
        DeferredError saying for how long calls are held back, and why."""
        self._calls.trial = False
        paused = self._held_for(keys.GATE_PAUSE)
        if paused > 0:
            raise DeferredError("ChiliPiper calls held back: paused", retry_after=paused)
        admission = self.breaker.admit()
        if not admission.allowed:
            raise DeferredError(
                f"ChiliPiper calls held back: {admission.reason}", retry_after=admission.wait
            )
        trial = admission.reason == "trial"
        slot = self.limiter.reserve(self._settings.max_block_seconds)
        if not slot.granted:
            self._give_back(trial)
            raise DeferredError("ChiliPiper calls held back: rate limit", retry_after=slot.wait)
        if slot.wait > 0:
            time.sleep(slot.wait)
            # A pause or an open circuit may have begun while we waited for our slot.
            held = self.deferral()
            if held > 0:
                self._give_back(trial)
                raise DeferredError("ChiliPiper calls held back: paused", retry_after=held)
        self._calls.trial = trial

    def abandon(self) -> None:
        """The request let through by `enter` will not be sent (its claim ran out): a
        trial it held goes back to the circuit undecided."""
        self._give_back(self._calls.trial)

    def deferral(self) -> float:
        """Seconds until calls may go at all (pause or open circuit); 0 when they may.
        Reckoned by Redis's clock, which wrote the times, not by this host's."""
        return self._held_for(keys.GATE_PAUSE, keys.GATE_BREAKER)

    def succeeded(self) -> None:
        self.limiter.record(Answer.ACCEPTED)
        self.breaker.record(failed=False)

    def failed(self, error: RetryableError | InDoubtError) -> None:
        """A 429 is the limiter's signal (and its Retry-After pauses everyone); any other
        transient failure counts toward the circuit."""
        if isinstance(error, RetryableError) and error.status == 429:
            self._give_back(self._calls.trial)  # a trial told to slow down decided nothing
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

    def limits(self) -> Limits:
        """Where the shared limits stand now, for operators (`crmhook check`)."""
        return Limits(
            rate=self.limiter.rate(),
            ceiling=self._settings.ceiling_per_second,
            circuit=self.breaker.state(),
            held_for=self.deferral(),
        )

    def _give_back(self, trial: bool) -> None:
        if trial:
            self.breaker.return_trial()
            self._calls.trial = False

    def _held_for(self, *held: str) -> float:
        """Seconds until the pause (and the open circuit, if asked) end."""
        return int(self._holds(keys=list(held))) / 1000


@dataclass(frozen=True)
class Limits:
    rate: float
    ceiling: float | None
    circuit: str
    held_for: float

    def __str__(self) -> str:
        ceiling = f"ceiling {self.ceiling:g}/s" if self.ceiling else "no ceiling"
        held = f", calls held back {self.held_for:.0f} s more" if self.held_for > 0 else ""
        return f"{self.rate:g} calls/s allowed ({ceiling}), circuit {self.circuit}{held}"


class _ThisCall(threading.local):
    """What the gate remembers about the current thread's call: whether it is a trial of
    the half-open circuit (whose permit goes back if the call does not decide anything)."""

    trial = False


class OpenGate:
    """No shared limits (tests of a gateway alone, `crmhook check`)."""

    def enter(self) -> None:
        return None

    def abandon(self) -> None:
        return None

    def succeeded(self) -> None:
        return None

    def failed(self, error: GatewayError) -> None:
        return None
