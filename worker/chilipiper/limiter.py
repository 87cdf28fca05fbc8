"""How fast to call ChiliPiper: a rate that finds ChiliPiper's limit, shared through Redis.

ChiliPiper publishes no rate limit, so the rate is learnt the way TCP learns a link's
capacity, from the one signal the server gives (HTTP 429):

- **Fast start** (TCP's slow start): from `initial_rate`, the allowed rate doubles every
  `fast_start_round` while it is being used, until ChiliPiper pushes back or the
  ceiling is reached. 10/s becomes 320/s in 2.5 s.
- **Additive increase, multiplicative decrease** (TCP Reno, RFC 5681): once a limit has been
  seen, the rate rises by `additive_increase` per `round` while calls succeed, and is cut to
  `decrease_factor` x the rate actually sent (CUBIC's 0.7; time a `Retry-After` pause held
  every worker back does not count as sending slowly) when a round's share of 429s shows a
  limit: a server at its limit refuses most calls above it, while a scattered 429 is noise.
  A cut needs at least `cut_share` of the round's answers, and `cut_min_refusals` of them, to
  be 429s; at most one cut per round, and none in the round after a cut, whose 429s may
  answer calls sent before it; never below `floor_rate`.
- **Only a rate in use grows** (RFC 7661, congestion window validation): a round that sent
  less than half the allowed rate leaves it alone, so a quiet hour does not license a burst.
- A state left idle for `idle` seconds expires, and the next call starts fast again.

Pacing is GCRA (the token bucket's exact cousin, one timestamp): each call reserves the next
slot at the current rate. A thread sleeps until its slot when that is at most `max_block`
away; otherwise the call is deferred and the task re-scheduled, so waiting never holds a
thread for long. The bound on calls in flight stays the worker pool's size: ChiliPiper's one
documented signal is about rate, and latency-based concurrency limits (Netflix's gradient,
Envoy's adaptive concurrency) would read our own CPU as ChiliPiper's load on a busy worker.

`CHILIPIPER_RATE_LIMIT`, when set, is a hard ceiling on the learnt rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import redis

from worker.store import keys
from worker.store.connection import text
from worker.store.lua import NOW


@dataclass(frozen=True)
class LimiterPolicy:
    """The limiter's constants, named as in TCP (times in seconds, rates in calls/s)."""

    initial_rate: float = 10.0
    floor_rate: float = 1.0
    fast_start_round: float = 0.5
    round: float = 1.0
    additive_increase: float = 1.0
    decrease_factor: float = 0.7
    cut_share: float = 0.2
    cut_min_refusals: int = 3
    idle: float = 600.0
    # A round with a few 429s, too few to cut on, stays open at most this long.
    stale_round: float = 30.0


class Answer(StrEnum):
    """What ChiliPiper made of one call, as far as the rate is concerned."""

    ACCEPTED = "accepted"  # answered, whatever it said: not a sign of a limit
    LIMITED = "limited"  # 429


# The hash: rate (calls/s), `ssthresh` (the rate after the last cut, -1 before any; below it the
# rate doubles), `tat` (GCRA's theoretical arrival time, ms), the open round's start and counts
# (`sent`, `accepted`, `limited`), and `recovering` (1 in the round after a cut).
#
# The limiter's Lua, as functions of their keys `k` and arguments `a`, so that the gate's
# scripts can run them together with the breaker's in one round trip. Needs `NOW` before it.
LUA = """
-- The state, started afresh when new, expired or not ours. a: initial rate, ceiling
-- (0 = none), floor, idle ms. Returns the rate now and the floor.
local function limiter_state(h, a)
  local ceiling, floor = tonumber(a[2]), tonumber(a[3])
  local kept = redis.call('HMGET', h, 'rate', 'ssthresh', 'round_start')
  local rate = tonumber(kept[1] or '0')
  if rate <= 0 or not kept[2] or not kept[3] then  -- new, expired, or not ours: start fast
    rate = tonumber(a[1])
    redis.call('HSET', h, 'rate', rate, 'ssthresh', -1, 'round_start', now,
               'sent', 0, 'accepted', 0, 'limited', 0, 'recovering', 0)
  end
  if ceiling > 0 and rate > ceiling then rate = ceiling end
  if rate < floor then rate = floor end
  redis.call('PEXPIRE', h, math.floor(tonumber(a[4])))
  return rate, floor
end

-- k: limiter. a: as limiter_state, then max block ms.
-- Returns {1, wait ms}: go after `wait`; {0, wait ms}: the slot is too far, deferred.
local function limiter_reserve(k, a)
  local h = k[1]
  local rate, floor = limiter_state(h, a)
  local interval = 1000 / rate
  local tat = math.max(tonumber(redis.call('HGET', h, 'tat') or '0'), now)
  -- Further ahead than any reservation can reach (the longest wait at the slowest rate):
  -- Redis's clock went back.
  if tat > now + tonumber(a[5]) + 1000 / floor then tat = now end
  local wait = tat - now
  if wait > tonumber(a[5]) then return {0, math.ceil(wait)} end
  redis.call('HSET', h, 'tat', tostring(tat + interval))
  redis.call('HINCRBY', h, 'sent', 1)
  return {1, math.ceil(wait)}
end

-- k: limiter, pause. a: as limiter_state, then the answer, fast-start round ms, round ms,
-- additive increase, decrease factor, cut share, cut min refusals, stale round ms.
-- Returns {decision, rate as text}: decision is 'open' (round still counting), 'hold',
-- 'grow' or 'cut'.
local function limiter_record(k, a)
  local h = k[1]
  local rate = limiter_state(h, a)
  redis.call('HINCRBY', h, a[5], 1)
  local ssthresh = tonumber(redis.call('HGET', h, 'ssthresh'))
  local fast = ssthresh < 0 or rate < ssthresh
  local round = fast and tonumber(a[6]) or tonumber(a[7])
  local elapsed = now - tonumber(redis.call('HGET', h, 'round_start'))
  if elapsed < 0 then  -- Redis's clock went back: count from now
    redis.call('HSET', h, 'round_start', now)
    return {'open', tostring(rate)}
  end
  if elapsed < round then return {'open', tostring(rate)} end
  local counts = redis.call('HMGET', h, 'sent', 'accepted', 'limited')
  local sent, limited = tonumber(counts[1]), tonumber(counts[3])
  local answered = tonumber(counts[2]) + limited
  local refused = limited > 0 and limited >= tonumber(a[10]) * answered
  local decision = 'hold'
  if refused and (redis.call('HGET', h, 'recovering') == '1' or sent == 0) then
    -- 429s answering calls sent before the last cut, or while nobody sent: no news about
    -- the rate now (TCP cuts once per window of loss, not once per lost packet).
    decision = 'hold'
  elseif refused and limited >= tonumber(a[11]) then
    -- The rate really sent, over the part of the round no Retry-After pause held back.
    local paused = math.min(tonumber(redis.call('GET', k[2]) or '0'), now) - (now - elapsed)
    local active = math.max(elapsed - math.max(paused, 0), elapsed / 10)
    local sending = math.min(rate, sent * 1000 / active)
    rate = math.max(tonumber(a[3]), sending * tonumber(a[9]))
    ssthresh = rate
    decision = 'cut'
  elseif refused and elapsed < tonumber(a[12]) then
    return {'open', tostring(rate)}  -- 429s, but too few to tell: neither grow nor cut yet
  elseif sent * 1000 / elapsed >= rate / 2 then
    if fast then rate = rate * 2 else rate = rate + tonumber(a[8]) end
    decision = 'grow'
  end
  local ceiling = tonumber(a[2])
  if ceiling > 0 and rate > ceiling then rate = ceiling end
  redis.call('HSET', h, 'rate', tostring(rate), 'ssthresh', tostring(ssthresh),
             'round_start', now, 'sent', 0, 'accepted', 0, 'limited', 0,
             'recovering', decision == 'cut' and 1 or 0)
  return {decision, tostring(rate)}
end
"""

# The limiter's keys, in the order its functions take them.
RESERVE_KEYS = [keys.GATE_LIMITER]
RECORD_KEYS = [keys.GATE_LIMITER, keys.GATE_PAUSE]

_RESERVE = NOW + LUA + "return limiter_reserve(KEYS, ARGV)"
_RECORD = NOW + LUA + "return limiter_record(KEYS, ARGV)"


@dataclass(frozen=True)
class Reservation:
    """A slot at the shared rate: go after `wait` seconds, or, when not `granted`, the
    next slot is `wait` seconds away, too far to hold a thread for."""

    granted: bool
    wait: float


class AdaptiveLimiter:
    """The learnt rate toward ChiliPiper, one for every worker process and host."""

    def __init__(
        self, client: redis.Redis, ceiling: float | None = None, policy: LimiterPolicy | None = None
    ) -> None:
        self.ceiling = ceiling
        self.policy = policy or LimiterPolicy()
        self._reserve = client.register_script(_RESERVE)
        self._record = client.register_script(_RECORD)
        self._redis = client

    def reserve(self, max_block_seconds: float) -> Reservation:
        granted, wait_ms = self._reserve(
            keys=RESERVE_KEYS, args=self.reserve_args(max_block_seconds)
        )
        return Reservation(bool(granted), int(wait_ms) / 1000)

    def record(self, answer: Answer) -> tuple[str, float]:
        """Count one answer; returns the round's decision and the rate after it."""
        decision, rate = self._record(keys=RECORD_KEYS, args=self.record_args(answer))
        return text(decision), float(text(rate))

    def reserve_args(self, max_block_seconds: float) -> list[float]:
        """The arguments of `limiter_reserve` (`LUA`), for scripts that compose it."""
        return [*self._state_args(), max_block_seconds * 1000]

    def record_args(self, answer: Answer) -> list[float | str]:
        """The arguments of `limiter_record` (`LUA`), for scripts that compose it."""
        policy = self.policy
        return [
            *self._state_args(),
            answer.value,
            policy.fast_start_round * 1000,
            policy.round * 1000,
            policy.additive_increase,
            policy.decrease_factor,
            policy.cut_share,
            policy.cut_min_refusals,
            policy.stale_round * 1000,
        ]

    def rate(self) -> float:
        """The allowed rate now (calls per second), for metrics and `crmhook check`."""
        stored = self._redis.hget(keys.GATE_LIMITER, "rate")
        rate = float(stored) if stored else self._initial
        if self.ceiling:
            rate = min(rate, self.ceiling)
        return max(rate, self._floor)

    @property
    def _floor(self) -> float:
        floor = self.policy.floor_rate
        return min(floor, self.ceiling) if self.ceiling else floor

    @property
    def _initial(self) -> float:
        initial = self.policy.initial_rate
        return min(initial, self.ceiling) if self.ceiling else initial

    def _state_args(self) -> list[float]:
        return [self._initial, self.ceiling or 0, self._floor, self.policy.idle * 1000]
