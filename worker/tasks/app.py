"""The Celery application: task defaults in one place, built from Settings.

Why these defaults (ARCHITECTURE.md, "Exactly-once effects"): a task's message is acknowledged
only after it ran (`acks_late`) and goes back to the queue if its worker dies
(`reject_on_worker_lost`); one message reserved per slot (prefetch 1) so a dying worker strands
little; JSON only, so a message can never carry code; results ignored (outcomes live in the
idempotency store). The visibility timeout is short so a killed worker's tasks run again within
two minutes, and kombu's unacked mutex expires well before it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger
from celery.worker.consumer import Consumer

from worker import logs, redaction
from worker.settings import Settings
from worker.store.connection import sentinel_kwargs
from worker.tasks import broker

QUEUE = "crmhook"
PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.25,
    "interval_max": 0.5,
}


def celery_config(settings: Settings) -> dict[str, Any]:
    config = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": (
            amqp_options() if settings.broker_is_amqp else redis_options(settings)
        ),
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_publish_retry": True,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_channel_error_retry": True,
    }
    if settings.broker_is_amqp:
        config |= QUORUM_QUEUES | AMQP_HEARTBEAT
    return config


def redis_options(settings: Settings) -> dict[str, Any]:
    """kombu's Redis transport (or its `sentinel://` one): a short visibility timeout, a
    sweep for dead workers' messages every few seconds, and fail-fast sockets."""
    visibility = settings.broker_visibility_timeout_seconds
    options: dict[str, Any] = {
        "visibility_timeout": visibility,
        "unacked_mutex_expire": max(5, visibility // 3),
        # kombu sweeps for a dead worker's messages every interval x throttle seconds
        # (100 s by default): sweep every ~5 s so they return soon after the timeout.
        "unacked_restore_interval": max(1, visibility // 18),
        "unacked_restore_throttle": 1,
        # Fail fast when Redis is down: the edge answers 503 within seconds.
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
        "retry_on_timeout": False,
        "health_check_interval": 25,
    }
    if settings.redis_sentinels and not settings.celery_broker_url:
        options["master_name"] = settings.redis_sentinel_master
        options["sentinel_kwargs"] = sentinel_kwargs(settings)
    return options


def amqp_options() -> dict[str, Any]:
    """RabbitMQ: a publish returns once the broker confirmed it (for a quorum queue, once a
    majority of its nodes has it on disk), so the edge's Ack follows a confirmed message.

    A confirm can fail to come: a broker in a memory or disk alarm stops reading from
    publishers, a quorum queue without a majority confirms nothing. py-amqp would then wait
    forever, for the confirm and again to close the connection (celery#2689), and the edge's
    request with it. Socket timeouts bound both waits, so the publish fails and the edge
    answers 503 within seconds (the publish retry policy's three tries of about 2 + 2 s).
    The worker's consumer reads only when its event loop finds data ready, so an idle
    queue never meets the read timeout."""
    return {
        "confirm_publish": True,
        "read_timeout": AMQP_SOCKET_TIMEOUT_SECONDS,
        "write_timeout": AMQP_SOCKET_TIMEOUT_SECONDS,
    }


AMQP_SOCKET_TIMEOUT_SECONDS = 2


class QuorumQueueConsumer(Consumer):  # type: ignore[misc]  # Celery is untyped
    """Celery's worker consumer without its `DelayedDelivery` bootstep.

    Celery switches that step on wherever a queue is a quorum queue: at every worker start
    it declares 28 topic exchanges and 28 quorum queues (28 Raft groups, replicated to every
    node) for countdowns routed through topic exchanges, and warns that ours is direct.
    Nothing here uses them: retries wait in the store's schedule, and the rare countdown
    left (an infrastructure retry) stays, on a direct exchange, a plain ETA message."""

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps = tuple(
            step
            for step in Consumer.Blueprint.default_steps
            if not step.endswith(":DelayedDelivery")
        )


# RabbitMQ's replicated queues (Celery's documented settings, 5.5+). Every queue Celery
# declares for tasks is a quorum queue; quorum queues refuse a global prefetch, which Celery
# then sets per consumer (`worker_detect_quorum_queues`, "Global QoS is disabled"). They keep
# no countdowns well, so retries wait in the store's schedule instead
# (`Settings.countdown_limit_seconds` is 0). The exchange stays direct on purpose: on a topic
# exchange Celery would route any countdown to native delayed delivery's exchanges, which
# `QuorumQueueConsumer` does not declare (and an unroutable message is dropped).
QUORUM_QUEUES: dict[str, Any] = {
    "task_default_queue_type": "quorum",
    "task_create_missing_queue_type": "quorum",
    "task_default_exchange_type": "direct",
    "worker_detect_quorum_queues": True,
    "worker_consumer": f"{__name__}:{QuorumQueueConsumer.__name__}",
}

# AMQP heartbeats, worker side. RabbitMQ learns of a worker whose host died or was cut off
# (no TCP reset) only from missed heartbeats, and only then hands its unacknowledged
# messages to others: after about 2 x 10 s rather than 2 x the 60 s the server offers. The
# check runs every second (10 s / rate 10), which also bounds how long the worker's event
# loop sleeps, so a SIGTERM's warm shutdown begins within a second, not up to ten.
AMQP_HEARTBEAT: dict[str, Any] = {
    "broker_heartbeat": 10,
    "broker_heartbeat_checkrate": 10,
}


def make_celery(settings: Settings) -> Celery:
    """A Celery app for `settings`. The worker's tasks register themselves on it.

    Every process that talks to the broker builds its app here (the worker on `celery
    --app worker`, the web app, the CLI), so here its log records start being redacted."""
    redaction.install(settings)
    broker.install()  # kombu's Redis transports, surviving a lost connection
    _format_celery_logs(settings.log_format)
    app = Celery("crmhook", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.crmhook_settings = settings
    app.conf.imports = ("worker.tasks.tasks",)
    return app


def _format_celery_logs(log_format: logs.LogFormat) -> None:
    """Once Celery has set up its handlers (in the worker only), give them `LOG_FORMAT`'s
    formatter: its own lines and the task lines then look like everyone else's."""

    def root(logger: logging.Logger, **_: Any) -> None:
        logs.use_format(log_format, (logger,))

    def task(logger: logging.Logger, **_: Any) -> None:
        logs.use_format(log_format, (logger,))

    after_setup_logger.connect(root, weak=False, dispatch_uid="crmhook-log-format")
    after_setup_task_logger.connect(task, weak=False, dispatch_uid="crmhook-task-log-format")
