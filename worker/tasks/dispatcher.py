"""Every worker process runs a dispatcher thread: it moves due retries to the queue, and
re-enqueues operations whose message the broker lost.

Long retries wait in Redis by due time (see `store.schedule`); this thread enqueues them
when due. The same thread sweeps the store's index of unsettled operations: one still
queued, retrying or in doubt (or running on an expired lease) long after it was last
enqueued (REQUEUE_AFTER_SECONDS) lost its message somewhere, and is enqueued again; so is
an acknowledged inbound message whose fan-out has not run by then (`store.ingests`). The
store, not the broker, is the record of what must still happen.

At start it also applies the store's pending one-off migrations, in a thread of their own:
a long scan must not hold up due retries or the lost-message sweep.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from worker.domain.retry_policy import backoff
from worker.store import migrations
from worker.tasks.publish import publish, publish_again
from worker.tasks.runtime import Runtime

log = logging.getLogger(__name__)
SWEEP_EVERY_TICKS = 5
MIGRATION_RETRY_CAP_SECONDS = 300.0


class Dispatcher(threading.Thread):
    def __init__(self, app: Any, runtime: Runtime, interval: float = 1.0) -> None:
        super().__init__(name="crmhook-dispatcher", daemon=True)
        self._app = app
        self._runtime = runtime
        self._interval = interval
        self._stopping = threading.Event()

    def run(self) -> None:
        threading.Thread(target=self.migrate, name="crmhook-migrations", daemon=True).start()
        ticks = 0
        while not self._stopping.wait(self._interval):
            ticks += 1
            try:
                self.dispatch_due()
                if ticks % SWEEP_EVERY_TICKS == 0:
                    self.requeue_stale()
            except Exception:  # Redis or broker trouble: try again next tick
                log.warning("dispatcher: Redis or the broker failed; next tick", exc_info=True)

    def migrate(self) -> None:
        """Apply the pending migrations; after a failure (Redis away), try again later."""
        failures = 0
        while not self._stopping.is_set():
            try:
                migrations.apply(self._runtime.redis, self._runtime.store.records)
                return
            except Exception:
                failures += 1
                log.warning("store migration failed; trying again", exc_info=True)
                self._stopping.wait(backoff(failures, base=5, cap=MIGRATION_RETRY_CAP_SECONDS))

    def dispatch_due(self) -> int:
        schedule = self._runtime.store.schedule
        lease = self._runtime.settings.broker_visibility_timeout_seconds
        due = schedule.take_due(lease_seconds=lease)
        publish(self._app, [operation for _, operation in due])
        for entry, _ in due:
            schedule.done(entry)
        if due:
            log.info("re-enqueued %d due retr%s", len(due), "y" if len(due) == 1 else "ies")
        return len(due)

    def requeue_stale(self) -> int:
        """Enqueue again the unsettled operations, and publish again the fan-outs, whose
        message seems lost."""
        older_than = self._runtime.settings.requeue_after_seconds
        unfinished = self._runtime.store.ingests.unfinished(older_than)
        for ingest_id, message in unfinished:
            publish_again(self._app, ingest_id, message)
        if unfinished:
            log.warning("published again %d fan-out(s) whose message was lost", len(unfinished))
        stale = self._runtime.store.pending.stale(older_than)
        publish(self._app, stale)
        if stale:
            log.warning("re-enqueued %d operation(s) whose message was lost", len(stale))
        return len(unfinished) + len(stale)

    def stop(self) -> None:
        self._stopping.set()
