"""When to stop calling ChiliPiper altogether: a circuit breaker on the failure *rate*.

resilience4j's semantics, shared through Redis by every worker: the outcomes of the last
`window_calls` calls form a count-based sliding window; once it is full, a failure rate of
`failure_rate` or more opens the circuit for `cooldown_seconds`. Then `trial_calls` calls may
go (half-open): all of them succeeding closes the circuit, any of them failing opens it again.
If the trial answers never come (their worker died), new trial permits are handed out after
`trial_seconds`.

A failure is a transient failure of ChiliPiper (a refused connection, a timeout, a 5xx). A
429 is not one: being told to slow down is the rate limiter's business. A permanent error is
ChiliPiper working as it should, and counts as nothing. The window is large so that a bad
minute (30 % of calls failing) slows nothing down, while a dead ChiliPiper (every call
failing) opens the circuit within a window's worth of calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from worker.store import keys
from worker.store.connection import text
from worker.store.lua import NOW

# The breaker's Lua, as functions of their keys `k` and arguments `a`, so that the gate's
# scripts can run them together with the limiter's in one round trip. Needs `NOW` before it.
LUA = """
-- k: breaker. a: trial calls, trial ms.
-- Returns {1, 0, 'closed' | 'trial'}: go; {0, wait ms, 'circuit open' | 'circuit half-open'}.
local function breaker_admit(k, a)
  local h = k[1]
  local state = redis.call('HGET', h, 'state') or 'closed'
  if state == 'closed' then return {1, 0, 'closed'} end
  local until_ms = tonumber(redis.call('HGET', h, 'until') or '0')
  if state == 'open' then
    if until_ms > now then return {0, until_ms - now, 'circuit open'} end
    until_ms = 0
  end
  if until_ms <= now then  -- the cool-down is over, or the last trials never answered
    until_ms = now + tonumber(a[2])
    redis.call('HSET', h, 'state', 'half-open', 'permits', a[1], 'passed', 0,
               'until', until_ms)
  end
  if redis.call('HINCRBY', h, 'permits', -1) < 0 then
    redis.call('HINCRBY', h, 'permits', 1)
    return {0, math.min(until_ms - now, 1000), 'circuit half-open'}
  end
  return {1, 0, 'trial'}
end

-- k: breaker, window. a: '1' failure | '0' success, window calls, failure rate,
-- cool-down ms, trial calls. Returns the state after it, 'opened' when this outcome opened it.
local function breaker_record(k, a)
  local h, window = k[1], k[2]
  local failed = a[1] == '1'
  local state = redis.call('HGET', h, 'state') or 'closed'
  local function open()
    redis.call('HSET', h, 'state', 'open', 'until', now + tonumber(a[4]), 'failures', 0)
    redis.call('DEL', window)
    return 'opened'
  end
  if state == 'half-open' then
    if failed then return open() end
    if redis.call('HINCRBY', h, 'passed', 1) >= tonumber(a[5]) then
      redis.call('DEL', h, window)
      return 'closed'
    end
    return state
  end
  if state == 'open' then return state end  -- late answers of calls sent before it opened
  local size = tonumber(a[2])
  local failures = tonumber(redis.call('HGET', h, 'failures') or '0')
  local calls = redis.call('LPUSH', window, a[1])
  if failed then failures = failures + 1 end
  if calls > size then
    if redis.call('RPOP', window) == '1' then failures = failures - 1 end
    calls = size
  end
  redis.call('HSET', h, 'failures', failures)
  if calls >= size and failures >= tonumber(a[3]) * calls then return open() end
  return state
end

-- k: breaker. A trial permit back, if the circuit is still half-open.
local function breaker_return(k)
  if redis.call('HGET', k[1], 'state') == 'half-open' then
    redis.call('HINCRBY', k[1], 'permits', 1)
  end
end
"""

# The breaker's keys, in the order its functions take them.
ADMIT_KEYS = [keys.GATE_BREAKER]
RECORD_KEYS = [keys.GATE_BREAKER, keys.GATE_BREAKER_WINDOW]

_ADMIT = NOW + LUA + "return breaker_admit(KEYS, ARGV)"
_RECORD = NOW + LUA + "return breaker_record(KEYS, ARGV)"
_RETURN = NOW + LUA + "breaker_return(KEYS)"


@dataclass(frozen=True)
class BreakerSettings:
    failure_rate: float = 0.5
    window_calls: int = 100
    cooldown_seconds: float = 30.0
    trial_calls: int = 3
    trial_seconds: float = 30.0


@dataclass(frozen=True)
class Admission:
    """May a call go now? When not, `wait` seconds until asking again makes sense."""

    allowed: bool
    wait: float
    reason: str


class CircuitBreaker:
    def __init__(self, client: redis.Redis, settings: BreakerSettings) -> None:
        self.settings = settings
        self._redis = client
        self._admit = client.register_script(_ADMIT)
        self._record = client.register_script(_RECORD)
        self._return = client.register_script(_RETURN)

    def admit(self) -> Admission:
        allowed, wait_ms, reason = self._admit(keys=ADMIT_KEYS, args=self.admit_args())
        return Admission(bool(allowed), int(wait_ms) / 1000, text(reason))

    def return_trial(self) -> None:
        """Give back a trial permit taken by a call that then did not go (held back by the
        rate), so the trial is not lost until `trial_seconds` pass."""
        self._return(keys=ADMIT_KEYS)

    def record(self, *, failed: bool) -> str:
        """Count one call's outcome; returns the state after it (`opened` when this outcome
        opened the circuit)."""
        return text(self._record(keys=RECORD_KEYS, args=self.record_args(failed=failed)))

    def admit_args(self) -> list[int]:
        """The arguments of `breaker_admit` (`LUA`), for scripts that compose it."""
        return [self.settings.trial_calls, int(self.settings.trial_seconds * 1000)]

    def record_args(self, *, failed: bool) -> list[str | float]:
        """The arguments of `breaker_record` (`LUA`), for scripts that compose it."""
        return [
            "1" if failed else "0",
            self.settings.window_calls,
            self.settings.failure_rate,
            int(self.settings.cooldown_seconds * 1000),
            self.settings.trial_calls,
        ]

    def state(self) -> str:
        return text(self._redis.hget(keys.GATE_BREAKER, "state") or b"closed")
