"""Every worker process runs a dispatcher: it moves due retries to the queue, and re-enqueues
operations whose message the broker lost.

A retry due in minutes or hours cannot wait in the broker as a Celery countdown: the worker
holds such a message unacknowledged, and past the visibility timeout the broker hands it out
again, and again (kombu#337). So `perform_task` parks long retries here, and this thread,
started in each worker, re-enqueues them when due. Dispatch is at-least-once (an entry is
leased, published, then removed); the claim absorbs a duplicate.

The same thread sweeps the store's index of unsettled operations: one still queued, retrying
or in doubt (or running on an expired lease) long after it was last enqueued (REQUEUE_AFTER_SECONDS)
lost its message somewhere, and is enqueued again. The store, not the broker, is the record
of what must still happen.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from worker.ingest import PERFORM_TASK
from worker.tasks.runtime import Runtime

log = logging.getLogger(__name__)
SWEEP_EVERY_TICKS = 5


class Dispatcher(threading.Thread):
    def __init__(self, app: Any, runtime: Runtime, interval: float = 1.0) -> None:
        super().__init__(name="crmhook-dispatcher", daemon=True)
        self._app = app
        self._runtime = runtime
        self._interval = interval
        self._stopping = threading.Event()

    def run(self) -> None:
        ticks = 0
        while not self._stopping.wait(self._interval):
            ticks += 1
            try:
                self.dispatch_due()
                if ticks % SWEEP_EVERY_TICKS == 0:
                    self.requeue_stale()
            except Exception:  # Redis or broker trouble: try again next tick
                log.warning("could not dispatch due retries", exc_info=True)

    def dispatch_due(self) -> int:
        store = self._runtime.store
        lease = self._runtime.settings.broker_visibility_timeout_seconds
        due = store.take_due(lease_seconds=lease)
        for entry, operation in due:
            self._app.send_task(PERFORM_TASK, args=[operation.to_message()])
            store.done(entry)
        if due:
            log.info("re-enqueued %d due retr%s", len(due), "y" if len(due) == 1 else "ies")
        return len(due)

    def requeue_stale(self) -> int:
        """Enqueue again the unsettled operations whose message seems lost."""
        stale = self._runtime.store.stale(self._runtime.settings.requeue_after_seconds)
        for operation in stale:
            self._app.send_task(PERFORM_TASK, args=[operation.to_message()])
        if stale:
            log.warning("re-enqueued %d operation(s) whose message was lost", len(stale))
        return len(stale)

    def stop(self) -> None:
        self._stopping.set()
