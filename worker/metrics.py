"""The worker's Prometheus metrics, served on `WORKER_METRICS_PORT` at `/metrics`.

Two kinds, for two reasons:

- what this process did (operations ended and how, retries, reconciliations, ChiliPiper
  calls and their latency) is counted as it happens, in prometheus-client's counters and
  histograms. Several worker processes on one host either each serve their own port, or
  share one `PROMETHEUS_MULTIPROC_DIR` (prometheus-client's multiprocess mode), and then
  whichever process holds the port serves the sum of all of them;
- what the system holds (dead letters, quarantine, the broker's queue, the oldest
  operation not yet settled, the limiter's rate, the circuit, the pause) lives in Redis and
  is read at each scrape (`StoreCollector`), so it is right whichever process answers and
  however many there are: dashboards take `max` of these, not `sum`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.domain.operations import Action
from worker.errors import (
    GatewayError,
    InDoubtError,
    NoMeetingError,
    PermanentError,
    RetryableError,
    ToolError,
)
from worker.store import keys
from worker.store.durability import durability_warnings

if TYPE_CHECKING:
    from worker.tasks.runtime import Runtime

log = logging.getLogger(__name__)

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
    "(done: it had taken effect; still_booked: sent again; unknown: dead-lettered)",
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


def _family(name: str) -> GaugeMetricFamily:
    documentation, labels = STORE_GAUGES[name]
    return GaugeMetricFamily(name, documentation, labels=labels)


class StoreCollector(Collector):
    """Gauges read from Redis at each scrape: the same answer from every process."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The gauges, without asking Redis (prometheus-client registers through this)."""
        return (_family(name) for name in STORE_GAUGES)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = _family("crmhook_store_up")
        try:
            values = self._read()
        except redis.RedisError as exc:
            log.warning("metrics: Redis did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, samples in values.items():
            family = _family(name)
            for labels, value in samples:
                family.add_metric(list(labels), value)
            yield family

    def _read(self) -> dict[str, list[tuple[tuple[str, ...], float]]]:
        runtime = self._runtime
        client, store, gate = runtime.redis, runtime.store, runtime.gate
        now = time.time()
        with client.pipeline(transaction=False) as pipe:
            for action in Action:
                pipe.zcard(keys.dead_letters_of(action))
            pipe.zcard(keys.QUARANTINE)
            pipe.llen(_queue_name())
            pipe.hlen("unacked")
            pipe.zcard(keys.SCHEDULE)
            pipe.zcard(keys.PENDING)
            pipe.zrange(keys.PENDING, 0, 0, withscores=True)
            pipe.zcard(keys.INGESTS)
            pipe.exists(keys.GATE_IRREVERSIBLE_PAUSE)
            replies = pipe.execute()
        counts = replies[: len(Action)]
        dead: list[tuple[tuple[str, ...], float]] = [
            ((action.value,), float(n)) for action, n in zip(Action, counts, strict=True)
        ]
        quarantined, queued, unacked, scheduled, pending, oldest, ingests, paused = replies[
            len(Action) :
        ]
        circuit = gate.breaker.state().replace("-", "_")
        return {
            "crmhook_dead_letters": dead,
            "crmhook_quarantined_notifications": [((), quarantined)],
            "crmhook_queue_depth": [((), queued)],
            "crmhook_unacknowledged_messages": [((), unacked)],
            "crmhook_scheduled_retries": [((), scheduled)],
            "crmhook_pending_operations": [((), pending)],
            "crmhook_oldest_pending_seconds": [
                ((), max(0.0, now - oldest[0][1]) if oldest else 0.0)
            ],
            "crmhook_unfinished_ingests": [((), ingests)],
            "crmhook_rate_limit_per_second": [((), gate.limiter.rate())],
            "crmhook_circuit_state": [
                ((state,), 1.0 if state == circuit else 0.0) for state in CIRCUIT_STATES
            ],
            "crmhook_chilipiper_hold_seconds": [((), gate.deferral())],
            "crmhook_redis_persistence_warnings": [
                ((), float(len(durability_warnings(store.redis))))
            ],
            "crmhook_irreversible_paused": [((), float(paused))],
            "crmhook_held_operations": [
                ((reason,), float(count)) for reason, count in store.holds.counts().items()
            ],
        }


def _queue_name() -> str:
    from worker.tasks.app import QUEUE  # here: the tasks' package imports this module

    return QUEUE


def serving_registry(runtime: Runtime) -> CollectorRegistry:
    """What `/metrics` answers: this process's counters (or, in multiprocess mode, every
    process's), and the store's gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    registry.register(StoreCollector(runtime))
    return registry


def serve(runtime: Runtime, port: int) -> bool:
    """Serve `/metrics` on `port` (all interfaces), in a daemon thread. False when the port
    is taken, as by another worker process on this host: with a shared multiprocess
    directory, that one's answer counts this process too."""
    try:
        start_http_server(port, registry=serving_registry(runtime))
    except OSError as exc:
        log.warning("metrics: port %d not served by this process (%s)", port, exc)
        return False
    log.info("metrics: serving /metrics on port %d", port)
    return True
