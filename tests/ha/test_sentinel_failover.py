"""The master SIGKILLed under load, through Sentinel: every cancel happens exactly once.

Senders post 300 cancels (one Outbound Message each) as Salesforce would, sending a message
again until it is acknowledged; halfway through, the master dies. Sentinel promotes the
replica; the edge, the worker's store and its broker connection follow. What the issue asks
of it: posts during the failover are answered 503 (or acknowledged), never acknowledged and
lost, and no meeting is cancelled twice. The killed master then comes back, as it would, and
is made a replica of the new one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    TOKEN,
    SandboxServer,
    make_settings,
    notification_id,
    outbound_message,
    random_event_id,
    serve,
    start_worker,
    stop_process,
    wait_for,
)
from tests.ha.conftest import REDIS_VARIABLES
from tests.ha.sentinel import SentinelCluster
from tests.reliability.conftest import FAST, cancels_per_event, second_effects
from webhooks import create_app
from worker.dev.sandbox import Sandbox, create_sandbox_app
from worker.store import keys
from worker.store.connection import store_client

pytestmark = pytest.mark.reliability

EVENTS = 300
SENDERS = 6
KILL_AFTER_ACKS = 100
KILL_AFTER_EFFECTS = 30
# Shorter than FAST's: a broker message the failover lost is published again from the store
# after REQUEUE_AFTER_SECONDS, which must exceed twice the visibility timeout.
TIMINGS = {**FAST, "broker_visibility_timeout_seconds": 8, "requeue_after_seconds": 20}


@dataclass
class Senders:
    """Threads that post each queued event's message until it is acknowledged (200),
    pausing between posts so that the run spans the failover."""

    url: str
    pause: float = 0.15
    retry_pause: float = 0.2
    work: queue.Queue[str] = field(default_factory=queue.Queue)
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter[str] = field(default_factory=Counter)
    acked_at: dict[str, float] = field(default_factory=dict)
    refused_at: list[float] = field(default_factory=list)

    def send(self, events: list[str]) -> list[threading.Thread]:
        for event in events:
            self.work.put(event)
        threads = [threading.Thread(target=self._run, daemon=True) for _ in range(SENDERS)]
        for thread in threads:
            thread.start()
        return threads

    def _run(self) -> None:
        headers = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'}
        with httpx.Client(timeout=30) as client:
            while True:
                try:
                    event = self.work.get_nowait()
                except queue.Empty:
                    return
                body = outbound_message([(notification_id(), event)])
                while True:  # Salesforce sends the same message again until acknowledged
                    try:
                        status = str(
                            client.post(self.url, content=body, headers=headers).status_code
                        )
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    with self.lock:
                        self.statuses[status] += 1
                        if status == "200":
                            self.acked_at[event] = time.monotonic()
                        else:
                            self.refused_at.append(time.monotonic())
                    if status == "200":
                        break
                    time.sleep(self.retry_pause)
                time.sleep(self.pause)

    def acked(self) -> int:
        with self.lock:
            return len(self.acked_at)


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    state = Sandbox()
    server = serve(create_sandbox_app(state))
    yield SandboxServer(state, server)
    server.shutdown()


def test_a_master_killed_mid_run_loses_no_acknowledged_cancel_and_repeats_none(
    cluster: SentinelCluster,
    sandbox: SandboxServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    report: Callable[[str], None],
) -> None:
    for name in REDIS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = cluster.settings_env()
    settings = make_settings(
        None,
        sandbox.url,
        **TIMINGS,
        redis_sentinels=env["REDIS_SENTINELS"],
        redis_sentinel_master=env["REDIS_SENTINEL_MASTER"],
    )
    sandbox.set_faults(delay_seconds=0.05)  # calls in flight when the master dies
    worker = start_worker(
        settings,
        tmp_path / "worker.log",
        concurrency=16,
        extra_env={name.upper(): str(value) for name, value in TIMINGS.items()},
    )
    web = serve(create_app(settings))
    old = cluster.master_address()
    events = [random_event_id() for _ in range(EVENTS)]
    senders = Senders(f"http://127.0.0.1:{web.port}/salesforce/outbound/cancel?token={TOKEN}")
    try:
        began = time.monotonic()
        threads = senders.send(events)
        # Mid-run: messages still arriving, tasks queued, and calls in flight.
        wait_for(
            lambda: (
                senders.acked() >= KILL_AFTER_ACKS
                and len(sandbox.calls(action="cancel")) >= KILL_AFTER_EFFECTS
            ),
            timeout=60,
        )
        acked_before = senders.acked()
        effects_before = len(sandbox.calls(action="cancel"))
        master = cluster.client(old)
        waits = int(master.info("commandstats")["cmdstat_wait"]["calls"])
        master.close()
        killed_at = cluster.kill_master()
        failover = cluster.wait_for_failover(old)
        cluster.start_again(old)  # back after its crash, to be made a replica
        restarted_at = time.monotonic()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "senders never got their Ack"
        wait_for(
            lambda: all(sandbox.state.meetings.get(event) == "CANCELLED" for event in events),
            timeout=120,
        )
        done = time.monotonic() - killed_at
        store = store_client(settings)
        wait_for(lambda: store.zcard(keys.PENDING) == 0, timeout=60)  # nothing left to do
        cluster.wait_until_demoted(old)
        demoted = time.monotonic() - restarted_at
        store.close()
    finally:
        web.shutdown()
        stop_process(worker)

    cancels = cancels_per_event(sandbox, events, "cancel")
    after_kill = [at for at in senders.acked_at.values() if at > killed_at]
    outage = (min(after_kill) - killed_at) if after_kill else float("nan")
    refused = [at for at in senders.refused_at if at > killed_at]
    report(
        f"Sentinel failover under load: {EVENTS} cancels, master SIGKILLed after "
        f"{acked_before} Acks and {effects_before} effects; sentinels promoted the replica "
        f"in {failover:.1f} s, senders got no Ack for {outage:.1f} s "
        f"({len(refused)} posts refused: {dict(senders.statuses)}); all done {done:.1f} s "
        f"after the kill ({time.monotonic() - began:.0f} s in all); "
        f"{sum(cancels.values())} cancel calls, {sum(n > 1 for n in cancels.values())} "
        f"duplicated, {second_effects(sandbox, 'cancel')} second effects, "
        f"{len(sandbox.calls(action='get'))} crm-get reconciliations; old master a replica "
        f"again {demoted:.0f} s after its restart"
    )
    # Each Ack and each cancel so far waited for the replica.
    assert waits >= acked_before + effects_before
    assert set(senders.statuses) <= {"200", "503"}  # refused while failing over, never a 500
    assert len(senders.acked_at) == EVENTS  # every message acknowledged in the end
    assert set(cancels.values()) == {1}  # none lost, none twice
    assert second_effects(sandbox, "cancel") == 0
