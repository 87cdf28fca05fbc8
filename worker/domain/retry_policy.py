"""When an operation runs again, as pure functions: the back-off, and where the wait happens.

Two kinds of wait: the shared limits (rate limit, a 429's pause, an open circuit) say exactly
when calls may go again; a failure backs off exponentially with full jitter, never sooner
than a `Retry-After`. A wait shorter than a third of the broker's visibility timeout is a
Celery countdown; a longer one is parked in Redis by due time, since a countdown held past
the visibility timeout is delivered again and again (kombu#337).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# Draws a number uniformly from [low, high]: `random.uniform`, or a fixed one in tests.
Draw = Callable[[float, float], float]
# Tasks held back together are spread over this many seconds, so they do not return together.
SPREAD_SECONDS = 1.0


def backoff(attempts: int, *, base: float, cap: float, draw: Draw = random.uniform) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^(attempts-1))], so workers that failed
    together do not come back together (AWS Architecture Blog, "Exponential Backoff And
    Jitter": of the strategies compared, it does the least work for the fastest recovery)."""
    ceiling = min(cap, base * 2 ** max(0, min(attempts - 1, 30)))
    return draw(0, ceiling)


@dataclass(frozen=True)
class NextRun:
    delay: float  # seconds from now
    parked: bool  # waits in Redis (the schedule), not in the broker as a countdown


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float
    cap_seconds: float
    countdown_limit_seconds: float

    def next_run(
        self,
        attempts: int,
        *,
        held_for: float | None = None,
        retry_after: float | None = None,
        draw: Draw = random.uniform,
    ) -> NextRun:
        """The next run of an operation after `attempts` attempts: `held_for` seconds (and a
        little spread) when the shared limits held it back, else a back-off no shorter than
        the server's `Retry-After`."""
        if held_for is not None:
            delay = held_for + draw(0, SPREAD_SECONDS)
        else:
            delay = backoff(attempts, base=self.base_seconds, cap=self.cap_seconds, draw=draw)
            delay = max(delay, retry_after or 0.0)
        return NextRun(delay, parked=delay >= self.countdown_limit_seconds)
