"""Holding a claim while its execution works: the heartbeat, and the lease by our own clock.

A claim's lease is what keeps every other execution of the operation away, so it must not
run out while its holder is still working (a slow crm-get, an answer streamed for minutes),
and the holder must never send once it may have run out. Two rules do that:

- One heartbeat thread per worker process renews the lease of every claim held in it, every
  `CLAIM_HEARTBEAT_SECONDS`, until the claim's deadline: a call ends by its deadline, so a
  heartbeat past it would only keep a stuck execution's claim alive.
- Each execution knows by its own clock until when its lease surely lasts: the time it
  *sent* its last successful renewal plus the lease (Redis's lease began later than that).
  `Lease.check`, run right before a request of an irreversible call leaves, refuses once
  that time has passed, or once a renewal found the claim taken over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from worker import clock
from worker.domain.operations import Operation
from worker.errors import ClaimLost
from worker.store import keys
from worker.store.claims import Claim, Claims

log = logging.getLogger(__name__)


class Lease:
    """One execution's hold on its claim, as this process knows it."""

    def __init__(
        self,
        claims: Claims,
        operation: Operation,
        claim: Claim,
        *,
        lease_seconds: float,
        valid_from: float,
        renew_for: float,
    ) -> None:
        self.operation = operation
        self.claim = claim
        self._claims = claims
        self._lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._valid_until = valid_from + lease_seconds  # `clock.now()`
        self._renew_until = clock.now() + renew_for  # `clock.now()`: no heartbeat after
        self._lost = False

    def check(self) -> None:
        """Raise ClaimLost unless the claim surely still holds: right before a send."""
        with self._lock:
            if self._lost:
                raise ClaimLost(f"{keys.operation(self.operation)}: taken over; not sending")
            if clock.now() >= self._valid_until:
                raise ClaimLost(
                    f"{keys.operation(self.operation)}: the lease ran out by this worker's "
                    "clock (a stall, or Redis out of reach); not sending"
                )

    def mark_sending(self, renew_for: float) -> None:
        """Renew the lease and mark the irreversible call about to leave (durably, see
        `Claims.mark_sending`); the heartbeat then goes on for `renew_for` seconds (the
        call's deadline). Raises ClaimLost when the claim is gone or ran out meanwhile."""
        sent_at = clock.now()
        if not self._claims.mark_sending(self.operation, self.claim, self._lease_seconds):
            with self._lock:
                self._lost = True
        else:
            self.renewed(sent_at)
            with self._lock:
                self._renew_until = clock.now() + renew_for
        self.check()

    def due(self, now: float) -> bool:
        with self._lock:
            return not self._lost and now < self._renew_until

    def renewed(self, sent_at: float) -> None:
        with self._lock:
            self._valid_until = max(self._valid_until, sent_at + self._lease_seconds)

    def lost(self) -> None:
        with self._lock:
            self._lost = True


class Heartbeat:
    """The worker process's heartbeat: renews every lease held in the process."""

    def __init__(self, claims: Claims, *, lease_seconds: float, interval: float) -> None:
        self._claims = claims
        self._lease_seconds = lease_seconds
        self._interval = interval
        self._leases: set[Lease] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def hold(
        self, claim: Claim, operation: Operation, *, valid_from: float, renew_for: float
    ) -> Iterator[Lease]:
        """Keep `claim` alive while the block runs (for `renew_for` seconds at most, or as
        `Lease.mark_sending` extends it). `valid_from`: when the claim was asked for."""
        lease = Lease(
            self._claims,
            operation,
            claim,
            lease_seconds=self._lease_seconds,
            valid_from=valid_from,
            renew_for=renew_for,
        )
        with self._lock:
            self._leases.add(lease)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="crmhook-heartbeat", daemon=True
                )
                self._thread.start()
        try:
            yield lease
        finally:
            with self._lock:
                self._leases.discard(lease)

    def beat(self) -> int:
        """Renew every lease that is due, in one round trip; returns how many were renewed."""
        now = clock.now()
        with self._lock:
            due = [lease for lease in self._leases if lease.due(now)]
        if not due:
            return 0
        sent_at = clock.now()
        renewed = self._claims.renew_many(
            [(lease.operation, lease.claim) for lease in due], self._lease_seconds
        )
        for lease, until in zip(due, renewed, strict=True):
            if until is not None:
                lease.renewed(sent_at)
                continue
            lease.lost()
            with self._lock:
                held = lease in self._leases  # else it was settled meanwhile: all is well
            if held:
                log.error("%s: claim taken over while held", keys.operation(lease.operation))
        return sum(until is not None for until in renewed)

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            try:
                self.beat()
            except redis.RedisError:
                # The leases run out by our own clock meanwhile: nothing is sent on them.
                log.warning("heartbeat: Redis failed; leases not renewed", exc_info=True)
            except Exception:  # the thread must outlive any surprise, or every lease lapses
                log.exception("heartbeat: unexpected error; beating on")
