"""`crmhook dev`: the whole system on one machine, from a checkout (or beside a Procfile).

Starts an embedded Redis (unless REDIS_URL or REDIS_SENTINELS is set), the sandbox ChiliPiper,
and the Procfile's `web` (gunicorn, on loopback) and `worker` (Celery); prints where to post and
a ready-to-paste curl; on Ctrl-C (or when any process dies) stops every process it started, by
pid, and nothing else.

Each child leads a session (and process group) of its own, so the terminal's Ctrl-C reaches the
runner alone, and the runner signals each child once: a child that also got the terminal's
SIGINT was signalled twice, and a gunicorn worker re-entering its quit handler could stay behind,
orphaned, holding the web port.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import FrameType

import httpx
from pydantic import SecretStr

from worker.dev.procfile import Procfile, child_environment
from worker.dev.redis_server import RedisServer
from worker.errors import ConfigError
from worker.redaction import url_passwords
from worker.settings import AdminToken, parse_admin_token

SAMPLE_ORG_ID = "00D5g000004XyZqEAK"  # the bundled sample message's OrganizationId
COLOURS = {"redis": "31", "sandbox": "35", "web": "36", "worker": "33"}
# Ctrl-C, a process manager's SIGTERM, the terminal hanging up: each stops everything.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_SECONDS = 10.0  # from SIGTERM to SIGKILL: Celery's warm shutdown, gunicorn's graceful one
POLL_SECONDS = 0.1  # how soon the main thread notices a signal or an exit
REAP_SECONDS = 5.0  # after the SIGKILLs: how long to wait for the killed to be gone


def sample_message() -> Path:
    """The bundled Outbound Message with two Event notifications."""
    return Path(str(resources.files("worker.dev") / "samples" / "outbound_event.xml"))


@dataclass
class DevStack:
    port: int
    sandbox_port: int
    concurrency: int
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    redis: RedisServer | None = None
    grace: float = GRACE_SECONDS
    _signals: int = 0  # stop signals received so far; only the signal handler counts them
    _stopped: bool = False
    _relays: list[threading.Thread] = field(default_factory=list)

    def environment(self, redis_url: str | None) -> dict[str, str]:
        """The children's environment: the caller's, with development defaults for gaps and
        this runner's values for what the Procfile's lines leave open."""
        env = child_environment(self.environ)
        if redis_url:
            env["REDIS_URL"] = redis_url
        env.setdefault("CHILIPIPER_TRANSPORT", "sandbox")
        env.setdefault("CHILIPIPER_SANDBOX_URL", f"http://127.0.0.1:{self.sandbox_port}/mcp")
        env.setdefault("WEBHOOK_TOKENS", "dev-" + secrets.token_urlsafe(18))
        env.setdefault("ADMIN_TOKENS", "dev:write:dev-admin-" + secrets.token_urlsafe(18))
        env.setdefault("SALESFORCE_ORG_IDS", SAMPLE_ORG_ID)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("LOG_FORMAT", "text")  # a terminal, not a log pipeline
        # The worker's grace ends before this runner's own 10 s wait for it (`stop`).
        env.setdefault("WORKER_SHUTDOWN_GRACE_SECONDS", "5")
        env.update(self.procfile_settings())
        return env

    def procfile_settings(self) -> dict[str, str]:
        """Loopback only (a dev machine is not a server), on --port, sized by --concurrency."""
        return {
            "WEB_HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "2",
            "WORKER_CONCURRENCY": str(self.concurrency),
        }

    def commands(self, procfile: Procfile) -> dict[str, list[str]]:
        """What to start, in order: the sandbox unless CHILIPIPER_TRANSPORT names another
        transport (it stands in for ChiliPiper, so it is no Procfile process), then the
        Procfile's worker and web; a ConfigError if the Procfile lacks either."""
        commands = {name: procfile.argv(name) for name in ("worker", "web")}
        if self.environ.get("CHILIPIPER_TRANSPORT", "sandbox") != "sandbox":
            return commands
        sandbox = [sys.executable, "-m", "worker.cli", "sandbox", "--port", str(self.sandbox_port)]
        return {"sandbox": sandbox} | commands

    def run(self) -> int:
        """Start everything, run until a stop signal (0) or a child's exit (1), then `stop()`.
        The stop signals' handlers are ours from before the first start until after the last
        stop, so no signal can land between a start and its record, or abort the stopping."""
        try:
            commands = self.commands(Procfile.load())
        except ConfigError as exc:  # nothing is started yet, so nothing to stop
            print(f"crmhook dev: {exc}", file=sys.stderr)
            return 2
        previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            return self._run(commands)
        finally:
            try:
                self.stop()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _run(self, commands: Mapping[str, list[str]]) -> int:
        env = self.environment(self.redis_url())
        for name, command in commands.items():
            if self._signals:
                return 0
            self._start(name, command, env)
        if self._wait_ready(env) and not self._signals:
            print(self.banner(env), flush=True)
        while not self._signals:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    _say(name, f"exited with status {process.returncode}; stopping")
                    return 1
            time.sleep(POLL_SECONDS)
        return 0

    def redis_url(self) -> str | None:
        """The caller's REDIS_URL; else, unless the caller named sentinels, an embedded
        Redis's, started here."""
        redis_url = self.environ.get("REDIS_URL")
        if self._given("REDIS_SENTINELS"):
            _say("redis", f"through the sentinels {self.environ['REDIS_SENTINELS']}")
        elif not redis_url:
            self.redis = RedisServer()  # recorded before it starts: stop() stops it whatever
            self.redis.start()
            redis_url = self.redis.url
            _say("redis", f"embedded redis-server on {redis_url} (AOF in {self.redis.directory})")
        return redis_url

    def banner(self, env: Mapping[str, str]) -> str:
        """Where to post, with a ready-to-paste curl. Tokens this runner generated for the
        session are shown (they die with it); secrets the caller set in the environment are
        never printed: the curl names them instead (a shell expansion of WEBHOOK_TOKENS, a
        placeholder for the admin secret, a Redis URL without its password)."""
        outbound = f"http://127.0.0.1:{self.port}/salesforce/outbound/cancel?token="
        if self._given("WEBHOOK_TOKENS"):
            url = f'"{outbound}${{WEBHOOK_TOKENS%%,*}}"'  # the first token, expanded by the shell
        else:
            url = f"'{outbound}{env['WEBHOOK_TOKENS'].split(',')[0].strip()}'"
        if self._given("ADMIN_TOKENS"):
            admin = f"<the secret of ADMIN_TOKENS entry {admin_token(env).name!r}>"
        else:
            admin = admin_secret(env)
        redis_url = env.get("REDIS_URL", "")
        if self._given("REDIS_SENTINELS"):
            status = "crmhook status 00U5g00000MnOpQ  # with your REDIS_SENTINELS settings"
        elif self._given("REDIS_URL") and url_passwords(redis_url):
            status = "crmhook status 00U5g00000MnOpQ  # with your REDIS_URL (password not shown)"
        else:
            status = f"REDIS_URL={redis_url} crmhook status 00U5g00000MnOpQ"
        return "\n".join(
            [
                "",
                f"crmhook is up: web http://127.0.0.1:{self.port}  "
                f"(ChiliPiper: {env['CHILIPIPER_TRANSPORT']})",
                "Post the bundled sample Outbound Message (two Event notifications) with:",
                "",
                f"  curl -sS -X POST {url} -H 'Content-Type: text/xml; charset=UTF-8' "
                f"-H 'SOAPAction: \"\"' --data-binary @{sample_message()}",
                "",
                "and watch the sandbox cancel both meetings below. Ctrl-C stops everything.",
                "",
                "Operators, from another shell:",
                f"  {status}",
                f"  curl -sS -H 'Authorization: Bearer {admin}' "
                f"http://127.0.0.1:{self.port}/admin/failed",
                "",
            ]
        )

    def _given(self, name: str) -> bool:
        """Whether the caller set `name` (so it is theirs, not generated for this session)."""
        return bool(self.environ.get(name))

    def stop(self) -> None:
        """Stop our children, then the embedded Redis; once, to the end.

        Each child gets one SIGTERM (its own group's, if it already exited and left members
        behind, as a dead gunicorn master leaves its workers); after `grace` seconds, or at
        once on another stop signal (a second Ctrl-C), SIGKILL goes to each of our children's
        groups that still has a member. No other group is ever signalled. Redis goes last, so
        the worker's last writes land, and once (it leads its own session too)."""
        if self._stopped:
            return
        self._stopped = True
        started_by_signal = min(self._signals, 1)
        running = {name: process for name, process in self.processes.items() if _running(process)}
        if running:
            _say("dev", "stopping (Ctrl-C again to kill at once)")
        for process in running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            else:
                _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while (
            any(_running(process) for process in running.values())
            and time.monotonic() < deadline
            and self._signals <= started_by_signal
        ):
            time.sleep(POLL_SECONDS)
        for name, process in running.items():
            if _running(process):
                _say(name, "killed (SIGKILL)")
                _signal_group(process, signal.SIGKILL)
        reaped = time.monotonic() + REAP_SECONDS
        for process in running.values():
            _reap(process, reaped)
        if self.redis is not None:
            self.redis.close()
            self.redis = None
        drained = time.monotonic() + 2
        for relay in self._relays:  # the children's last lines, as far as they come promptly
            relay.join(timeout=max(0.0, drained - time.monotonic()))

    def _start(self, name: str, command: list[str], env: Mapping[str, str]) -> None:
        """Start `command` leading a new session (its pid is its process group's id): out of
        reach of the terminal's signals and of its input, stopped by `stop()` alone."""
        process = subprocess.Popen(
            command,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        relay = threading.Thread(target=_relay, args=(name, process), daemon=True)
        relay.start()
        self._relays.append(relay)

    def _wait_ready(self, env: Mapping[str, str], timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._signals:
            if any(process.poll() is not None for process in self.processes.values()):
                return False
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).is_success:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        return False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Count, nothing more. Raising (KeyboardInterrupt) could land anywhere, between a
        start and its record or half-way through stop(); taking a lock (threading.Event.set)
        can deadlock against the main thread's own wait on it."""
        self._signals += 1


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signal `process`'s own group: its pid, as it leads the session `_start` gave it. A pid
    stays reserved while a group of that id has members, so this reaches our child's group or
    nobody."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)  # signal 0: only asks whether the group has a member
    except ProcessLookupError:
        return False
    except PermissionError:  # not ours: nothing of our child is in it
        return False
    return True


def _running(process: subprocess.Popen[bytes]) -> bool:
    """The child, or anything left in its group (a gunicorn master's workers)."""
    return process.poll() is None or _group_alive(process.pid)


def _reap(process: subprocess.Popen[bytes], deadline: float) -> None:
    """Collect the child's status and wait, until `deadline` at most, for the rest of its group
    to be gone (after a SIGKILL, orphans are init's to reap), so that its ports are free when
    `crmhook dev` returns."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)


def _relay(name: str, process: subprocess.Popen[bytes]) -> None:
    if process.stdout is None:
        return
    for raw in iter(process.stdout.readline, b""):
        _say(name, raw.decode("utf-8", "replace").rstrip())


def _say(name: str, line: str) -> None:
    colour = COLOURS.get(name, "0")
    try:
        prefix = f"\033[{colour}m{name:>7} |\033[0m" if sys.stdout.isatty() else f"{name:>7} |"
        print(f"{prefix} {line}", flush=True)
    except OSError:  # the terminal hung up or the pipe closed: keep draining, keep stopping
        pass


def admin_token(env: Mapping[str, str]) -> AdminToken:
    """The first admin token of the children's environment."""
    return parse_admin_token(SecretStr(env["ADMIN_TOKENS"].split(",")[0].strip()), 0)


def admin_secret(env: Mapping[str, str]) -> str:
    """The secret of the first admin token, for the banner."""
    return admin_token(env).secret.get_secret_value()
