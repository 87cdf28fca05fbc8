"""The limits toward ChiliPiper hold across worker processes: one rate, one pause."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
from werkzeug.serving import make_server

from tests.conftest import TOKEN, SandboxServer, random_event_id
from tests.reliability.conftest import Stack, cancels_per_event
from worker.store import keys

Report = Callable[[str], None]


def post_gets(stack: Stack, count: int) -> None:
    """`count` crm-get operations through the JSON route, 100 per request."""
    with httpx.Client(timeout=30) as client:
        for start in range(0, count, 100):
            events = [
                {"action": "get", "crmEventId": random_event_id()}
                for _ in range(min(100, count - start))
            ]
            response = client.post(
                f"{stack.url}/v1/events",
                json={"events": events},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.status_code == 202


def test_two_workers_share_one_rate_limit(stack: Stack, report: Report) -> None:
    limit, window = 10.0, 20.0
    post_gets(stack, 400)  # more than the window can take: the queue never runs dry
    for _ in range(2):
        stack.start_worker(concurrency=8, chilipiper_rate_limit=f"{limit:g}/s")
    first = stack.wait_until(lambda: stack.sandbox.calls(action="get"), timeout=60)[0]["at"]
    start = first + 1.0  # past the start-up burst of one interval
    time.sleep(max(0.0, start + window - time.time()) + 0.5)
    calls = [c["at"] for c in stack.sandbox.calls(action="get")]
    achieved = sum(1 for at in calls if start <= at < start + window) / window
    report(
        f"rate limit {limit:g}/s, 2 worker processes x 8 threads: {achieved:.2f} calls/s "
        f"over {window:g} s ({(achieved / limit - 1) * 100:+.1f} %)"
    )
    assert abs(achieved - limit) <= 0.1 * limit


def test_one_429_pauses_every_worker(stack: Stack, report: Report) -> None:
    post_gets(stack, 300)
    for _ in range(2):
        stack.start_worker(concurrency=8, chilipiper_rate_limit="20/s")
    stack.wait_until(lambda: len(stack.sandbox.calls(action="get")) >= 20, timeout=60)
    stack.sandbox.set_faults(fail_next=1, status=429, retry_after=3)
    stack.wait_until(lambda: stack.sandbox.state.fault_times, timeout=30)
    paused_at = stack.sandbox.state.fault_times[0]
    time.sleep(4.5)
    after = [c["at"] - paused_at for c in stack.sandbox.calls(action="get") if c["at"] > paused_at]
    # Requests that had passed the gate before the 429 came back still land, within the
    # time one request takes; after that, nothing until Retry-After has passed.
    in_flight = [t for t in after if t < 0.5]
    during = [t for t in after if 0.5 <= t < 2.9]
    resumed = min((t for t in after if t >= 2.9), default=float("inf"))
    report(
        f"one 429 with Retry-After 3 s: {len(in_flight)} call(s) already in flight, "
        f"{len(during)} during the pause, calls resumed {resumed:.2f} s after"
    )
    assert during == []
    assert len(in_flight) <= 4
    assert resumed < 4.5


# --- limits that adapt to ChiliPiper (no CHILIPIPER_RATE_LIMIT: the default) ----------------

NO_CEILING = {"chilipiper_rate_limit": ""}


def cancels(sandbox: SandboxServer) -> tuple[list[float], int]:
    """Times of the cancels that took effect, and how many cancel calls were refused (429)."""
    calls = sandbox.calls(action="cancel")
    done = sorted(c["at"] for c in calls if c["ok"])
    return done, sum(1 for c in calls if c["status"] == 429)


def dead_letters(stack: Stack) -> int:
    client = stack.redis()
    try:
        return int(client.zcard(keys.DEAD_LETTERS))
    finally:
        client.close()


def rate_between(times: list[float], low: float, high: float) -> float:
    """Calls per second between the `low` and `high` fractions of `times` (sorted)."""
    first, last = int(len(times) * low), int(len(times) * high) - 1
    return (last - first) / (times[last] - times[first])


def test_the_rate_converges_to_a_server_side_limit(stack: Stack, report: Report) -> None:
    """ChiliPiper refusing calls above 20/s with 429 (and Retry-After: 1): the rate settles
    near the limit without spending many calls on refusals."""
    stack.sandbox.configure(rate_limit=20)
    events = [random_event_id() for _ in range(600)]
    stack.post_outbound("cancel", events)
    stack.start_worker(concurrency=16, **NO_CEILING)
    stack.wait_until(lambda: len(cancels(stack.sandbox)[0]) == 600, timeout=120)
    done, refused = cancels(stack.sandbox)
    converged = rate_between(done, 0.25, 1.0)
    share = refused / (len(done) + refused)
    report(
        f"server limit 20/s, 600 cancels, no configuration: {converged:.1f} calls/s once "
        f"converged ({converged / 20:.0%} of the limit), {refused} of {len(done) + refused} "
        f"calls refused ({share:.1%})"
    )
    start = done[0]
    per_second = [0] * (int(done[-1] - start) + 1)
    for at in done:
        per_second[int(at - start)] += 1
    refusals = sorted(
        round(c["at"] - start, 1) for c in stack.sandbox.calls() if c["status"] == 429
    )
    timeline = f"cancels per second {per_second}; 429s at {refusals}"
    assert converged >= 0.7 * 20, timeline
    assert share <= 0.15, timeline


def test_with_no_server_limit_the_rate_fills_the_calls_in_flight(
    stack: Stack, report: Report
) -> None:
    """At 100 ms per call and 8 calls in flight, ChiliPiper could take 80 calls/s: the
    limiter must ramp past that in seconds and then stay out of the way.

    What the worker then achieves is a figure, printed: it is bound by this machine's CPU
    (69-73/s on a quiet 2-core machine, 54-68/s on a slower day), so only a gross shortfall
    fails the test; that the limiter is not the bound is asserted exactly."""
    in_flight, latency = 8, 0.1
    stack.sandbox.set_faults(delay_seconds=latency)
    events = [random_event_id() for _ in range(1200)]
    stack.post_outbound("cancel", events)
    stack.start_worker(concurrency=in_flight, **NO_CEILING)
    stack.wait_until(lambda: len(cancels(stack.sandbox)[0]) == 1200, timeout=180)
    done, _ = cancels(stack.sandbox)
    ceiling = in_flight / latency
    ramped = rate_between(done, 0.1, 1.0)
    whole = (len(done) - 1) / (done[-1] - done[0])
    client = stack.redis()
    allowed = float(client.hget(keys.GATE_LIMITER, "rate") or 0)
    client.close()
    report(
        f"no server limit, {latency * 1000:.0f} ms per call, {in_flight} in flight "
        f"(ceiling {ceiling:.0f}/s), 1200 cancels: {ramped:.1f}/s once ramped "
        f"({ramped / ceiling:.0%}), {whole:.1f}/s over the whole run ({whole / ceiling:.0%}); "
        f"the limiter allowed {allowed:.0f}/s at the end"
    )
    assert allowed >= ceiling  # the limiter ramped past what ChiliPiper could take
    assert ramped >= 0.5 * ceiling
    assert whole >= 0.4 * ceiling


def test_random_503s_and_429s_are_noise_not_a_reason_to_crawl(stack: Stack, report: Report) -> None:
    stack.sandbox.set_faults(rates={"503": 0.3, "429": 0.1})
    events = [random_event_id() for _ in range(200)]
    started = time.time()
    stack.post_outbound("cancel", events)
    worker = stack.start_worker(concurrency=16, **NO_CEILING)
    stack.wait_until(lambda: len(cancels(stack.sandbox)[0]) == 200, timeout=90)
    took = time.time() - started
    served = dict(stack.sandbox.state.faults_served)
    log = (stack.log_dir / "worker-0.log").read_text()
    report(
        f"30 % 503 and 10 % 429 at random, 200 cancels: all done in {took:.0f} s; "
        f"{served.get(503, 0)} 503s and {served.get(429, 0)} 429s served; circuit opened "
        f"{log.count('circuit open')} times"
    )
    assert worker.poll() is None
    assert "circuit open" not in log
    assert dead_letters(stack) == 0


def test_a_dead_chilipiper_opens_the_circuit_and_calls_resume_when_it_is_back(
    stack: Stack, report: Report
) -> None:
    """ChiliPiper refusing connections: the circuit opens within seconds, nothing is
    dead-lettered while it is open, and the work completes by itself once it is back."""
    port = stack.sandbox.server.port
    app = stack.sandbox.server.app
    events = [random_event_id() for _ in range(400)]
    stack.sandbox.set_faults(delay_seconds=0.05)
    stack.post_outbound("cancel", events)
    stack.start_worker(concurrency=16, circuit_cooldown_seconds="3", **NO_CEILING)
    stack.wait_until(lambda: len(cancels(stack.sandbox)[0]) >= 50, timeout=60)
    stack.sandbox.server.shutdown()
    stack.sandbox.server.server_close()  # connections are refused from now on
    down = time.time()
    client = stack.redis()
    stack.wait_until(lambda: client.hget(keys.GATE_BREAKER, "state") == "open", timeout=30)
    client.close()
    opened = time.time() - down
    time.sleep(5)  # open, a failed trial, open again
    dead_while_down = dead_letters(stack)
    back = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=back.serve_forever, daemon=True).start()
    restored = time.time()
    try:
        stack.wait_until(lambda: len(cancels(stack.sandbox)[0]) == 400, timeout=90)
    finally:
        back.shutdown()
    resumed = time.time() - restored
    report(
        f"ChiliPiper refusing connections: circuit open {opened:.1f} s after, "
        f"{dead_while_down} dead letters while down, all 400 cancels done {resumed:.1f} s "
        "after it came back"
    )
    assert opened < 10
    assert dead_while_down == 0
    assert dead_letters(stack) == 0
    assert max(cancels_per_event(stack.sandbox, events, "cancel").values()) == 1
