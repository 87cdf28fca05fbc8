"""What every worker process and host shares about ChiliPiper: one rate, one pause, one circuit.

ChiliPiper sees one account however many workers there are, so the limits live in Redis:

- the rate (`limiter.AdaptiveLimiter`): learnt from ChiliPiper's 429s, paced by GCRA;
- a shared pause: a 429 with `Retry-After` stops every worker's calls until then;
- the circuit (`breaker.CircuitBreaker`): opens on a failure rate, then a few trials decide.

A deferred request was never sent: `DeferredError` is neither retried in-call nor counted as
an attempt. All keys share one hash tag, so each script runs on Redis Cluster too.

A success need not be told at once: inside `Gate.deferring_successes` it is counted, and its
record rides in the pipeline that settles the operation (`DeferredSuccesses.record_into`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from worker.chilipiper import breaker, limiter
from worker.chilipiper.breaker import BreakerSettings, CircuitBreaker
from worker.chilipiper.limiter import AdaptiveLimiter, Answer, LimiterPolicy
from worker.errors import DeferredError, GatewayError, Held, InDoubtError, RetryableError
from worker.store import keys
from worker.store.connection import text
from worker.store.lua import NOW

log = logging.getLogger(__name__)

# Milliseconds until the pause and (given its key) an open circuit end, by Redis's clock
# (every worker host may have its own). Needs `NOW` before it.
_HOLD = """
local function hold_ms(pause, breaker)
  local until_ms = tonumber(redis.call('GET', pause) or '0')
  if breaker and redis.call('HGET', breaker, 'state') == 'open' then
    until_ms = math.max(until_ms, tonumber(redis.call('HGET', breaker, 'until') or '0'))
  end
  return math.max(0, until_ms - now)
end
"""

# The gate's scripts compose the limiter's and the breaker's functions, each fed its own
# arguments: ARGV is a run of groups, each preceded by its length (`_grouped`).
_GROUPS = """
local function groups(argv)
  local found, i = {}, 1
  while i <= #argv do
    local n = tonumber(argv[i])
    found[#found + 1] = {unpack(argv, i + 1, i + n)}
    i = i + n + 1
  end
  return found
end
"""

_LIBRARY = NOW + _HOLD + _GROUPS + limiter.LUA + breaker.LUA

# KEYS: pause, breaker. The hold (pause or open circuit), ms.
_HOLDS = _LIBRARY + "return hold_ms(KEYS[1], KEYS[2])"

# KEYS: pause, breaker. ARGV: ms. Extends the pause, never shortens it; returns the hold.
_PAUSE = (
    _LIBRARY
    + """
local until_ms = now + tonumber(ARGV[1])
if until_ms > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
end
return hold_ms(KEYS[1], KEYS[2])
"""
)

# KEYS: pause, breaker, limiter, irreversible pause, guard's minute, guard's released, held.
# ARGV groups: breaker_admit's, limiter_reserve's, the guard's {identity of an irreversible
# operation ('' for any other request), operations allowed a minute (0: no guard)}.
# Returns {verdict, wait ms, hold ms}: verdict 'closed' or 'trial' (a trial permit taken) is
# go after `wait`; 'operator pause', 'held' (a copy of an operation already held) and
# 'guard' hold the operation for an operator; any other is why the call is deferred
# ('paused', 'circuit open', 'circuit half-open', 'rate limit'), for `wait`. A paused gate
# takes no trial permit, and a trial whose slot is too far gives its permit back, as before
# the steps were one script. The guard counts the irreversible operations let through in
# the last 60 s (each once, however many requests it takes); an operation an operator
# released passes it until its release expires.
_ENTER = (
    _LIBRARY
    + """
local args = groups(ARGV)
local function answer(verdict, wait) return {verdict, wait, hold_ms(KEYS[1], KEYS[2])} end
local identity, limit = args[3][1], tonumber(args[3][2])
if identity ~= '' then
  if redis.call('EXISTS', KEYS[4]) == 1 then return answer('operator pause', 0) end
  if redis.call('HEXISTS', KEYS[7], identity) == 1 then return answer('held', 0) end
  local released = tonumber(redis.call('ZSCORE', KEYS[6], identity) or '0') > now
  if limit > 0 and not released then
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 60000)
    if not redis.call('ZSCORE', KEYS[5], identity)
       and redis.call('ZCARD', KEYS[5]) >= limit then
      return answer('guard', 0)
    end
  end
end
local paused = hold_ms(KEYS[1])
if paused > 0 then return answer('paused', paused) end
local admission = breaker_admit({KEYS[2]}, args[1])
if admission[1] == 0 then return answer(admission[3], admission[2]) end
local slot = limiter_reserve({KEYS[3]}, args[2])
if slot[1] == 0 then
  if admission[3] == 'trial' then breaker_return({KEYS[2]}) end
  return answer('rate limit', slot[2])
end
if identity ~= '' and limit > 0 then
  redis.call('ZADD', KEYS[5], now, identity)
  redis.call('PEXPIRE', KEYS[5], 61000)
end
return answer(admission[3], slot[2])
"""
)

# KEYS: limiter, pause, breaker, window. ARGV groups: limiter_record's (none when the outcome
# says nothing about the rate), breaker_record's. Returns {breaker state, hold ms}.
_OUTCOME = (
    _LIBRARY
    + """
local args = groups(ARGV)
if #args[1] > 0 then limiter_record({KEYS[1], KEYS[2]}, args[1]) end
local state = breaker_record({KEYS[3], KEYS[4]}, args[2])
return {state, hold_ms(KEYS[2], KEYS[3])}
"""
)

_GO = ("closed", "trial")
HELD_VERDICTS = {"operator pause": "paused", "held": "held", "guard": "guard"}
_ENTER_KEYS = [
    keys.GATE_PAUSE,
    keys.GATE_BREAKER,
    keys.GATE_LIMITER,
    keys.GATE_IRREVERSIBLE_PAUSE,
    keys.GATE_GUARD_SENT,
    keys.GATE_GUARD_RELEASED,
    keys.HELD,
]
_OUTCOME_KEYS = [keys.GATE_LIMITER, keys.GATE_PAUSE, keys.GATE_BREAKER, keys.GATE_BREAKER_WINDOW]


@dataclass(frozen=True)
class GateSettings:
    ceiling_per_second: float | None
    max_block_seconds: float
    breaker: BreakerSettings
    # The blast-radius guard: irreversible calls allowed in any 60 s (None: no guard).
    guard_per_minute: int | None = None
    limiter: LimiterPolicy = field(default_factory=LimiterPolicy)


class Gate:
    """The shared limits, checked before each request to ChiliPiper and told how it went.

    One round trip to enter (one more when the call must wait for its slot) and one to report
    how a call went (a 429 takes a few; a success deferred into the settle's pipeline, none):
    the pause, the circuit and the rate are functions of one Lua library, which each script
    runs together, atomically."""

    def __init__(self, client: redis.Redis, settings: GateSettings) -> None:
        self._redis = client
        self._settings = settings
        self.limiter = AdaptiveLimiter(client, settings.ceiling_per_second, settings.limiter)
        self.breaker = CircuitBreaker(client, settings.breaker)
        self._enter = client.register_script(_ENTER)
        self._outcome = client.register_script(_OUTCOME)
        self._pause = client.register_script(_PAUSE)
        self._holds = client.register_script(_HOLDS)
        self._calls = _ThisCall()
        # The last hold any script told this process of: (seconds, `time.monotonic()` then).
        self._seen: tuple[float, float] | None = None

    def enter(self, irreversible: str | None = None) -> None:
        """Return when this request may go (after a short sleep at most), or raise
        DeferredError saying for how long calls are held back, and why. `irreversible`
        names the operation of a request that could email a customer: the safety valves
        may hold it for an operator instead (`Held`)."""
        self._record_deferred(self._calls.deferred)  # an earlier call's success first
        self._calls.trial = False
        verdict, wait_ms, hold_ms = self._enter(
            keys=_ENTER_KEYS,
            args=_grouped(
                self.breaker.admit_args(),
                self.limiter.reserve_args(self._settings.max_block_seconds),
                [irreversible or "", self._settings.guard_per_minute or 0],
            ),
        )
        self._saw(hold_ms)
        verdict, wait = text(verdict), int(wait_ms) / 1000
        if verdict in HELD_VERDICTS:
            raise Held(f"held for an operator: {verdict}", reason=HELD_VERDICTS[verdict])
        if verdict not in _GO:
            raise DeferredError(f"ChiliPiper calls held back: {verdict}", retry_after=wait)
        trial = verdict == "trial"
        if wait > 0:
            time.sleep(wait)
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
        return self._saw(self._holds(keys=[keys.GATE_PAUSE, keys.GATE_BREAKER]))

    def recent_deferral(self, max_age: float = 1.0) -> float:
        """`deferral()` as this process last heard it, if within `max_age` seconds (less the
        time since), else asked of Redis. Every gate script answers with the hold, so a busy
        worker checks before claiming without a round trip.

        Only an optimisation, for the check before a claim: `enter` remains the authority.
        A stale 0 (a pause or an open circuit another worker began since) costs a claim
        taken and handed back when `enter` defers; a stale hold (one that ended early, which
        only an operator does) re-schedules a task that could have gone."""
        seen = self._seen
        if seen is not None:
            held, at = seen
            age = time.monotonic() - at
            if 0 <= age <= max_age:
                return max(0.0, held - age)
        return self.deferral()

    def succeeded(self) -> None:
        """Count a call that ChiliPiper answered; inside `deferring_successes`, counted only,
        for the settle's pipeline to carry. A trial's success goes at once, as a failure
        does: it may close the circuit that holds every worker back (and a half-open
        circuit is rare, so the saving is in normal running)."""
        deferred = self._calls.deferred
        if deferred is not None and not self._calls.trial:
            deferred.count += 1
            return
        self._record(Answer.ACCEPTED, failed=False)

    @contextmanager
    def deferring_successes(self) -> Iterator[DeferredSuccesses]:
        """While the block runs, this thread's successes make no round trip of their own:
        they are counted, and `record_into` adds their records to a pipeline of the caller's
        (the settle's). Any not taken are recorded on leaving, so none is left behind on an
        error path; any other step of the gate (`enter`, `failed`) records them first, so the
        limiter and the circuit still hear the outcomes in the order they came.

        A success lost because the process died between its call and its settle is harmless:
        the limiter and the circuit keep statistics (answers per round, a failure rate over a
        window), and one answer fewer changes neither's decisions by more than a call would."""
        deferred = DeferredSuccesses(self._record_into)
        outer, self._calls.deferred = self._calls.deferred, deferred
        try:
            yield deferred
        finally:
            self._calls.deferred = outer
            try:
                self._record_deferred(deferred)
            except redis.RedisError as error:
                # Statistics (see above): not worth hiding why the block itself ended.
                log.warning("a success was not told to the shared limits: %s", error)

    def failed(self, error: RetryableError | InDoubtError) -> None:
        """A 429 is the limiter's signal (and its Retry-After pauses everyone); any other
        transient failure counts toward the circuit."""
        self._record_deferred(self._calls.deferred)
        if isinstance(error, RetryableError) and error.status == 429:
            self._give_back(self._calls.trial)  # a trial told to slow down decided nothing
            decision, rate = self.limiter.record(Answer.LIMITED)
            if decision == "cut":
                log.warning("ChiliPiper is refusing calls (429): rate cut to %.1f/s", rate)
            if error.retry_after:
                self._saw(
                    self._pause(
                        keys=[keys.GATE_PAUSE, keys.GATE_BREAKER],
                        args=[int(error.retry_after * 1000)],
                    )
                )
                log.warning(
                    "ChiliPiper asked to wait %.1f s: every worker pauses", error.retry_after
                )
            return
        # It answered (or may have): not a limit. With no answer the rate learns nothing.
        answered = error.status is not None or isinstance(error, InDoubtError)
        if self._record(Answer.ACCEPTED if answered else None, failed=True) == "opened":
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

    def _record(self, answer: Answer | None, *, failed: bool) -> str:
        """The limiter told `answer` (unless None) and the circuit the outcome, in one round
        trip; returns the circuit's state after it (`opened` when this outcome opened it)."""
        state, hold_ms = self._outcome(keys=_OUTCOME_KEYS, args=self._outcome_args(answer, failed))
        self._saw(hold_ms)
        return text(state)

    def _record_into(self, pipe: redis.client.Pipeline) -> None:
        """One success's record, added to `pipe`. Its answer (the hold) goes to the pipeline's
        caller, unread: `recent_deferral` keeps the hold `enter` saw, a call's time older."""
        self._outcome(
            keys=_OUTCOME_KEYS, args=self._outcome_args(Answer.ACCEPTED, False), client=pipe
        )

    def _record_deferred(self, deferred: DeferredSuccesses | None) -> None:
        """Record at once the successes counted in `deferred` that nobody took yet."""
        while deferred is not None and deferred.count > 0:
            deferred.count -= 1
            self._record(Answer.ACCEPTED, failed=False)

    def _outcome_args(self, answer: Answer | None, failed: bool) -> list[str | float]:
        return _grouped(
            [] if answer is None else self.limiter.record_args(answer),
            self.breaker.record_args(failed=failed),
        )

    def _give_back(self, trial: bool) -> None:
        if trial:
            self.breaker.return_trial()
            self._calls.trial = False

    def _saw(self, hold_ms: int) -> float:
        """Remember a hold a script answered (ms), for `recent_deferral`; returns seconds."""
        held = int(hold_ms) / 1000
        self._seen = (held, time.monotonic())
        return held


def _grouped(*groups: Sequence[str | float]) -> list[str | float]:
    """Arguments for several composed functions in one script: each group preceded by its
    length (the scripts' `groups` splits them again)."""
    return [item for group in groups for item in (len(group), *group)]


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


class DeferredSuccesses:
    """Successes counted inside `Gate.deferring_successes` and not yet recorded."""

    def __init__(self, record: Callable[[redis.client.Pipeline], None] | None = None) -> None:
        self._record = record
        self.count = 0

    def record_into(self, pipe: redis.client.Pipeline) -> None:
        """Add the counted successes' records to `pipe`, a pipeline on the gate's Redis, and
        forget them: they are sent with it (a pipeline may mix hash slots, so the gate's
        scripts ride beside the store's)."""
        if self._record is not None:
            for _ in range(self.count):
                self._record(pipe)
        self.count = 0


class _ThisCall(threading.local):
    """What the gate remembers about the current thread's call: whether it is a trial of
    the half-open circuit (whose permit goes back if the call does not decide anything),
    and where its successes are counted while they are deferred."""

    trial = False
    deferred: DeferredSuccesses | None = None


class OpenGate:
    """No shared limits (tests of a gateway alone, `crmhook check`)."""

    def enter(self, irreversible: str | None = None) -> None:
        return None

    def abandon(self) -> None:
        return None

    def succeeded(self) -> None:
        return None

    def failed(self, error: GatewayError) -> None:
        return None

    @contextmanager
    def deferring_successes(self) -> Iterator[DeferredSuccesses]:
        yield DeferredSuccesses()  # nothing to record: it counts none
