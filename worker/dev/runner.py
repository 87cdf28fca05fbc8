"""`crmhook dev`: the whole system on one machine, from a checkout (or beside a Procfile).

Starts an embedded Redis (unless REDIS_URL is set), the sandbox ChiliPiper, and the Procfile's
`web` (gunicorn, on loopback) and `worker` (Celery); prints where to post and a ready-to-paste
curl; on Ctrl-C (or when any process dies) stops every process it started, by pid, and nothing
else.
"""

from __future__ import annotations

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
    _stopping: threading.Event = field(default_factory=threading.Event)

    def environment(self, redis_url: str) -> dict[str, str]:
        """The children's environment: the caller's, with development defaults for gaps and
        this runner's values for what the Procfile's lines leave open."""
        env = child_environment(self.environ)
        env["REDIS_URL"] = redis_url
        env.setdefault("CHILIPIPER_TRANSPORT", "sandbox")
        env.setdefault("CHILIPIPER_SANDBOX_URL", f"http://127.0.0.1:{self.sandbox_port}/mcp")
        env.setdefault("WEBHOOK_TOKENS", "dev-" + secrets.token_urlsafe(18))
        env.setdefault("ADMIN_TOKENS", "dev:write:dev-admin-" + secrets.token_urlsafe(18))
        env.setdefault("SALESFORCE_ORG_IDS", SAMPLE_ORG_ID)
        env.setdefault("PYTHONUNBUFFERED", "1")
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
        try:
            commands = self.commands(Procfile.load())
        except ConfigError as exc:  # nothing is started yet, so nothing to stop
            print(f"crmhook dev: {exc}", file=sys.stderr)
            return 2
        redis_url = self.environ.get("REDIS_URL")
        if not redis_url:
            self.redis = RedisServer().start()
            redis_url = self.redis.url
            _say("redis", f"embedded redis-server on {redis_url} (AOF in {self.redis.directory})")
        env = self.environment(redis_url)
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        try:
            for name, command in commands.items():
                self._start(name, command, env)
            if self._wait_ready(env) and not self._stopping.is_set():
                print(self.banner(env), flush=True)
            while not self._stopping.is_set():
                for name, process in self.processes.items():
                    if process.poll() is not None:
                        _say(name, f"exited with status {process.returncode}; stopping")
                        return 1
                self._stopping.wait(0.5)
            return 0
        except KeyboardInterrupt:
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.stop()

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
        redis_url = env["REDIS_URL"]
        if self._given("REDIS_URL") and url_passwords(redis_url):
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
        """Stop our children (SIGTERM, then SIGKILL after 10 s), then the embedded Redis."""
        self._stopping.set()
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.redis is not None:
            self.redis.close()
            self.redis = None

    def _start(self, name: str, command: list[str], env: Mapping[str, str]) -> None:
        process = subprocess.Popen(
            command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.processes[name] = process
        threading.Thread(target=_relay, args=(name, process), daemon=True).start()

    def _wait_ready(self, env: Mapping[str, str], timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
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
        self._stopping.set()


def _relay(name: str, process: subprocess.Popen[bytes]) -> None:
    if process.stdout is None:
        return
    for raw in iter(process.stdout.readline, b""):
        _say(name, raw.decode("utf-8", "replace").rstrip())


def _say(name: str, line: str) -> None:
    colour = COLOURS.get(name, "0")
    prefix = f"\033[{colour}m{name:>7} |\033[0m" if sys.stdout.isatty() else f"{name:>7} |"
    print(f"{prefix} {line}", flush=True)


def admin_token(env: Mapping[str, str]) -> AdminToken:
    """The first admin token of the children's environment."""
    return parse_admin_token(SecretStr(env["ADMIN_TOKENS"].split(",")[0].strip()), 0)


def admin_secret(env: Mapping[str, str]) -> str:
    """The secret of the first admin token, for the banner."""
    return admin_token(env).secret.get_secret_value()
