"""No secret anywhere: real web and worker processes, every secret set to a distinctive
value, a session that uses (and misuses) each of them; then every log line of every process,
every CLI output, `/metrics` and the whole Redis keyspace are searched for each secret."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import (
    ORG_ID,
    notification_id,
    outbound_message,
    random_event_id,
    serve,
    wait_for,
)
from tests.scalekit_standin import CLIENT_ID, IDENTIFIER, ScalekitState, create_scalekit_app
from tests.test_processes import Output, clean_environment, spawn, stop_group
from worker.dev.procfile import Procfile
from worker.dev.redis_server import RedisServer, free_port
from worker.dev.sandbox import Sandbox, create_sandbox_app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent
STORE_DB, SCALEKIT_DB = 0, 1  # the web and the MCP worker; the Scalekit worker


def distinctive(label: str) -> str:
    return f"{label}-{secrets.token_urlsafe(18)}"


@dataclass
class Secrets:
    """Every secret of the session by name; the wrong ones are secrets too (an old rotated
    token, a typo of a real one)."""

    values: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "webhook token",
            "second webhook token",
            "admin secret",
            "read-only admin secret",
            "ChiliPiper token",
            "Scalekit client secret",
            "Redis password",
            "broker password",
            "rotated webhook token",
            "wrong admin secret",
            "wrong ChiliPiper token",
            "wrong Redis password",
        ):
            self.values[name] = distinctive(name.split()[0].lower()[:6])
        real = self.values["webhook token"]
        self.values["typo of the webhook token"] = real[:-1] + ("x" if real[-1] != "x" else "y")
        self.values["Salesforce SessionId"] = f"{ORG_ID[:15]}!AQ4AQ{secrets.token_urlsafe(40)}"

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def add(self, name: str, value: str) -> None:
        self.values[name] = value


@dataclass
class Stack:
    secrets: Secrets
    redis_port: int
    web_port: int
    sandbox: Sandbox
    scalekit: ScalekitState
    sandbox_url: str
    scalekit_url: str
    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    outputs: dict[str, Output] = field(default_factory=dict)
    cli: list[tuple[str, str]] = field(default_factory=list)

    def redis_url(self, db: int, password: str | None = None) -> str:
        password = password or self.secrets["Redis password"]
        return f"redis://crmhook:{password}@127.0.0.1:{self.redis_port}/{db}"

    def environment(
        self, db: int = STORE_DB, transport: str = "mcp", **extra: str
    ) -> dict[str, str]:
        """Every process gets every secret, as a shared production environment would."""
        s = self.secrets
        broker = f"redis://broker:{s['broker password']}@127.0.0.1:{self.redis_port}/{db}"
        admin_tokens = f"ops:write:{s['admin secret']},viewer:read:{s['read-only admin secret']}"
        return (
            clean_environment(
                REDIS_URL=self.redis_url(db),
                CELERY_BROKER_URL=broker,
                WEBHOOK_TOKENS=f"{s['webhook token']},{s['second webhook token']}",
                ADMIN_TOKENS=admin_tokens,
                SALESFORCE_ORG_IDS=ORG_ID,
                CHILIPIPER_TRANSPORT=transport,
                CHILIPIPER_MCP_URL=self.sandbox_url,
                CHILIPIPER_API_TOKEN=s["ChiliPiper token"],
                CHILIPIPER_TIMEOUT_SECONDS="2",
                SCALEKIT_ENV_URL=self.scalekit_url,
                SCALEKIT_CLIENT_ID=CLIENT_ID,
                SCALEKIT_CLIENT_SECRET=s["Scalekit client secret"],
                SCALEKIT_IDENTIFIER=IDENTIFIER,
                WEB_HOST="127.0.0.1",
                PORT=str(self.web_port),
                WEB_CONCURRENCY="1",
                WORKER_CONCURRENCY="4",
            )
            | extra
        )

    def start(self, name: str, procfile_entry: str, env: dict[str, str], cwd: Path) -> None:
        self.processes[name] = spawn(Procfile.load().argv(procfile_entry), env, cwd)
        self.outputs[name] = Output(self.processes[name])

    def crmhook(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["crmhook", *args],
            env=env or self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def collect(self, *commands: tuple[str, subprocess.Popen[str]]) -> None:
        """Wait for CLI commands run side by side; keep what each printed."""
        for label, process in commands:
            output, _ = process.communicate(timeout=60)
            self.cli.append((label, output))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    found = Secrets()
    sandbox = Sandbox(required_token=found["ChiliPiper token"])
    scalekit = ScalekitState(sandbox, client_secret=found["Scalekit client secret"])
    sandbox_server, scalekit_server = (
        serve(create_sandbox_app(sandbox)),
        serve(create_scalekit_app(scalekit)),
    )
    with RedisServer() as server:
        admin = redis.Redis(port=server.port)
        for user, password in (("crmhook", "Redis password"), ("broker", "broker password")):
            admin.acl_setuser(
                user,
                enabled=True,
                passwords=[f"+{found[password]}"],
                keys="*",
                channels="*",
                commands=["+@all"],
            )
        admin.acl_setuser("default", enabled=False)  # only the passwords get in
        admin.close()
        stack = Stack(
            found,
            server.port,
            free_port(),
            sandbox,
            scalekit,
            f"http://127.0.0.1:{sandbox_server.port}/mcp",
            f"http://127.0.0.1:{scalekit_server.port}",
        )
        try:
            yield stack
        finally:
            for process in stack.processes.values():
                stop_group(process)
            for output in stack.outputs.values():
                output.close()
            sandbox_server.shutdown()
            scalekit_server.shutdown()


def test_no_secret_reaches_a_log_line_cli_output_metric_or_redis(
    stack: Stack, tmp_path: Path
) -> None:
    s = stack.secrets
    stack.start("web", "web", stack.environment(), tmp_path)
    stack.start("worker", "worker", stack.environment(), tmp_path)
    stack.start("scalekit worker", "worker", stack.environment(SCALEKIT_DB, "scalekit"), tmp_path)
    base = f"http://127.0.0.1:{stack.web_port}"
    for output in (stack.outputs["worker"], stack.outputs["scalekit worker"]):
        wait_for(lambda output=output: "ready." in output.text or _died(stack), 60)  # type: ignore[misc]
    wait_for(lambda: _ready(base) or _died(stack), 60)
    assert not _died(stack), _all_output(stack)

    cancelled, noshow, unlinked = random_event_id(), random_event_id(), random_event_id()
    stack.sandbox.unlinked.add(unlinked)  # crm-cancel answers 404: a dead letter
    soap = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'}
    message = outbound_message(
        [
            (notification_id(), cancelled),
            (notification_id(), unlinked),
            (notification_id(), random_event_id("003")),  # not an Event: quarantined
        ],
        session_id=s["Salesforce SessionId"],
    )
    outbound = f"{base}/salesforce/outbound/cancel?token="
    with httpx.Client(timeout=30) as http:
        assert http.post(outbound + s["webhook token"], content=message, headers=soap).is_success
        for wrong in ("rotated webhook token", "typo of the webhook token"):
            refused = http.post(outbound + s[wrong], content=message, headers=soap)
            assert refused.status_code == 401
        # A request gunicorn refuses (an unencoded "é" in its target): gunicorn logs the
        # request line, query string and all.
        query = f"token={s['webhook token']}&note=café"
        malformed = f"POST /salesforce/outbound/cancel?{query} HTTP/1.1"
        assert _raw_request(stack.web_port, malformed).startswith(b"HTTP/1.1 400")
        events = {"action": "noshow", "crmEventId": noshow}
        bearer = {"Authorization": f"Bearer {s['second webhook token']}", "Idempotency-Key": "k1"}
        assert http.post(f"{base}/v1/events", json=events, headers=bearer).status_code == 202
        rotated = {"Authorization": f"Bearer {s['rotated webhook token']}"}
        assert http.post(f"{base}/v1/events", json=events, headers=rotated).status_code == 401

        wait_for(lambda: stack.sandbox.meetings.get(cancelled) == "CANCELLED", 30)
        wait_for(lambda: stack.sandbox.meetings.get(noshow) == "NO_SHOW", 30)
        ops = {"Authorization": f"Bearer {s['admin secret']}"}
        failed = wait_for(lambda: http.get(f"{base}/admin/failed", headers=ops).json()["items"], 30)
        assert failed[0]["crm_event_id"] == unlinked
        assert http.get(f"{base}/admin/operations/{cancelled}", headers=ops).is_success
        assert http.get(f"{base}/admin/quarantine", headers=ops).json()["items"]
        replay = {"targets": [unlinked]}
        assert http.post(f"{base}/admin/replay", json=replay, headers=ops).is_success
        viewer = {"Authorization": f"Bearer {s['read-only admin secret']}"}
        assert http.post(f"{base}/admin/replay", json=replay, headers=viewer).status_code == 403
        bad = {"Authorization": f"Bearer {s['wrong admin secret']}"}
        assert http.get(f"{base}/admin/failed", headers=bad).status_code == 401

        # The Scalekit worker, through the CLI: its own database, its own broker queue.
        through_scalekit = random_event_id()
        scalekit_env = stack.environment(SCALEKIT_DB, "scalekit")
        enqueue = stack.crmhook("enqueue", "cancel", through_scalekit, env=scalekit_env)
        stack.collect(("enqueue (scalekit)", enqueue))
        wait_for(lambda: stack.sandbox.meetings.get(through_scalekit) == "CANCELLED", 30)
        wrong_token = stack.environment(CHILIPIPER_API_TOKEN=s["wrong ChiliPiper token"])
        wrong_pw = stack.environment(REDIS_URL=stack.redis_url(0, s["wrong Redis password"]))
        stack.collect(
            ("status", stack.crmhook("status", cancelled)),
            ("status --json", stack.crmhook("status", "--json", unlinked)),
            ("failed", stack.crmhook("failed")),
            ("quarantine", stack.crmhook("quarantine")),
            ("check", stack.crmhook("check", "--event", cancelled)),
            ("check (scalekit)", stack.crmhook("check", env=scalekit_env)),
            ("check (wrong ChiliPiper token)", stack.crmhook("check", env=wrong_token)),
            ("status (wrong Redis password)", stack.crmhook("status", cancelled, env=wrong_pw)),
        )
        metrics = http.get(f"{base}/metrics").text

        # Messages left in the broker: one queued for no worker, one held unacknowledged
        # by a worker killed mid-call.
        stop_group(stack.processes["scalekit worker"])
        queued = stack.crmhook("enqueue", "noshow", random_event_id(), env=scalekit_env)
        stack.collect(("enqueue (queued for no worker)", queued))
        stack.sandbox.faults.delay_seconds = 30
        late = outbound_message(
            [(notification_id(), random_event_id())], session_id=s["Salesforce SessionId"]
        )
        assert http.post(outbound + s["webhook token"], content=late, headers=soap).is_success
    keyspace = _client(stack, STORE_DB)
    wait_for(lambda: keyspace.hlen("unacked") > 0, 30)
    os.killpg(stack.processes["worker"].pid, signal.SIGKILL)  # our own session
    stop_group(stack.processes["web"])
    for output in stack.outputs.values():
        output.close()
    for index, token in enumerate(stack.scalekit.tokens, start=1):
        s.add(f"Scalekit access token {index}", token)
    assert stack.scalekit.tokens, "the Scalekit worker never authenticated"

    texts = [(f"{name} log", output.text) for name, output in stack.outputs.items()]
    texts += [(f"crmhook {label}", output) for label, output in stack.cli]
    texts.append(("/metrics", metrics))
    stored = list(_keyspace(stack))
    leaks = [
        f"{name} in {where}: {_line_with(text, secret)}"
        for name, secret in s.values.items()
        for where, text in [*texts, *stored]
        if secret in text
    ]
    lines = sum(text.count("\n") + 1 for _, text in texts)
    print(
        f"\nsearched {len(s.values)} secrets in {lines} lines of {len(stack.outputs)} process "
        f"logs, {len(stack.cli)} CLI outputs and /metrics, and in {len(stored)} Redis keys "
        f"({sum(len(text) for _, text in stored)} characters of names and values)"
    )
    assert not leaks, "\n".join(leaks)
    # The session did what it says: the sandbox saw the token, the message was refused...
    assert "crm-cancel-post" in _all_output(stack)
    assert any("unacked" in where for where, _ in stored)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).is_success
    except httpx.HTTPError:
        return False


def _raw_request(port: int, request_line: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"{request_line}\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return connection.recv(200)


def _died(stack: Stack) -> bool:
    return any(process.poll() is not None for process in stack.processes.values())


def _all_output(stack: Stack) -> str:
    return "\n".join(f"--- {name}\n{output.text}" for name, output in stack.outputs.items())


def _line_with(text: str, secret: str) -> str:
    return next(line for line in text.splitlines() if secret in line)[:300]


def _client(stack: Stack, db: int) -> Any:  # redis-py's answers are loosely typed
    return redis.Redis.from_url(stack.redis_url(db))


def _keyspace(stack: Stack) -> Iterator[tuple[str, str]]:
    """(where, text) for every key of every database: its name and every value of every
    type, with the broker's base64 message bodies decoded."""
    databases = _client(stack, 0).info("keyspace")
    for name in databases:
        db = int(name.removeprefix("db"))
        client = _client(stack, db)
        for key in client.scan_iter(count=500):
            kind = client.type(key).decode()
            if kind == "string":
                values = [client.get(key)]
            elif kind == "hash":
                values = [part for pair in client.hgetall(key).items() for part in pair]
            elif kind == "list":
                values = client.lrange(key, 0, -1)
            elif kind == "set":
                values = list(client.smembers(key))
            elif kind == "zset":
                values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                values = [
                    part
                    for _, entry in client.xrange(key)
                    for pair in entry.items()
                    for part in pair
                ]
            else:
                raise AssertionError(f"key {key!r} of type {kind} is not searched")
            text = "\n".join(_decoded(value) for value in [key, *values] if value is not None)
            yield f"redis db{db} {key.decode(errors='replace')}", text
        client.close()


def _decoded(raw: bytes) -> str:
    """The text of a value, plus the bodies of any kombu messages in it (base64 on Redis)."""
    text = raw.decode(errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return "\n".join([text, *_bodies(parsed)])


def _bodies(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if (value.get("properties") or {}).get("body_encoding") == "base64":
            yield base64.b64decode(value["body"]).decode(errors="replace")
        for item in value.values():
            yield from _bodies(item)
    elif isinstance(value, list):
        for item in value:
            yield from _bodies(item)
