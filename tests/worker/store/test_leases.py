"""The heartbeat and the lease by the worker's own clock, on a real Redis."""

from __future__ import annotations

import time

import pytest

from tests.worker.store.conftest import cancel
from worker import clock
from worker.errors import ClaimLost
from worker.leases import Heartbeat
from worker.store import Store
from worker.store.claims import Verdict


def test_the_heartbeat_keeps_a_claim_past_its_lease_while_it_is_held(store: Store) -> None:
    operation = cancel()
    heartbeat = Heartbeat(store.claims, lease_seconds=1, interval=0.2)
    asked = clock.now()
    claim = store.claims.claim(operation, "e1", lease_seconds=1)
    with heartbeat.hold(claim, operation, valid_from=asked, renew_for=10) as lease:
        time.sleep(2.0)  # twice the lease
        assert store.claims.claim(operation, "e2", lease_seconds=1).verdict is Verdict.BUSY
        lease.check()  # still ours, by our own clock too


def test_the_heartbeat_stops_at_the_deadline_and_the_lease_then_runs_out(store: Store) -> None:
    operation = cancel()
    heartbeat = Heartbeat(store.claims, lease_seconds=1, interval=0.2)
    asked = clock.now()
    claim = store.claims.claim(operation, "stuck", lease_seconds=1)
    with heartbeat.hold(claim, operation, valid_from=asked, renew_for=0.5) as lease:
        time.sleep(1.8)  # the call would have been abandoned at 0.5 s: no renewal since
        with pytest.raises(ClaimLost, match="ran out by this worker's clock"):
            lease.check()
        taken = store.claims.claim(operation, "e2", lease_seconds=60)
        assert taken.verdict is Verdict.CLAIMED


def test_without_a_renewal_the_lease_runs_out_by_the_workers_own_clock(store: Store) -> None:
    """Redis out of reach, or the process stalled: by its own clock the execution knows its
    lease may be gone, and refuses to send, even before anyone has taken it over."""
    operation = cancel()
    heartbeat = Heartbeat(store.claims, lease_seconds=1, interval=3600)
    asked = clock.now()
    claim = store.claims.claim(operation, "e1", lease_seconds=1)
    with heartbeat.hold(claim, operation, valid_from=asked, renew_for=10) as lease:
        lease.check()
        time.sleep(1.05)
        with pytest.raises(ClaimLost):
            lease.check()


def test_a_claim_taken_over_is_seen_by_the_next_heartbeat(store: Store) -> None:
    operation = cancel()
    heartbeat = Heartbeat(store.claims, lease_seconds=60, interval=3600)
    asked = clock.now()
    claim = store.claims.claim(operation, "e1", lease_seconds=0)
    time.sleep(0.01)
    assert store.claims.claim(operation, "e2", lease_seconds=60).verdict is Verdict.CLAIMED
    with heartbeat.hold(claim, operation, valid_from=asked, renew_for=10) as lease:
        assert heartbeat.beat() == 0
        with pytest.raises(ClaimLost, match="taken over"):
            lease.check()
        with pytest.raises(ClaimLost):
            lease.mark_sending(renew_for=10)  # and the send marker is refused


def test_mark_sending_renews_the_lease_and_extends_the_heartbeat(store: Store) -> None:
    operation = cancel()
    heartbeat = Heartbeat(store.claims, lease_seconds=1, interval=0.2)
    asked = clock.now()
    claim = store.claims.claim(operation, "e1", lease_seconds=1)
    with heartbeat.hold(claim, operation, valid_from=asked, renew_for=0.1) as lease:
        lease.mark_sending(renew_for=10)
        time.sleep(1.5)  # past the first deadline: the call's deadline counts now
        lease.check()
        assert store.redis.hget(f"crmhook:op:{{{operation.identity}}}", "call_started_at")
