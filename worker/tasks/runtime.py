"""The clients a worker process needs, built once per process on first use.

Built lazily rather than at import so that forked children and tests get their own
connections; guarded by a lock because the thread pool's first tasks arrive together.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import redis

from worker.chilipiper import Gateway, build_gateway
from worker.chilipiper.gate import Gate, GateSettings
from worker.settings import RATE_LIMIT_MAX_BLOCK_SECONDS, Settings
from worker.store.claims import Retention, Store


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    redis: redis.Redis
    store: Store
    gate: Gate
    gateway: Gateway


def redis_client(url: str) -> redis.Redis:
    """A Redis client with explicit timeouts: a dead Redis fails fast instead of hanging."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=25,
        decode_responses=True,
    )


def retention(settings: Settings) -> Retention:
    return Retention(
        action_seconds=settings.action_key_ttl_seconds,
        get_seconds=settings.get_key_ttl_seconds,
        notification_seconds=settings.notification_ttl_seconds,
        quarantine_seconds=settings.quarantine_ttl_seconds,
    )


def build_runtime(settings: Settings) -> Runtime:
    # One line per ChiliPiper request at INFO drowns the task log; our own lines say enough.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    client = redis_client(settings.redis_url)
    gate = Gate(
        client,
        GateSettings(
            rate_per_second=settings.rate_per_second,
            max_block_seconds=RATE_LIMIT_MAX_BLOCK_SECONDS,
            failure_threshold=settings.circuit_failure_threshold,
            cooldown_seconds=settings.circuit_cooldown_seconds,
            trial_seconds=settings.call_budget_seconds,
        ),
    )
    return Runtime(
        settings=settings,
        redis=client,
        store=Store(client, retention(settings)),
        gate=gate,
        gateway=build_gateway(settings, gate=gate),
    )


_lock = threading.Lock()
_runtimes: dict[int, Runtime] = {}


def runtime_for(settings: Settings) -> Runtime:
    """This process's runtime for `settings` (one per settings object)."""
    with _lock:
        runtime = _runtimes.get(id(settings))
        if runtime is None:
            runtime = _runtimes[id(settings)] = build_runtime(settings)
        return runtime
