"""The worker's `/metrics` on `WORKER_METRICS_PORT`: this process's counters (or, in
prometheus-client's multiprocess mode, every process's) and the gauges read from Redis at
each scrape (`worker.metrics.STORE_GAUGES` says which and why)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import redis
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.domain.operations import Action
from worker.metrics import CIRCUIT_STATES, STORE_GAUGES
from worker.store import keys
from worker.store.durability import durability_warnings
from worker.tasks.app import QUEUE
from worker.tasks.runtime import Runtime

log = logging.getLogger(__name__)


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
            pipe.llen(QUEUE)
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
