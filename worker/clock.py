"""The clock leases and deadlines are measured with: monotonic, and counting the time a host
spent suspended (`CLOCK_BOOTTIME` on Linux), so that a worker resumed after a suspend knows
its lease and its call's deadline have run out meanwhile. Elsewhere, plain monotonic time.
"""

from __future__ import annotations

import time

_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def now() -> float:
    """Seconds on a clock that never goes back and counts suspended time where it can."""
    if _BOOTTIME is not None:
        return time.clock_gettime(_BOOTTIME)
    return time.monotonic()
