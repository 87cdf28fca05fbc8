"""The worker's Prometheus metrics (served by `worker.tasks.metrics_endpoint`).

Two kinds, for two reasons:

- what this process did (operations ended and how, retries, reconciliations, ChiliPiper
  calls and their latency) is counted as it happens, in prometheus-client's counters and
  histograms. Several worker processes on one host either each serve their own port, or
  share one `PROMETHEUS_MULTIPROC_DIR` (prometheus-client's multiprocess mode), and then
  whichever process holds the port serves the sum of all of them;
- what the system holds (dead letters, quarantine, the broker's queue, the oldest
  operation not yet settled, the limiter's rate, the circuit, the pause) lives in Redis and
  is read at each scrape (`STORE_GAUGES`, read by `metrics_endpoint.StoreCollector`), so
  it is right whichever process answers and however many there are: dashboards take `max`
  of these, not `sum`.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

from worker.errors import (
    GatewayError,
    InDoubtError,
    NoMeetingError,
    PermanentError,
    RetryableError,
    ToolError,
)

CIRCUIT_STATES = ("closed", "open", "half_open")
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

OPERATIONS = Counter(
    "crmhook_operations",
    "Runs of an operation's task, by action and how the run ended (succeeded, reconciled, "
    "already_done, already_failed, failed, lost_claim; retry: Celery runs it again soon; "
    "scheduled: parked in Redis; requeued: its message went back to the queue)",
    ["action", "outcome"],
)
RETRIES = Counter(
    "crmhook_retries",
    "Operations set to run again later, by action and why (deferred: rate limit, pause, "
    "circuit or a busy claim; transient: ChiliPiper failed; infrastructure: Redis or broker)",
    ["action", "reason"],
)
RECONCILIATIONS = Counter(
    "crmhook_reconciliations",
    "In-doubt irreversible operations checked through crm-get, by action and what it showed "
    "(done: it had taken effect; still_booked: sent again)",
    ["action", "result"],
)
CALLS = Histogram(
    "crmhook_chilipiper_call_seconds",
    "Requests to ChiliPiper's tools, by tool and status (ok, tool_error, no_meeting, "
    "in_doubt, retryable, permanent, or http_<code> when ChiliPiper answered one)",
    ["tool", "status"],
    buckets=CALL_BUCKETS,
)


def call_status(error: BaseException | None) -> str:
    """A bounded label for how one request to ChiliPiper ended."""
    if error is None:
        return "ok"
    status = getattr(error, "status", None)
    if isinstance(status, int) and not isinstance(error, ToolError):
        return f"http_{status}"
    for kind, label in (
        (NoMeetingError, "no_meeting"),
        (ToolError, "tool_error"),
        (InDoubtError, "in_doubt"),
        (RetryableError, "retryable"),
        (PermanentError, "permanent"),
        (GatewayError, "deferred"),
    ):
        if isinstance(error, kind):
            return label
    return "error"


def observe_call(tool: str, started: float, error: BaseException | None = None) -> None:
    CALLS.labels(tool, call_status(error)).observe(time.monotonic() - started)


# The gauges read from Redis at each scrape: name → (help, labels).
STORE_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "crmhook_store_up": ("Whether Redis answered this scrape", ()),
    "crmhook_dead_letters": (
        "Operations that failed for good and wait for an operator, by action",
        ("action",),
    ),
    "crmhook_quarantined_notifications": (
        "Notifications refused at the edge and kept for an operator",
        (),
    ),
    "crmhook_queue_depth": ("Task messages waiting in the broker's queue", ()),
    "crmhook_unacknowledged_messages": (
        "Task messages delivered to a worker and not yet acknowledged",
        (),
    ),
    "crmhook_scheduled_retries": ("Long retries parked in Redis until due", ()),
    "crmhook_pending_operations": ("Operations not settled yet", ()),
    "crmhook_oldest_pending_seconds": (
        "How long the longest-waiting unsettled operation has been due (0: none overdue)",
        (),
    ),
    "crmhook_unfinished_ingests": ("Accepted messages whose fan-out has not finished", ()),
    "crmhook_rate_limit_per_second": (
        "The rate of calls toward ChiliPiper that the shared limiter allows now",
        (),
    ),
    "crmhook_circuit_state": (
        "The shared circuit breaker toward ChiliPiper: 1 for its current state",
        ("state",),
    ),
    "crmhook_chilipiper_hold_seconds": (
        "Seconds until calls may go again (a Retry-After pause or an open circuit)",
        (),
    ),
    "crmhook_redis_persistence_warnings": (
        "Redis settings that could lose acknowledged work (as /readyz warns)",
        (),
    ),
    "crmhook_irreversible_paused": (
        "1 while an operator has paused every irreversible call (crmhook pause)",
        (),
    ),
    "crmhook_held_operations": (
        "Irreversible operations held for an operator, by the valve that held them "
        "(paused: crmhook resume; guard: crmhook release-held or drop-held)",
        ("reason",),
    ),
}
