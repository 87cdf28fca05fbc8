"""A private RabbitMQ node for the tests: its own node name, ports, epmd, cookie and data
directory, so it never meets the machine's RabbitMQ (5672/25672, epmd 4369).

RabbitMQ cannot come from pip: the tests that need it look for Debian's `rabbitmq-server`
(`rabbitmq_installed()`) and skip, saying why, where it is missing. Debian's
/usr/sbin/rabbitmq-server is a wrapper that switches to the `rabbitmq` user and the
system's directories; the node here runs the real script behind it, as whoever runs the
tests, with everything it writes (Mnesia, quorum queue logs, Erlang cookie) in a temporary
directory that is removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import amqp  # type: ignore[import-untyped]  # py-amqp, kombu's AMQP client

from worker.dev.redis_server import free_port, terminate

SEARCH_PATH = f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin{os.pathsep}/usr/lib/rabbitmq/bin"
# Debian's entry point in /usr/sbin: it re-runs the real script as the `rabbitmq` user.
DEBIAN_WRAPPER = "rabbitmq-script-wrapper"
NOT_INSTALLED = (
    "rabbitmq-server is not installed: install Debian's rabbitmq-server to run this test; "
    "see README 'Scaling and high availability'"
)
START_TIMEOUT_SECONDS = 60.0


def rabbitmq_script(name: str) -> Path | None:
    """The real `rabbitmq-server` / `rabbitmqctl` script, behind Debian's wrapper if that is
    what PATH finds; None when RabbitMQ is not installed."""
    found = shutil.which(name, path=SEARCH_PATH)
    if found is None:
        return None
    real = Path(found).resolve()
    if real.name == DEBIAN_WRAPPER:
        real = (real.parent / name).resolve()
    return real if real.is_file() else None


def epmd_binary() -> str | None:
    found = shutil.which("epmd")
    if found:
        return found
    erts = sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))
    return str(erts[-1]) if erts else None


def rabbitmq_installed() -> bool:
    return all((rabbitmq_script("rabbitmq-server"), rabbitmq_script("rabbitmqctl"), epmd_binary()))


@dataclass(frozen=True)
class QueueInfo:
    name: str
    type: str  # "quorum", "classic", "stream"
    messages: int


class RabbitNode:
    """`with RabbitNode() as node: node.url` — a started node, then stopped and removed.

    Its epmd is a child of ours on a free port (ERL_EPMD_PORT), in the foreground, so it is
    stopped by its pid; the node runs in a session of its own, whose whole process group
    (the start script and the beam.smp it spawns) is signalled on stop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.nodename = f"crmhook-{self.port}@localhost"
        self.directory = Path(tempfile.mkdtemp(prefix="crmhook-rabbitmq-"))
        self.server: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None  # seconds from launch to an AMQP handshake

    @property
    def url(self) -> str:
        """The broker URL (guest may log in from loopback only, which this is)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def log_file(self) -> Path:
        return self.directory / "log" / f"{self.nodename}.log"

    def environment(self) -> dict[str, str]:
        """What the server and rabbitmqctl share: the node, its epmd, and HOME (the cookie)."""
        home = self.directory
        return {
            **os.environ,
            "HOME": str(home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_PID_FILE": str(home / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
        }

    def _write_config(self) -> None:
        (self.directory / "log").mkdir()
        (self.directory / "enabled_plugins").write_text("[].\n")  # no plugins at all
        (self.directory / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            # A test machine's /tmp may be small; the default alarm (50 MB) blocks publishers.
            "disk_free_limit.absolute = 1MB\n"
            "log.console = false\n"
            "log.file.level = info\n"
            # Queue statistics (list_queues' message counts) every 0.5 s, not every 5 s.
            "collect_statistics_interval = 500\n"
        )

    def start(self) -> RabbitNode:
        server, epmd = rabbitmq_script("rabbitmq-server"), epmd_binary()
        if server is None or epmd is None:
            raise RuntimeError(NOT_INSTALLED)
        self._write_config()
        launched = time.monotonic()
        self.epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_for_port(self.epmd_port, self.epmd, "epmd")
        with (self.directory / "server.out").open("wb") as out:
            self.server = subprocess.Popen(
                [str(server)],
                env=self.environment(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals all of it
            )
        self._wait_for_amqp()
        self.started_in = time.monotonic() - launched
        return self

    def _wait_for_port(self, port: int, process: subprocess.Popen[bytes], what: str) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not listen on port {port}") from None
                time.sleep(0.05)

    def _wait_for_amqp(self) -> None:
        """Until an AMQP handshake succeeds: the listener opens once the broker has booted."""
        assert self.server is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                connection = amqp.Connection(
                    f"127.0.0.1:{self.port}", userid="guest", password="guest", connect_timeout=1
                )
                connection.connect()
                connection.close()
                return
            except (OSError, amqp.exceptions.AMQPError):
                if self.server.poll() is not None or time.monotonic() > deadline:
                    output = (self.directory / "server.out").read_text(errors="replace")
                    raise RuntimeError(
                        f"rabbitmq-server did not start on port {self.port}: {output[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def rabbitmqctl(self, *args: str, timeout: float = 30) -> str:
        """Run `rabbitmqctl -n NODE ARGS` against this node, with its cookie and epmd."""
        ctl = rabbitmq_script("rabbitmqctl")
        if ctl is None:
            raise RuntimeError(NOT_INSTALLED)
        cli_port = str(free_port())  # the CLI is a distributed Erlang node too
        env = {
            **self.environment(),
            "RABBITMQ_CTL_DIST_PORT_MIN": cli_port,
            "RABBITMQ_CTL_DIST_PORT_MAX": cli_port,
        }
        done = subprocess.run(
            [str(ctl), "-n", self.nodename, *args],
            env=env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def queues(self) -> dict[str, QueueInfo]:
        """The node's queues by name, with their type and ready message count."""
        output = self.rabbitmqctl(
            "list_queues", "name", "type", "messages", "--formatter", "json", "--quiet"
        )
        return {
            row["name"]: QueueInfo(row["name"], str(row["type"]), int(row["messages"]))
            for row in json.loads(output)
        }

    def set_memory_alarm(self, on: bool, timeout: float = 15) -> None:
        """Put the node in a memory alarm (a watermark far below what it uses), in which it
        stops reading from publishing connections, or back out of it; return once it is."""
        self.rabbitmqctl("set_vm_memory_high_watermark", "0.000001" if on else "0.4")
        deadline = time.monotonic() + timeout
        while ("memory" in self.rabbitmqctl("eval", "rabbit_alarm:get_alarms().")) != on:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the memory alarm did not turn {'on' if on else 'off'}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM the node's process group (the script stops beam.smp and waits for it);
        SIGKILL the group if it is not gone in time. The group is signalled only while its
        leader is unreaped, so its ID cannot belong to anyone else yet."""
        if self.server is not None:
            group = self.server.pid
            if self.server.poll() is None:
                os.killpg(group, signal.SIGTERM)
                try:
                    self.server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(group, signal.SIGKILL)
                    self.server.wait()
            self.server = None
        if self.epmd is not None:
            terminate(self.epmd, timeout=5)
            self.epmd = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RabbitNode:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
