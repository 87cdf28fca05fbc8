"""The measurements, one function per phase: each starts what it needs on the shared `Stack`,
measures, stops it again and answers plain figures (dicts of numbers) for `bench.report`.

Phases leave Redis as they found it (flushed), so the order of phases does not shift figures.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pkgutil
import re
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

import worker
from bench import load, noop
from bench.load import LoadResult, Post
from bench.messages import burst, random_event_id
from bench.redis_proxy import CountingProxy
from bench.stack import BenchError, Stack, cpu_seconds, wait_until
from worker.dev.redis_server import RedisServer
from worker.store.durability import Durability, connected_replicas

SOAP_HEADERS = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'}
PER_MESSAGE = 100  # Salesforce's largest batch: the shape of a mass update
INGEST_VIEWS = {
    "service": "/salesforce/outbound/cancel",
    "parse_only": "/bench/parse-only",
    "naive": "/bench/naive",
}
Figures = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """How much of each phase to run. The defaults are the issue's; `quick()` is the smoke
    test's few seconds, which produce every figure but measure nothing worth comparing."""

    seconds: float = 20.0  # of each closed-loop ingest view, in all
    rounds: int = 4  # interleaved, on fresh connections (see `ingest`)
    connections: int = 8
    open_rate: float = 50.0  # messages a second (5,000 notifications a second)
    open_seconds: float = 20.0
    latency: float = 0.1  # ChiliPiper's, for every MCP request
    cancels: int = 5000
    prefork_cancels: int = 500  # Celery's defaults manage about 20 calls/s: keep it short
    in_flight: int = 64  # calls in flight while the worker's peak RSS is read
    hold: float = 3.0  # how long ChiliPiper holds each of those calls
    round_trip_operations: int = 1000
    # Each of the replica phase's four rounds (two without a replica, two with one): an open
    # loop of these seconds and an end-to-end run of these cancels.
    replica_seconds: float = 4.0
    replica_cancels: int = 500
    replica_writes: int = 500  # timed one at a time, idle, in each of those rounds
    warm_up: float = 2.0

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            seconds=1.0,
            rounds=1,
            open_rate=10.0,
            open_seconds=1.0,
            cancels=100,
            prefork_cancels=20,
            in_flight=8,
            hold=1.0,
            round_trip_operations=50,
            replica_seconds=1.0,
            replica_cancels=50,
            replica_writes=20,
            warm_up=0.0,
        )


def latency_ms(result: LoadResult, quantile: float) -> float:
    return round(result.latency(quantile) * 1000, 1)


def load_figures(result: LoadResult, per_request: int = PER_MESSAGE) -> Figures:
    _require_success(result)
    return {
        "messages_per_s": round(result.rate(), 1),
        "notifications_per_s": round(result.rate() * per_request, 0),
        "p50_ms": latency_ms(result, 0.50),
        "p99_ms": latency_ms(result, 0.99),
        "max_ms": round(max(s.done - s.scheduled for s in result.samples) * 1000, 1),
        "requests": len(result.samples),
        "statuses": {str(k): v for k, v in sorted(result.statuses().items())},
        "client_cpu": round(result.cpu_share(), 2),
    }


def _require_success(result: LoadResult) -> None:
    failed = {status: n for status, n in result.statuses().items() if not 200 <= status < 300}
    if failed:
        raise BenchError(f"{sum(failed.values())} requests failed (status: count {failed})")


def _posts(stack: Stack, path: str, messages: int) -> list[Post]:
    url = f"{path}?token={stack.token}"
    return [
        Post(url, burst([random_event_id() for _ in range(PER_MESSAGE)]), SOAP_HEADERS)
        for _ in range(messages)
    ]


def _closed(stack: Stack, posts: Sequence[Post], plan: Plan, seconds: float) -> LoadResult:
    return load.closed_loop("127.0.0.1", stack.web_port, posts, plan.connections, seconds)


# --- ingest -----------------------------------------------------------------------------------


def ingest(stack: Stack, plan: Plan) -> Figures:
    """Closed loop, worker stopped: the service's view against the parse-only ceiling and the
    naive view, and the service again with `appendfsync everysec` instead of `always`.

    Each view runs `plan.seconds` in all, as `plan.rounds` interleaved rounds on fresh
    connections, pooled: gunicorn's gevent workers share keep-alive connections unevenly
    (the one that accepts first takes more), so one run's figure depends on that draw, and
    slow drifts of a shared machine fall on every view alike."""
    if plan.warm_up:
        _closed(stack, _posts(stack, INGEST_VIEWS["service"], 8), plan, plan.warm_up)
    runs: dict[str, list[LoadResult]] = {}
    seconds = plan.seconds / plan.rounds
    for _ in range(plan.rounds):
        for name, path in INGEST_VIEWS.items():
            stack.flush()
            runs.setdefault(name, []).append(_closed(stack, _posts(stack, path, 64), plan, seconds))
        stack.flush()
        with appendfsync(stack, "everysec"):
            service = _posts(stack, INGEST_VIEWS["service"], 64)
            runs.setdefault("service_everysec", []).append(_closed(stack, service, plan, seconds))
    stack.flush()
    figures: Figures = {name: load_figures(pooled(results)) for name, results in runs.items()}
    figures["ratio_by_round"] = [
        round(service.rate() / ceiling.rate(), 2)
        for service, ceiling in zip(runs["service"], runs["parse_only"], strict=True)
    ]
    return figures


def pooled(results: Sequence[LoadResult]) -> LoadResult:
    """Several runs as one: every sample, their wall and CPU times added."""
    return LoadResult(
        samples=tuple(sample for result in results for sample in result.samples),
        seconds=sum(result.seconds for result in results),
        cpu_seconds=sum(result.cpu_seconds for result in results),
        connections_opened=sum(result.connections_opened for result in results),
    )


@contextmanager
def appendfsync(stack: Stack, policy: str) -> Iterator[None]:
    with stack.client() as client:
        before = client.config_get("appendfsync")["appendfsync"]
        client.config_set("appendfsync", policy)
        try:
            yield
        finally:
            client.config_set("appendfsync", before)


def open_loop(stack: Stack, plan: Plan) -> Figures:
    """A fixed arrival rate with the worker running (and falling behind: 5,000 cancels a
    second is far past ChiliPiper), as wrk2 measures: latency from when each post was due."""
    stack.flush()
    stack.reset_sandbox(plan.latency)
    stack.start_worker()
    try:
        messages = max(1, round(plan.open_rate * plan.open_seconds))
        posts = _posts(stack, INGEST_VIEWS["service"], min(messages, 256))
        result = load.open_loop(
            "127.0.0.1", stack.web_port, posts, plan.open_rate, plan.open_seconds
        )
        figures = load_figures(result)
        figures["rate"] = plan.open_rate
        figures["connections_opened"] = result.connections_opened
        figures["calls_meanwhile"] = stack.call_count()
    finally:
        stack.stop_workers()
    stack.flush()
    return figures


# --- end to end -------------------------------------------------------------------------------


def end_to_end(
    stack: Stack, plan: Plan, cancels: int, *, processes: int = 1, prefork: bool = False
) -> Figures:
    """`cancels` Events posted as fast as the web takes them, then done by the worker(s):
    effects a second from the first post to the last effect, and each Event's wait from the
    Ack of its message to its cancel call."""
    stack.flush()
    stack.reset_sandbox(plan.latency)
    children = [stack.start_worker(prefork=prefork) for _ in range(processes)]
    try:
        events = [random_event_id() for _ in range(cancels)]
        chunks = [events[at : at + PER_MESSAGE] for at in range(0, cancels, PER_MESSAGE)]
        path = f"{INGEST_VIEWS['service']}?token={stack.token}"
        posts = [Post(path, burst(chunk), SOAP_HEADERS) for chunk in chunks]
        wall = time.time() - time.monotonic()  # the sandbox logs wall-clock times
        cpu_before = stack.cpu_seconds()
        posted = load.post_all("127.0.0.1", stack.web_port, posts, plan.connections)
        _require_success(posted)
        wait_until(
            f"{cancels} cancels done (worker logs in {stack.directory})",
            lambda: stack.call_count() >= cancels,
            timeout=60 + cancels / 5,
        )
        cpu = {part: spent - cpu_before[part] for part, spent in stack.cpu_seconds().items()}
        calls = stack.calls()
    finally:
        stack.stop_workers()
    first_call: dict[str, float] = {}
    effects: Counter[str] = Counter()
    for call in calls:
        if call["action"] == "cancel" and call["ok"]:
            effects[call["crmEventId"]] += 1
            first_call.setdefault(call["crmEventId"], call["at"])
    acked = {
        event: posted.samples[index].done + wall
        for index, chunk in enumerate(chunks)
        for event in chunk
    }
    started = min(sample.sent for sample in posted.samples) + wall
    elapsed = max(first_call.values()) - started
    waits = sorted(first_call[event] - acked[event] for event in events if event in first_call)
    # Prefork runs one call at a time in each of its processes, one per CPU.
    per_process = (os.cpu_count() or 1) if prefork else stack.worker_concurrency()
    pool = len(children) * per_process
    stack.flush()
    return {
        "cancels": cancels,
        "processes": processes,
        "pool": "prefork" if prefork else "threads",
        "calls_in_flight": pool,
        "ideal_per_s": round(pool / plan.latency, 1),
        "effects_per_s": round(len(first_call) / elapsed, 1),
        "seconds": round(elapsed, 2),
        "tool_calls": len(calls),
        "effects": len(first_call),
        "effects_twice": sum(1 for n in effects.values() if n > 1),
        "ack_to_call_p50_ms": round(_quantile(waits, 0.50) * 1000, 0),
        "ack_to_call_p99_ms": round(_quantile(waits, 0.99) * 1000, 0),
        # What each part spent per effect: on a 2-core machine the parts share 2,000 ms of
        # CPU a second, which bounds the rate whatever the concurrency.
        "cpu_ms_per_effect": {
            part: round(seconds * 1000 / max(len(first_call), 1), 2)
            for part, seconds in cpu.items()
        },
    }


def celery_ceiling(stack: Stack, plan: Plan) -> Figures:
    """How fast the Procfile's worker line drains tasks that do nothing: what Celery itself
    allows on this machine, whatever the tasks do. The worker is started idle, then given a
    backlog in pipelined batches, and timed until the backlog is gone; the end-to-end ideal
    (calls in flight / latency) asks for more than this when it is higher."""
    stack.flush()
    stack.start_worker(app=noop.APP)
    try:
        cpu_before = stack.cpu_seconds()
        started = time.monotonic()
        noop.publish_at_once(stack.redis_server.url, plan.cancels)
        noop.wait_drained(stack.redis_server.url, timeout=60 + plan.cancels / 20, interval=0.05)
        elapsed = time.monotonic() - started
        cpu = {part: spent - cpu_before[part] for part, spent in stack.cpu_seconds().items()}
    finally:
        stack.stop_workers()
    stack.flush()
    return {
        "tasks": plan.cancels,
        "tasks_per_s": round(plan.cancels / elapsed, 1),
        "cpu_ms_per_task": {
            part: round(cpu[part] * 1000 / plan.cancels, 2) for part in ("worker", "redis")
        },
    }


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


# --- memory -----------------------------------------------------------------------------------


def peak_rss(stack: Stack, plan: Plan) -> Figures:
    """The worker's peak RSS with `plan.in_flight` calls in flight (each held `plan.hold`
    seconds by the sandbox), and the web's after every load before it."""
    stack.flush()
    hold = plan.hold  # long enough that every thread holds a call before the first returns
    stack.reset_sandbox(hold)
    child = stack.start_worker(plan.in_flight)
    try:
        calls = plan.in_flight * 3
        chunks = [calls // 3] * 3
        path = f"{INGEST_VIEWS['service']}?token={stack.token}"
        posts = [
            Post(path, burst([random_event_id() for _ in range(n)]), SOAP_HEADERS) for n in chunks
        ]
        _require_success(load.post_all("127.0.0.1", stack.web_port, posts, 3))
        # Every thread holding a call at once, as the sandbox counts them.
        wait_until(
            f"{plan.in_flight} calls in flight",
            lambda: stack.most_in_flight() >= plan.in_flight,
            60 + 10 * hold,
        )
        worker = child.peak_rss()
    finally:
        stack.stop_workers()
    stack.flush()
    assert stack.web is not None
    return {
        "web_mib": round(stack.web.peak_rss() / 2**20, 1),
        "worker_mib": round(worker / 2**20, 1),
        "in_flight": plan.in_flight,
    }


# --- Redis round trips ------------------------------------------------------------------------


def round_trips(stack: Stack, plan: Plan) -> Figures:
    """Round trips and commands per operation, counted at a proxy between every process and
    Redis, beside the server's own count (`INFO commandstats`, which includes the commands
    inside Lua scripts); then the same for a bare Celery no-op task.

    Both are counted in their steady state, after a fifth as many operations have warmed them
    up: connections opened (each begins with a few commands of its own), scripts loaded, the
    rate limit ramped from its fast start."""
    operations = plan.round_trip_operations
    warm_up = max(1, operations // 5)
    stack.flush()
    stack.reset_sandbox(0.0)
    with CountingProxy("127.0.0.1", stack.redis_server.port) as proxy:
        stack.start_web(redis_url=proxy.url())
        try:
            stack.start_worker(redis_url=proxy.url())
            _run_cancels(stack, warm_up)
            ours = _counted(stack, proxy, lambda: _run_cancels(stack, operations), operations)
        finally:
            stack.stop_workers()
            stack.start_web()
        stack.flush()
        stack.start_worker(redis_url=proxy.url(), app=noop.APP)
        try:
            noop.run(proxy.url(), warm_up, stack.redis_server.url)
            bare = _counted(
                stack,
                proxy,
                lambda: noop.run(proxy.url(), operations, stack.redis_server.url),
                operations,
            )
        finally:
            stack.stop_workers()
    stack.flush()
    return {"operations": operations, "service": ours, "bare_celery": bare}


def _run_cancels(stack: Stack, count: int) -> None:
    events = [random_event_id() for _ in range(count)]
    path = f"{INGEST_VIEWS['service']}?token={stack.token}"
    posts = [
        Post(path, burst(events[at : at + PER_MESSAGE]), SOAP_HEADERS)
        for at in range(0, count, PER_MESSAGE)
    ]
    done = stack.call_count() + count
    _require_success(load.post_all("127.0.0.1", stack.web_port, posts, 2))
    wait_until(f"{count} cancels done", lambda: stack.call_count() >= done, 60 + count / 5)
    noop.wait_drained(stack.redis_server.url)


def _counted(stack: Stack, proxy: CountingProxy, run: Any, operations: int) -> Figures:
    with stack.client() as client:
        time.sleep(1.0)  # past start-up's traffic
        before, server_before = proxy.counts(), _server_commands(client)
        started = time.monotonic()
        run()
        elapsed = time.monotonic() - started
        counts, server = proxy.counts() - before, _server_commands(client) - server_before
    names = script_names()

    def per_operation(counted: Mapping[str, int]) -> dict[str, float]:
        named: Counter[str] = Counter()
        for shape, n in counted.items():
            named[SCRIPT_SHA.sub(lambda m: names.get(m[1], m[1][:8]), shape)] += n
        # What happens once in a hundred operations or more; a fan-out's pipeline of 100
        # ENQUEUEs is 0.01 an operation, and its name is cut short.
        return {
            (shape if len(shape) <= 80 else shape[:77] + "..."): round(n / operations, 2)
            for shape, n in named.most_common()
            if n / operations >= 0.01
        }

    return {
        "round_trips": round(counts.round_trips / operations, 2),
        "commands": round(counts.commands / operations, 2),
        "server_commands": round(server / operations, 2),
        "seconds": round(elapsed, 2),
        "by_round_trip": per_operation(counts.by_round_trip),
        "by_command": per_operation(counts.by_command),
    }


SCRIPT_SHA = re.compile(r"(?<=EVALSHA )([0-9A-F]{40})")


def script_names() -> dict[str, str]:
    """Our Lua scripts by SHA1 (as the proxy reports them, upper-case): `module.CONSTANT`, so
    that a round trip reads `EVALSHA claims.CLAIM` rather than a hash."""
    found = {}
    for info in pkgutil.walk_packages(worker.__path__, "worker."):
        if info.name.startswith(("worker.dev", "worker.cli")) or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, str) and "redis.call(" in value:
                sha = hashlib.sha1(value.encode(), usedforsecurity=False).hexdigest().upper()
                found[sha] = f"{info.name.rpartition('.')[2]}.{name}"
    return found


def _server_commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values())


# --- the cost of waiting for a replica --------------------------------------------------------


@dataclass(frozen=True)
class _Round:
    """Durable writes timed one at a time, an open loop and an end-to-end run, each with the
    WAITs Redis ran for it."""

    writes: list[float]
    write_waits: int
    ack: LoadResult
    ack_waits: int
    end_to_end: Figures


def replica(stack: Stack, plan: Plan) -> Figures:
    """What durability on a replica costs (`worker.store.durability`): with an online replica
    the edge's record of each message and the worker's send marker before each call wait for
    its confirmation (`WAIT`, queued in the write's own pipeline). The edge's Ack latency
    at a fixed rate, worker stopped (with it running, the two cores' contention moves p99 by
    more than a replica could), and one worker's end-to-end rate; without a replica (the
    reference), with one attached to the stack's Redis, with it again and without it again:
    a drift over the phase falls on both sides alike, each side's two rounds pooled.

    Web and workers are started afresh after the replica comes and after it goes: each reads
    the replica count at most every second, and a stale count would measure the wrong side.
    WAITs are counted by Redis itself (`INFO commandstats`), not at the proxy, which would
    add latency of its own."""
    without: list[_Round] = []
    replicated: list[_Round] = []
    stack.start_web()
    without.append(_durability_round(stack, plan))
    started = time.monotonic()
    try:
        with attached_replica(stack.redis_server) as server:
            attach_seconds = time.monotonic() - started
            stack.start_web()
            for _ in range(2):
                replica_cpu = _cpu(server)
                measured = _durability_round(stack, plan)
                effects = max(measured.end_to_end["effects"], 1)
                measured.end_to_end["cpu_ms_per_effect"]["replica"] = round(
                    (_cpu(server) - replica_cpu) * 1000 / effects, 2
                )
                replicated.append(measured)
    finally:
        stack.start_web()  # its cached replica count would otherwise still say 1
    without.append(_durability_round(stack, plan))
    figures: Figures = {
        "without": _pooled_rounds(without, plan.open_rate),
        "with_replica": _pooled_rounds(replicated, plan.open_rate),
        "attach_seconds": round(attach_seconds, 2),
    }
    for run in ("durable_write", "ack", "end_to_end"):
        waits = {side: figures[side][run]["waits"] for side in ("without", "with_replica")}
        if not waits["with_replica"] or waits["without"]:
            raise BenchError(
                f"{run}: WAITs run {waits}: the processes did not see the replica as expected"
            )
    return figures


def _durability_round(stack: Stack, plan: Plan) -> _Round:
    stack.flush()
    writes, write_waits = _durable_writes(stack, plan.replica_writes)
    warm = _posts(stack, INGEST_VIEWS["service"], 16)
    _require_success(load.post_all("127.0.0.1", stack.web_port, warm, 2))
    stack.flush()
    with stack.client() as client:
        waits = _wait_calls(client)
        messages = max(1, round(plan.open_rate * plan.replica_seconds))
        posts = _posts(stack, INGEST_VIEWS["service"], min(messages, 256))
        ack = load.open_loop(
            "127.0.0.1", stack.web_port, posts, plan.open_rate, plan.replica_seconds
        )
        ack_waits = _wait_calls(client) - waits
        stack.flush()
        waits = _wait_calls(client)
        e2e = end_to_end(stack, plan, plan.replica_cancels)
        e2e["waits"] = _wait_calls(client) - waits
    return _Round(writes, write_waits, ack, ack_waits, e2e)


def _durable_writes(stack: Stack, count: int) -> tuple[list[float], int]:
    """Seconds each of `count` writes took, made durable as the store makes its own
    (`Durability.execute`: with WAIT in the write's pipeline when a replica is online), one
    after another from here on an otherwise idle Redis: the cost itself, without load. And
    the WAITs Redis ran for them."""
    spent = []
    with stack.client() as client:
        waits = _wait_calls(client)
        durability = Durability(client)
        durability.replicas()  # read now, not inside the first timing
        for number in range(count):
            pipe = client.pipeline(transaction=False)
            pipe.set("bench:durable-write", number)
            started = time.perf_counter()
            durability.execute(pipe)
            spent.append(time.perf_counter() - started)
        client.delete("bench:durable-write")
        return spent, _wait_calls(client) - waits


def _pooled_rounds(rounds: Sequence[_Round], rate: float) -> Figures:
    """One side's rounds as one: latency quantiles over every sample, effects over the
    seconds of every run, CPU and WAITs per effect over every effect."""
    ack = pooled([r.ack for r in rounds])
    ack_figures = load_figures(ack)
    waits = sum(r.ack_waits for r in rounds)
    runs = [r.end_to_end for r in rounds]
    effects = sum(run["effects"] for run in runs)
    seconds = sum(run["seconds"] for run in runs)
    parts = runs[0]["cpu_ms_per_effect"]
    e2e_waits = sum(run["waits"] for run in runs)
    writes = sorted(spent for r in rounds for spent in r.writes)
    return {
        "durable_write": {
            "writes": len(writes),
            "p50_ms": round(_quantile(writes, 0.50) * 1000, 3),
            "p99_ms": round(_quantile(writes, 0.99) * 1000, 3),
            "waits": sum(r.write_waits for r in rounds),
        },
        "ack": ack_figures
        | {
            "rate": rate,
            "waits": waits,
            "waits_per_message": round(waits / len(ack.samples), 2),
            "p99_ms_by_round": [latency_ms(r.ack, 0.99) for r in rounds],
        },
        "end_to_end": {
            "cancels": sum(run["cancels"] for run in runs),
            "runs": len(runs),
            "effects": effects,
            "effects_twice": sum(run["effects_twice"] for run in runs),
            "seconds": round(seconds, 2),
            "effects_per_s": round(effects / seconds, 1),
            "effects_per_s_by_run": [run["effects_per_s"] for run in runs],
            "ack_to_call_p50_ms_by_run": [run["ack_to_call_p50_ms"] for run in runs],
            "cpu_ms_per_effect": {
                part: round(
                    sum(run["cpu_ms_per_effect"][part] * run["effects"] for run in runs) / effects,
                    2,
                )
                for part in parts
            },
            "waits": e2e_waits,
            "waits_per_effect": round(e2e_waits / max(effects, 1), 3),
        },
    }


@contextmanager
def attached_replica(master: RedisServer) -> Iterator[RedisServer]:
    """A replica of `master` (configured as `master` is: AOF, `appendfsync always`), yielded
    once the master counts it online and its first copy is on its disk; then stopped, removed,
    and the master left without replicas and with its configuration as found."""
    with redis.Redis.from_url(master.url) as client:
        if connected_replicas(client):
            raise BenchError("the bench's Redis already has a replica")
        # Stream the first copy at once instead of waiting 5 s for more replicas to join.
        delay = client.config_get("repl-diskless-sync-delay")["repl-diskless-sync-delay"]
        client.config_set("repl-diskless-sync-delay", 0)
        server = RedisServer(extra_args=("--replicaof", "127.0.0.1", str(master.port)))
        try:
            server.start()
            wait_until("the replica in sync", lambda: _in_sync(client, server), 60)
            yield server
        finally:
            server.close()
            client.config_set("repl-diskless-sync-delay", delay)
            wait_until("the replica gone", lambda: not connected_replicas(client), 30)


def _in_sync(master: redis.Redis, server: RedisServer) -> bool:
    """Online as the service counts replicas, and neither Redis still forking for the first
    copy: the replica's AOF rewrite after it, the master's transfer of it."""
    with redis.Redis.from_url(server.url) as client:
        link = client.info("replication").get("master_link_status")
        persistence = client.info("persistence")
    busy = (
        persistence.get("loading")
        or persistence.get("aof_rewrite_in_progress")
        or persistence.get("aof_rewrite_scheduled")
        or master.info("persistence").get("rdb_bgsave_in_progress")
    )
    return link == "up" and not busy and connected_replicas(master) == 1


def _wait_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def _cpu(server: RedisServer) -> float:
    return cpu_seconds(server.process.pid) if server.process is not None else 0.0
