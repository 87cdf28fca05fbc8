"""SIGTERM to `web` (the Procfile's gunicorn line) drains what is in flight: a request whose
body is still arriving when the signal comes is read, queued and acknowledged."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bench.messages import notification_id, outbound_message, random_event_id
from tests.conftest import TOKEN, wait_for
from tests.test_processes import service_environment
from tests.test_slow_senders import ready, request_head, web_line
from worker.dev.redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow


def test_sigterm_lets_a_request_in_flight_finish(tmp_path: Path) -> None:
    port = free_port()
    with RedisServer() as broker:
        env = service_environment(
            broker.url, WEB_CONCURRENCY="1", PORT=str(port), WEB_HOST="127.0.0.1"
        )
        log = (tmp_path / "web.log").open("wb")
        web = subprocess.Popen(
            ["sh", "-c", "exec " + web_line()], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_for(lambda: ready(port) or web.poll() is not None, timeout=60)
            assert web.poll() is None, (tmp_path / "web.log").read_text()
            body = outbound_message([(notification_id(), random_event_id())])
            path = f"/salesforce/outbound/cancel?token={TOKEN}"
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request_head(path, len(body)) + body[: len(body) // 2])
                time.sleep(0.3)  # the request is in the app, reading its body
                web.send_signal(signal.SIGTERM)
                time.sleep(0.5)  # gunicorn has begun to stop: no new connections
                assert web.poll() is None
                sock.sendall(body[len(body) // 2 :])
                answer = b""
                while b"</soapenv:Envelope>" not in answer and b"Envelope>" not in answer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
            assert b"<Ack>true</Ack>" in answer
            assert web.wait(timeout=30) == 0
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
        finally:
            if web.poll() is None:
                web.kill()
                web.wait()
            log.close()
