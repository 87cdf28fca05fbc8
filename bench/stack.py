"""The system under measurement, started on loopback from the Procfile's own lines: a private
Redis, the sandbox ChiliPiper with a set latency, the `web` and any number of `worker`s.

Every process is the benchmark's child, stopped by its pid; its output goes to a log file in
the run's directory, so a failed phase can say where to look.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from bench.messages import ORG_ID
from worker.dev.procfile import Procfile, child_environment
from worker.dev.redis_server import RedisServer, free_port

T = TypeVar("T")

WEB_APP = "'webhooks.serving:create_app()'"
BENCH_APP = "'bench.serving:create_app()'"
WORKER_APP = "--app worker"
# The Procfile's worker pool flags; without them Celery runs its default, prefork with one
# process per CPU: the baseline a team gets from the Celery tutorial.
POOL_FLAGS = re.compile(r"\s--pool\s+\S+|\s--concurrency\s+\S+")


class BenchError(Exception):
    """A phase could not run (a process did not start, work did not finish): its message says
    which, and where the process logs are."""


def wait_until(
    what: str, predicate: Callable[[], T | None], timeout: float, interval: float = 0.05
) -> T:
    """Poll `predicate` until it returns something truthy; BenchError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


@dataclass
class Child:
    """One started process and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Celery's warm shutdown, gunicorn's graceful one), then SIGKILL."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def pids(self) -> list[int]:
        """This process and its children (gunicorn's and prefork's workers)."""
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        return [pid, *map(int, children)]

    def peak_rss(self) -> int:
        """The largest peak resident set (VmHWM, bytes) of this process or any child: for a
        pool of workers, what one of them needed at most."""
        return max((_vm_hwm(pid) for pid in self.pids()), default=0)

    def cpu_seconds(self) -> float:
        """CPU time used so far by this process and its children (user and system)."""
        return sum(cpu_seconds(pid) for pid in self.pids())

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), from /proc; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command's closing parenthesis, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _vm_hwm(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match[1]) * 1024 if match else 0


@dataclass
class Stack:
    """`with Stack.start(latency) as stack:` Redis and the sandbox; then `start_web()`,
    `start_worker()` as phases need them."""

    directory: Path
    redis_server: RedisServer
    sandbox: Child
    sandbox_url: str
    procfile: Procfile
    token: str = field(default_factory=lambda: "bench-" + secrets.token_urlsafe(18))
    web: Child | None = None
    web_port: int = 0
    workers: list[Child] = field(default_factory=list)
    _started: int = 0

    @classmethod
    def start(cls, directory: Path | None = None) -> Stack:
        directory = directory or Path(tempfile.mkdtemp(prefix="crmhook-bench-"))
        (directory / "redis").mkdir(parents=True, exist_ok=True)
        server = RedisServer(directory=directory / "redis").start()
        port = free_port()
        command = [sys.executable, "-m", "worker.cli", "sandbox", "--port", str(port)]
        sandbox = _spawn("sandbox", command, child_environment(), directory)
        stack = cls(directory, server, sandbox, f"http://127.0.0.1:{port}", Procfile.load())
        try:
            wait_until("the sandbox answers", lambda: stack._get("/sandbox/config"), 30)
        except BenchError:
            stack.close()
            raise
        return stack

    # --- the processes ----------------------------------------------------------------------

    def environment(self, redis_url: str | None = None, **extra: str) -> dict[str, str]:
        env = child_environment()
        env.update(
            REDIS_URL=redis_url or self.redis_server.url,
            WEBHOOK_TOKENS=self.token,
            SALESFORCE_ORG_IDS=ORG_ID,
            CHILIPIPER_TRANSPORT="sandbox",
            CHILIPIPER_SANDBOX_URL=f"{self.sandbox_url}/mcp",
            WEB_HOST="127.0.0.1",
            PYTHONUNBUFFERED="1",
        )
        env.pop("CELERY_BROKER_URL", None)
        env.update(extra)
        return env

    def start_web(self, redis_url: str | None = None) -> Child:
        """The Procfile's `web` line (its gunicorn, worker class and count), serving the same
        app with the reference views of `bench.serving` beside it."""
        if self.web is not None:
            self.web.stop()
        line = self.procfile.line("web")
        if WEB_APP not in line:
            raise BenchError(f"the Procfile's web line no longer serves {WEB_APP}: {line}")
        self.web_port = free_port()
        env = self.environment(redis_url, PORT=str(self.web_port))
        self.web = self._start("web", ["sh", "-c", "exec " + line.replace(WEB_APP, BENCH_APP)], env)
        wait_until("web answers /readyz", self._web_ready, 60)
        return self.web

    def start_worker(
        self,
        concurrency: int | None = None,
        *,
        prefork: bool = False,
        redis_url: str | None = None,
        app: str | None = None,
    ) -> Child:
        """The Procfile's `worker` line; `prefork` drops its pool flags (Celery's defaults);
        `app` replaces our Celery app (the no-op reference) on the same line."""
        line = self.procfile.line("worker")
        if prefork:
            line = POOL_FLAGS.sub("", line)
        if app is not None:
            if WORKER_APP not in line:
                raise BenchError(f"the Procfile's worker line no longer runs {WORKER_APP}: {line}")
            line = line.replace(WORKER_APP, f"--app {app}")
        env = self.environment(redis_url)
        if concurrency is not None:
            env["WORKER_CONCURRENCY"] = str(concurrency)
        child = self._start("worker", ["sh", "-c", "exec " + line], env)
        self.workers.append(child)
        wait_until(f"worker ready (log {child.log})", lambda: self._worker_ready(child), 60)
        return child

    def worker_concurrency(self) -> int:
        """The Procfile's default pool size (`${WORKER_CONCURRENCY:-32}`)."""
        match = re.search(r"\$\{WORKER_CONCURRENCY:-(\d+)\}", self.procfile.line("worker"))
        if match is None:
            raise BenchError("the Procfile's worker line has no default WORKER_CONCURRENCY")
        return int(match[1])

    def stop_workers(self) -> None:
        for child in self.workers:
            child.stop()
        self.workers.clear()

    def close(self) -> None:
        self.stop_workers()
        if self.web is not None:
            self.web.stop()
        self.sandbox.stop()
        self.redis_server.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Redis and the sandbox --------------------------------------------------------------

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each part: web, workers, Redis, the sandbox."""
        redis_pid = self.redis_server.process.pid if self.redis_server.process else 0
        return {
            "web": self.web.cpu_seconds() if self.web else 0.0,
            "worker": sum(child.cpu_seconds() for child in self.workers),
            "redis": cpu_seconds(redis_pid),
            "sandbox": self.sandbox.cpu_seconds(),
        }

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url)

    def flush(self) -> None:
        """Empty our own Redis between phases (never another: it is the one we started)."""
        with self.client() as client:
            client.flushall()

    def reset_sandbox(self, latency: float) -> None:
        """No meetings, no calls; every MCP request answered after `latency` seconds."""
        httpx.post(f"{self.sandbox_url}/sandbox/reset", timeout=10).raise_for_status()
        faults = {"delay_seconds": latency}
        httpx.post(f"{self.sandbox_url}/sandbox/faults", json=faults, timeout=10).raise_for_status()

    def call_count(self) -> int:
        return int(self._get("/sandbox/stats")["calls"])

    def most_in_flight(self) -> int:
        return int(self._get("/sandbox/stats")["most_in_flight"])

    def calls(self) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = self._get("/sandbox/calls")
        return calls

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    # --- helpers ----------------------------------------------------------------------------

    def _start(self, name: str, command: list[str], env: Mapping[str, str]) -> Child:
        self._started += 1
        return _spawn(f"{name}-{self._started}", command, env, self.directory)

    def _get(self, path: str) -> Any:
        try:
            response = httpx.get(f"{self.sandbox_url}{path}", timeout=10)
        except httpx.HTTPError:
            return None
        return response.json() if response.is_success else None

    def _web_ready(self) -> bool:
        if self.web is None or not self.web.alive():
            log = self.web.log if self.web else "?"
            raise BenchError(f"web exited (log {log}):\n{self.web.tail() if self.web else ''}")
        try:
            return httpx.get(self.url("/readyz"), timeout=1).is_success
        except httpx.HTTPError:
            return False

    @staticmethod
    def _worker_ready(child: Child) -> bool:
        if not child.alive():
            raise BenchError(f"worker exited (log {child.log}):\n{child.tail()}")
        return b"ready." in child.log.read_bytes()


def _spawn(name: str, command: list[str], env: Mapping[str, str], directory: Path) -> Child:
    log = directory / f"{name}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(  # noqa: S603 (our own fixed command lines)
            command, env=dict(env), stdout=handle, stderr=subprocess.STDOUT
        )
    return Child(name, process, log)
