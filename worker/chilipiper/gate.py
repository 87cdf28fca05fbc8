"""What every worker process and host shares about ChiliPiper: one rate, one pause, one circuit.

ChiliPiper sees one account however many workers there are, so the limits live in Redis:

- a rate limit (GCRA, the token bucket's exact cousin): each request reserves the next free
  slot; a thread sleeps until its slot if that is at most a second away, otherwise the request
  is deferred and the task re-scheduled, so waiting never holds a thread for long;
- a shared pause: a 429 with `Retry-After` stops every worker's calls until then;
- a circuit breaker: after CIRCUIT_FAILURE_THRESHOLD consecutive transient failures, calls stop
  for CIRCUIT_COOLDOWN_SECONDS, then one trial call decides whether they resume.

A deferred request was never sent: `DeferredError` is neither retried in-call nor counted as
an attempt. All keys share one hash tag, so each check is one Lua script on Redis Cluster too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis

from worker.errors import DeferredError, GatewayError, RetryableError
from worker.store import keys
from worker.store.lua import NOW

log = logging.getLogger(__name__)


# KEYS: rate, pause, circuit. ARGV: interval ms, burst ms, max block ms, trial ms.
# Returns {0|1, wait ms, reason}: 1 = go after `wait` ms; 0 = deferred for `wait` ms.
_ENTER = (
    NOW
    + """
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then return {0, paused - now, 'paused'} end
local state = redis.call('HGET', KEYS[3], 'state') or 'closed'
local trial = false
if state ~= 'closed' then
  local until_ms = tonumber(redis.call('HGET', KEYS[3], 'until') or '0')
  if until_ms > now then return {0, until_ms - now, 'circuit ' .. state} end
  trial = true
end
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local wait = tat + interval - burst - now
if wait > tonumber(ARGV[3]) then return {0, wait, 'rate limit'} end
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now + 1000)
if trial then
  redis.call('HSET', KEYS[3], 'state', 'half-open', 'until', now + tonumber(ARGV[4]))
end
return {1, math.max(wait, 0), trial and 'trial' or 'ok'}
"""
)

# KEYS: circuit. ARGV: 1 = success | 0 = transient failure, threshold, cool-down ms.
_RECORD = (
    NOW
    + """
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
  return 'closed'
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'half-open' or failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[3]))
  return 'open'
end
return state
"""
)

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
    rate_per_second: float
    max_block_seconds: float
    failure_threshold: int
    cooldown_seconds: float
    trial_seconds: float


class Gate:
    """The shared limits, checked before each request to ChiliPiper."""

    def __init__(self, client: redis.Redis, settings: GateSettings) -> None:
        self._redis = client
        self._settings = settings
        self._enter = client.register_script(_ENTER)
        self._record = client.register_script(_RECORD)
        self._pause = client.register_script(_PAUSE)

    def enter(self) -> None:
        """Return when this request may go (after a short sleep at most), or raise
        DeferredError saying for how long calls are held back, and why."""
        interval = 1000.0 / self._settings.rate_per_second
        allowed, wait_ms, reason = self._enter(
            keys=[keys.GATE_RATE, keys.GATE_PAUSE, keys.GATE_CIRCUIT],
            args=[
                interval,
                interval,  # burst: one interval's worth, so no request jumps the queue
                self._settings.max_block_seconds * 1000,
                self._settings.trial_seconds * 1000,
            ],
        )
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        if not allowed:
            raise DeferredError(f"ChiliPiper calls held back: {reason}", retry_after=wait_ms / 1000)
        if wait_ms > 0:
            time.sleep(wait_ms / 1000)
            # A pause or an open circuit may have begun while we waited for our slot.
            held = self.deferral()
            if held > 0:
                raise DeferredError("ChiliPiper calls held back: paused", retry_after=held)

    def deferral(self) -> float:
        """Seconds until calls may go at all (pause or open circuit); 0 when they may."""
        now = time.time() * 1000
        paused = float(self._redis.get(keys.GATE_PAUSE) or 0)
        state, until = self._redis.hmget(keys.GATE_CIRCUIT, ["state", "until"])
        opened = float(until or 0) if state not in (None, "closed", b"closed") else 0.0
        return max(0.0, max(paused, opened) - now) / 1000

    def succeeded(self) -> None:
        self._record(keys=[keys.GATE_CIRCUIT], args=["1", 0, 0])

    def failed(self, error: GatewayError) -> None:
        """Count a transient failure toward the circuit; a 429's Retry-After pauses everyone."""
        if isinstance(error, RetryableError) and error.status == 429 and error.retry_after:
            self._pause(keys=[keys.GATE_PAUSE], args=[int(error.retry_after * 1000)])
            log.warning("ChiliPiper asked to wait %.1f s: every worker pauses", error.retry_after)
            return  # being told to slow down is not a failure of ChiliPiper
        state = self._record(
            keys=[keys.GATE_CIRCUIT],
            args=[
                "0",
                self._settings.failure_threshold,
                int(self._settings.cooldown_seconds * 1000),
            ],
        )
        if (state.decode() if isinstance(state, bytes) else state) == "open":
            log.warning(
                "circuit open: ChiliPiper calls stop for %.0f s", self._settings.cooldown_seconds
            )


class OpenGate:
    """No shared limits (tests of a gateway alone, `crmhook check`)."""

    def enter(self) -> None:
        return None

    def succeeded(self) -> None:
        return None

    def failed(self, error: GatewayError) -> None:
        return None
