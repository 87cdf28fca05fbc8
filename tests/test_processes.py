"""The processes users run: the Procfile under honcho, `crmhook dev`, and start-up refusals."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ORG_ID, SALESFORCE, TOKEN, SandboxServer, random_event_id, wait_for
from worker.dev.redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent
BIN = str(Path(sys.executable).parent)


def clean_environment(**extra: str) -> dict[str, str]:
    """The environment without any crmhook settings the developer may have exported."""
    names = (
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "WEBHOOK_TOKENS",
        "SALESFORCE_",
        "CHILIPIPER_",
        "SCALEKIT_",
        "ADMIN_TOKENS",
        "PORT",
        "WEB_HOST",  # the Procfile's web binds to $WEB_HOST
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(names)}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def service_environment(redis_url: str, **extra: str) -> dict[str, str]:
    """What the Procfile's lines need to start here: our Redis, the tests' token and org,
    the sandbox ChiliPiper."""
    return clean_environment(
        REDIS_URL=redis_url,
        WEBHOOK_TOKENS=TOKEN,
        SALESFORCE_ORG_IDS=ORG_ID,
        CHILIPIPER_TRANSPORT="sandbox",
        **extra,
    )


def dev_arguments(port: int, sandbox_port: int, concurrency: int) -> list[str]:
    """`crmhook dev`'s arguments, after the program."""
    ports = ["--port", str(port), "--sandbox-port", str(sandbox_port)]
    return ["dev", *ports, "--concurrency", str(concurrency)]


class Output:
    """A child process's combined output, collected by a thread, readable while it runs."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._process = process
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.lines.append(line)

    def close(self) -> None:
        """After the process ended: read what is left and release the pipe."""
        self._reader.join(timeout=10)
        if self._process.stdout is not None:
            self._process.stdout.close()

    @property
    def text(self) -> str:
        return "".join(self.lines)


def worker_command() -> list[str]:
    """A small Celery worker of the service, as the Procfile starts one."""
    return ["celery", "--app", "worker", "worker", "--pool", "threads", "-c", "4", "-l", "INFO"]


def spawn(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """Start `command` in a session of its own (so `stop_group` can end all of it), its
    output merged and readable as text."""
    return subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop_group(process: subprocess.Popen[str]) -> int:
    """Interrupt the process we started (as Ctrl-C would), then make sure its group is gone."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # our own session, started below
            return process.wait()
    return process.returncode


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def procfile_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_procfile_runs_web_and_worker_under_honcho(
    procfile_redis: RedisServer, sandbox: SandboxServer, tmp_path: Path
) -> None:
    port = free_port()
    env = service_environment(
        procfile_redis.url,
        CHILIPIPER_SANDBOX_URL=sandbox.url,
        WEB_CONCURRENCY="1",
        WORKER_CONCURRENCY="4",
    )
    process, output = start_honcho(ROOT / "Procfile", port, env, tmp_path)
    try:
        body = (SALESFORCE / "synthetic_2x_event.xml").read_bytes()
        event = "00U5g00000MnOpQEAV"
        with sandbox.state.lock:
            sandbox.state.meetings[event] = "BOOKED"
        already = len(sandbox.calls(event, action="noshow"))
        response = httpx.post(
            f"http://127.0.0.1:{port}/salesforce/outbound/noshow?token={TOKEN}",
            content=body,
            headers={"Content-Type": "text/xml"},
        )
        assert response.status_code == 200
        wait_for(lambda: len(sandbox.calls(event, action="noshow")) > already, timeout=30)
    finally:
        stop_group(process)
        output.close()
    assert not port_open(port)


def start_honcho(
    procfile: Path, port: int, env: dict[str, str], cwd: Path
) -> tuple[subprocess.Popen[str], Output]:
    """`procfile` under honcho, once web answers /readyz and the worker (if any) is ready."""
    command = ["honcho", "start", "-f", str(procfile), "-d", str(ROOT), "-p", str(port)]
    process = spawn(command, env, cwd)
    output = Output(process)
    try:
        wait_for(lambda: _ready(port) or process.poll() is not None, timeout=60)
        assert process.poll() is None, output.text
        if "worker:" in procfile.read_text():
            wait_for(lambda: "ready." in output.text, timeout=60)
    except BaseException:
        stop_group(process)
        output.close()
        raise
    return process, output


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).is_success
    except httpx.HTTPError:
        return False


def test_crmhook_dev_runs_the_printed_curl_to_a_sandbox_cancel(tmp_path: Path) -> None:
    port, sandbox_port = free_port(), free_port()
    process = spawn(
        ["crmhook", *dev_arguments(port, sandbox_port, 4)], clean_environment(), tmp_path
    )
    output = Output(process)
    try:
        curl = wait_for(
            lambda: (
                re.search(r"^\s*(curl .+)$", output.text, re.MULTILINE)
                or process.poll() is not None
            ),
            timeout=90,
        )
        assert process.poll() is None, output.text
        command = shlex.split(curl.group(1))
        redis_port = int(
            re.search(r"embedded redis-server on redis://127.0.0.1:(\d+)", output.text).group(1)
        )  # type: ignore[union-attr]
        if shutil.which("curl"):
            answer = subprocess.run(
                command, capture_output=True, text=True, timeout=30, check=True
            ).stdout
        else:  # replay the printed command's URL, headers and body without curl
            answer = _replay(command)
        assert "<Ack>true</Ack>" in answer
        wait_for(lambda: output.text.count("→ CANCELLED") >= 2, timeout=30)
        assert "crm-cancel-post 00U5g00000MnOpQEAV: BOOKED → CANCELLED" in output.text
        assert "crm-cancel-post 00U5g00000MnOpREAV: BOOKED → CANCELLED" in output.text
    finally:
        status = stop_group(process)
        output.close()
    assert status == 0, output.text
    assert not port_open(port)
    assert not port_open(sandbox_port)
    assert not port_open(redis_port)


def _replay(command: list[str]) -> str:
    url = next(arg for arg in command if arg.startswith("http"))
    headers = dict(command[i + 1].split(": ", 1) for i, arg in enumerate(command) if arg == "-H")
    data = next(command[i + 1] for i, arg in enumerate(command) if arg == "--data-binary")
    return httpx.post(
        url, content=Path(data.removeprefix("@")).read_bytes(), headers=headers, timeout=30
    ).text


def test_web_refuses_to_start_without_its_settings(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [
            "gunicorn",
            "--preload",
            "--no-control-socket",
            "--bind",
            f"127.0.0.1:{free_port()}",
            "webhooks:create_app()",
        ],
        env=clean_environment(REDIS_URL="redis://127.0.0.1:1/0"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "WEBHOOK_TOKENS: is not set" in result.stderr
    assert "SALESFORCE_ORG_IDS: is not set" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("CLAIM_LEASE_SECONDS", "soon", "CLAIM_LEASE_SECONDS: Input should be a valid integer"),
        ("CLAIM_HEARTBEAT_SECONDS", "30", "CLAIM_LEASE_SECONDS (60) must outlive two missed"),
        ("CHILIPIPER_SETTLE_SECONDS", "120", "CHILIPIPER_SETTLE_SECONDS (120) must be at least"),
    ],
)
def test_worker_refuses_to_start_with_a_bad_setting(
    tmp_path: Path, setting: str, value: str, message: str
) -> None:
    result = subprocess.run(
        worker_command(),
        env=clean_environment(
            REDIS_URL="redis://127.0.0.1:1/0", CHILIPIPER_TRANSPORT="sandbox", **{setting: value}
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# --- the worker learns ChiliPiper's tools at start-up ---------------------------------------

DISCOVERY_DB = 6


def discovery_environment(redis_server: RedisServer, sandbox_url: str) -> dict[str, str]:
    return clean_environment(
        REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/{DISCOVERY_DB}",
        CHILIPIPER_TRANSPORT="sandbox",
        CHILIPIPER_SANDBOX_URL=sandbox_url,
        CHILIPIPER_TIMEOUT_SECONDS="2",
    )


def test_worker_refuses_to_start_when_chilipiper_lists_no_cancel_tool(
    tmp_path: Path, redis_server: RedisServer, sandbox: SandboxServer
) -> None:
    sandbox.configure(tools="get-only")
    result = subprocess.run(
        worker_command(),
        env=discovery_environment(redis_server, sandbox.url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ChiliPiper offers no crm-cancel-post or crm-cancel" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_out_of_reach_of_chilipiper_starts_and_lists_the_tools_before_its_first_call(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """No crash loop while ChiliPiper is away: the worker starts, and learns the tools when
    there is a call to make (here, only the v1 tools are offered by then)."""
    from werkzeug.serving import make_server

    from worker.dev.sandbox import Sandbox, create_sandbox_app

    port = free_port()
    env = discovery_environment(redis_server, f"http://127.0.0.1:{port}/mcp")
    process = spawn(worker_command(), env, tmp_path)
    output = Output(process)
    sandbox = Sandbox(tools="v1")
    server = make_server("127.0.0.1", port, create_sandbox_app(sandbox), threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    try:
        wait_for(lambda: " ready." in output.text or process.poll() is not None, timeout=60)
        assert process.poll() is None, output.text
        assert "could not be listed at start-up" in output.text
        serving.start()
        event = random_event_id()
        enqueued = subprocess.run(
            ["crmhook", "enqueue", "cancel", event],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert enqueued.returncode == 0, enqueued.stderr
        wait_for(lambda: sandbox.meetings.get(event) == "CANCELLED", timeout=30)
        assert [call["tool"] for call in sandbox.calls] == ["crm-cancel"]
    finally:
        if serving.is_alive():
            server.shutdown()
        server.server_close()
        stop_group(process)
        output.close()
