"""The clients a worker process needs, built once per Celery app on first use.

Tasks reach them as `self.runtime` (the `RuntimeTask` base class, as Celery's "Instantiation"
docs do for a database connection). Built lazily rather than at import so that forked
children and tests get their own connections; guarded by a lock because the thread pool's
first tasks arrive together.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Task

from worker.chilipiper import Gateway, build_gateway
from worker.chilipiper.breaker import BreakerSettings
from worker.chilipiper.gate import Gate, GateSettings
from worker.leases import Heartbeat
from worker.settings import RATE_LIMIT_MAX_BLOCK_SECONDS, Settings
from worker.store import Retention, Store
from worker.store.connection import store_client


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    redis: redis.Redis
    store: Store
    gate: Gate
    gateway: Gateway
    heartbeat: Heartbeat
    # Set when the worker begins to shut down: no new irreversible call leaves after it.
    stopping: threading.Event = field(default_factory=threading.Event)


def retention(settings: Settings) -> Retention:
    return Retention(
        action_seconds=settings.action_key_ttl_seconds,
        get_seconds=settings.get_key_ttl_seconds,
        notification_seconds=settings.notification_ttl_seconds,
        quarantine_seconds=settings.quarantine_ttl_seconds,
    )


def build_store(settings: Settings, client: redis.Redis | None = None) -> Store:
    """The store on `REDIS_URL` or the sentinels' master (or on `client`), kept as long as
    the settings say."""
    return Store(client or store_client(settings), retention(settings))


def build_gate(settings: Settings, client: redis.Redis) -> Gate:
    """The limits toward ChiliPiper that every worker shares through `client`."""
    return Gate(
        client,
        GateSettings(
            ceiling_per_second=settings.rate_ceiling,
            max_block_seconds=RATE_LIMIT_MAX_BLOCK_SECONDS,
            guard_per_minute=settings.irreversible_guard_per_minute,
            breaker=BreakerSettings(
                failure_rate=settings.circuit_failure_rate_percent / 100,
                window_calls=settings.circuit_window_calls,
                cooldown_seconds=settings.circuit_cooldown_seconds,
                trial_calls=settings.circuit_trial_calls,
                trial_seconds=settings.chilipiper_call_deadline_seconds,
            ),
        ),
    )


def build_runtime(settings: Settings) -> Runtime:
    # One line per ChiliPiper request at INFO drowns the task log; our own lines say enough.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    store = build_store(settings)
    gate = build_gate(settings, store.redis)
    return Runtime(
        settings=settings,
        redis=store.redis,
        store=store,
        gate=gate,
        gateway=build_gateway(settings, gate=gate),
        heartbeat=Heartbeat(
            store.claims,
            lease_seconds=settings.claim_lease_seconds,
            interval=settings.claim_heartbeat_seconds,
        ),
    )


_lock = threading.Lock()


def runtime_of(app: Any) -> Runtime:
    """The runtime of a Celery app built by `make_celery`, built on first use."""
    with _lock:
        runtime: Runtime | None = getattr(app, "crmhook_runtime", None)
        if runtime is None:
            runtime = app.crmhook_runtime = build_runtime(app.crmhook_settings)
        return runtime


class RuntimeTask(Task):  # type: ignore[misc]  # Celery is untyped
    """Base of the service's tasks: `self.runtime` is the process's clients, shared by every
    task of the app and every thread of the pool."""

    abstract = True

    @property
    def runtime(self) -> Runtime:
        return runtime_of(self.app)
