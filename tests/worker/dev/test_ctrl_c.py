"""Ctrl-C on `crmhook dev` stops everything it started, every time, and frees its ports.

A terminal sends SIGINT to its whole foreground process group. Children sharing the runner's
group got it too, and then the runner's SIGTERM on top: a gunicorn worker could stay behind,
orphaned and holding the web port, so the next `crmhook dev` could not start. Here the real
command runs in a session of its own, as a shell runs a foreground job, and is interrupted the
way a terminal does it, several times in a row on the same ports.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for
from tests.test_processes import clean_environment, dev_arguments
from worker.dev.redis_server import free_port

pytestmark = pytest.mark.slow

# The runner's tree once up: redis-server, sandbox, Celery worker, gunicorn master and the
# WEB_CONCURRENCY=2 workers the runner asks for.
DESCENDANTS = 6
DOUBLE_PRESS_GAP = 0.2  # seconds between two presses: a quick double Ctrl-C


@dataclass(frozen=True)
class Proc:
    """A process as it was: its pid and start time, so a reused pid is not mistaken for it."""

    pid: int
    started: int
    command: str

    def alive(self) -> bool:
        """Whether this very process still runs (a zombie has exited: it holds no port)."""
        fields = _stat(self.pid)
        return fields is not None and fields[19] == str(self.started) and fields[0] != "Z"


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command's closing parenthesis: state is [0], pgid [2],
    session [3], start time [19]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def descendants(pid: int) -> list[Proc]:
    """Every process below `pid`, by walking /proc/<pid>/task/*/children."""
    found: list[Proc] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
            for child in children:
                fields = _stat(child)
                if fields is not None:
                    found.append(Proc(child, int(fields[19]), _command(child)))
                    stack.append(child)
    return found


def in_group(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[2] == str(pgid) and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def bindable(port: int) -> bool:
    """Whether a server could listen on `port` now (SO_REUSEADDR, as servers set it, so a
    closed connection's TIME_WAIT does not count, only a listener left behind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).is_success
    except httpx.HTTPError:
        return False


@dataclass
class Dev:
    """One `crmhook dev`, started as a terminal's foreground job: a session and process group
    of its own (pgid = its pid), its output in a file."""

    process: subprocess.Popen[bytes]
    log: Path
    tree: list[Proc]

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_dev(port: int, sandbox_port: int, directory: Path, cycle: int) -> Dev:
    log = directory / f"dev-{cycle}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", *dev_arguments(port, sandbox_port, 2)],
            env=clean_environment(),
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = Dev(process, log, [])
    wait_for(lambda: ready(port) or process.poll() is not None, timeout=60)
    assert process.poll() is None, dev.output
    # Up and settled: the banner printed, Celery consuming, both gunicorn workers forked.
    wait_for(lambda: "crmhook is up" in dev.output and " ready." in dev.output, timeout=60)
    dev.tree = wait_for(
        lambda: tree if len(tree := descendants(process.pid)) >= DESCENDANTS else None,
        timeout=30,
    )
    return dev


def press(dev: Dev, how: str) -> None:
    pgid = dev.process.pid  # the job's own group: its session started with it
    if how == "sigterm":  # a process manager stopping the runner alone
        dev.process.send_signal(signal.SIGTERM)
        return
    if how == "hangup":  # the terminal closed: its foreground group gets SIGHUP
        os.killpg(pgid, signal.SIGHUP)
        return
    os.killpg(pgid, signal.SIGINT)
    if how == "ctrl-c twice":
        time.sleep(DOUBLE_PRESS_GAP)
        if dev.process.poll() is None:
            os.killpg(pgid, signal.SIGINT)


def clean_up(dev: Dev) -> None:
    """Whatever a failed stop left behind, and only that: the group of the session this test
    started (its id stays reserved while it has members), then what was below it, by pid."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(dev.process.pid, signal.SIGKILL)
    dev.process.wait()
    for proc in dev.tree:
        if proc.alive():
            os.kill(proc.pid, signal.SIGKILL)


def cycle(port: int, sandbox_port: int, directory: Path, number: int, how: str) -> None:
    """Start `crmhook dev`, stop it `how`, and check that nothing of it is left."""
    assert bindable(port), f"port {port} is taken before cycle {number}"
    assert bindable(sandbox_port), f"port {sandbox_port} is taken before cycle {number}"
    dev = start_dev(port, sandbox_port, directory, number)
    try:
        redis = re.search(r"embedded redis-server on redis://127\.0\.0\.1:(\d+)/", dev.output)
        assert redis is not None, dev.output
        redis_port = int(redis[1])
        started = time.monotonic()
        press(dev, how)
        try:
            status = dev.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"cycle {number} ({how}): still running 30 s later\n{dev.output}")
        took = time.monotonic() - started
        left = [proc for proc in dev.tree if proc.alive()]
        context = f"cycle {number} ({how}), stopped in {took:.1f} s\n{dev.output}"
        assert left == [], context
        assert in_group(dev.process.pid) == [], context
        for name, free in (("web", port), ("sandbox", sandbox_port), ("redis", redis_port)):
            assert bindable(free), f"{name} port {free} still taken: {context}"
        assert status == 0, context
        # Signalled once: gunicorn's master logs each signal it handles; a second (the
        # terminal's SIGINT, then the runner's SIGTERM) is what left a worker behind.
        # A second Ctrl-C may kill it before it logs the first.
        handled = re.findall(r"Handling signal: (\w+)", dev.output)
        assert handled == ["term"] or (how == "ctrl-c twice" and handled == []), context
        assert "Cold shutdown" not in dev.output, context  # Celery's answer to a 2nd signal
        print(f"cycle {number} ({how}): exit 0 in {took:.1f} s, {len(dev.tree)} processes gone")
    finally:
        clean_up(dev)


def test_ctrl_c_stops_everything_many_times_in_a_row(tmp_path: Path) -> None:
    port, sandbox_port = free_port(), free_port()
    for number, how in enumerate(
        ["ctrl-c", "ctrl-c twice", "ctrl-c", "ctrl-c twice", "ctrl-c"], start=1
    ):
        cycle(port, sandbox_port, tmp_path, number, how)


@pytest.mark.parametrize("how", ["sigterm", "hangup"])
def test_sigterm_or_a_hangup_stops_everything_too(tmp_path: Path, how: str) -> None:
    cycle(free_port(), free_port(), tmp_path, 1, how)
