"""Stopping a worker without turning its calls into in-doubt operations.

On SIGTERM (a deploy, a scale-down, `docker compose stop`, a Procfile host's restart) Celery
begins its warm shutdown: it stops taking messages and waits for the tasks it runs. On top of
that, from the first moment of the shutdown:

- no new irreversible call leaves this worker: a task that has not yet marked its call as
  sending gives its claim back and its message back to the queue, unacknowledged
  (`WorkerStopping`), for a worker that is not stopping;
- calls already sent get `WORKER_SHUTDOWN_GRACE_SECONDS` to finish and settle, so that their
  answer is recorded rather than left in doubt;
- past the grace period the process exits at once. What it still holds stays unacknowledged
  in the broker and comes back after the visibility timeout; a call that had left without an
  answer is in doubt and reconciled through `crm-get`, as after any crash. The grace period is
  kept below the host's own (Heroku: 30 s; compose: `stop_grace_period`), so that exiting is
  ours to do, not a SIGKILL's.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from celery.signals import worker_shutting_down
from celery.worker import state

from worker.tasks.runtime import Runtime

log = logging.getLogger(__name__)

# What a worker exits with when the grace period ran out with calls still in flight.
EXIT_GRACE_OVER = 75  # EX_TEMPFAIL: try again later, nothing was lost


def install(runtime: Runtime, grace_seconds: float) -> None:
    """From the first shutdown signal on, hold back new irreversible calls and bound the
    wait for the rest by `grace_seconds`. Called once the worker is ready."""

    def begin(sig: str = "", how: str = "", **_: Any) -> None:
        if runtime.stopping.is_set():
            return
        runtime.stopping.set()
        log.warning(
            "%s: %s shutdown; no new irreversible call leaves this worker, and the %d "
            "task(s) running have %g s to finish",
            sig or "signal",
            how.lower() or "warm",
            len(state.active_requests),
            grace_seconds,
        )
        timer = threading.Timer(grace_seconds, _grace_over)
        timer.daemon = True
        timer.start()

    worker_shutting_down.connect(begin, weak=False, dispatch_uid="crmhook-graceful-shutdown")


def _grace_over() -> None:
    """The grace period ran out: leave what is left unacknowledged and exit now. Celery's
    cold shutdown would wait for the pool's threads, which are in calls we cannot cut."""
    left = len(state.active_requests)
    log.error(
        "shutdown grace period over with %d task(s) still running: exiting; their messages "
        "return to the queue after the visibility timeout, and a call that had left is "
        "reconciled before anything is sent again",
        left,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_GRACE_OVER)
