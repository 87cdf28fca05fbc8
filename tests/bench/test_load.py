"""The load generator against a real HTTP/1.1 server on loopback: counts, pacing, framing and
failures, and that an open loop shows a stalled server as latency."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from bench.load import NoSuccess, Post, closed_loop, encode, open_loop, post_all

HOST = "127.0.0.1"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__((HOST, 0), _Handler)
        self.lock = threading.Lock()
        self.bodies: list[bytes] = []

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = super().get_request()
        # As gunicorn does: without it, the handler's separate header and body writes meet the
        # client's delayed ACK and every answer waits 40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    def handle_error(self, request: object, client_address: object) -> None:
        # The timeout test hangs up before the answer on purpose; a traceback would be noise.
        pass


class _Handler(BaseHTTPRequestHandler):
    """Answers POSTs; the query picks `delay`, `status` and `mode` (length, chunked, close, eof)."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        with self.server.lock:
            self.server.bodies.append(body)
        time.sleep(float(query.get("delay", "0")))
        answer = b'{"ok": true}'
        mode = query.get("mode", "length")
        self.send_response(int(query.get("status", "200")))
        self.send_header("Content-Type", "application/json")
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5;ext=1\r\n" + answer[:5] + b"\r\n")
            self.wfile.write(b"%x\r\n" % len(answer[5:]) + answer[5:] + b"\r\n")
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
            return
        if mode == "eof":  # no length at all: the close marks the end of the body
            self.end_headers()
            self.wfile.write(answer)
            self.close_connection = True
            return
        if mode == "close":
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _port(srv: _Server) -> int:
    return srv.server_address[1]


def _posts(query: str = "", n: int = 3) -> list[Post]:
    return [
        Post(f"/hook?{query}", b"body-%d" % i, {"Content-Type": "text/xml", "SOAPAction": '""'})
        for i in range(n)
    ]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def test_closed_loop_sends_as_many_requests_as_it_reports(server: _Server) -> None:
    result = closed_loop(HOST, _port(server), _posts(), connections=4, seconds=0.5)

    assert len(result.samples) > 50
    assert result.statuses() == {200: len(result.samples)}
    assert len(server.bodies) == len(result.samples)
    assert result.connections_opened == 4
    assert {s.index for s in result.samples} == {0, 1, 2}
    assert 0.5 <= result.seconds < 1.0
    assert result.rate() == pytest.approx(result.ok() / result.seconds)
    assert result.cpu_share() > 0


def test_open_loop_paces_requests_and_measures_from_due_time(server: _Server) -> None:
    result = open_loop(HOST, _port(server), _posts("delay=0.05"), rate=100, seconds=1)

    assert abs(len(result.samples) - 100) <= 2
    assert result.ok() == len(result.samples) == len(server.bodies)
    assert result.latency(0.5) >= 0.05
    assert result.latency(0.0) <= result.latency(0.5) <= result.latency(1.0)
    # 100/s at 50 ms each needs about five connections, far under the cap of 64.
    assert result.connections_opened <= 20
    dues = [s.scheduled for s in result.samples]
    assert dues == sorted(dues)
    assert dues[-1] - dues[0] == pytest.approx(0.99, abs=1e-6)


def test_open_loop_shows_a_stalled_server_as_latency(server: _Server) -> None:
    # Two connections at 0.3 s each serve 6.7/s against 50/s due: the queue is the latency.
    result = open_loop(
        HOST, _port(server), _posts("delay=0.3"), rate=50, seconds=0.2, connections=2
    )

    assert result.ok() == len(result.samples) == 10
    assert result.connections_opened == 2
    # Served in pairs, request i waits for pair i // 2: its latency is 0.3 (i // 2 + 1) - i / 50.
    assert result.latency(0.5) > 0.6
    assert result.latency(1.0) > 1.2
    waited = max(s.sent - s.scheduled for s in result.samples)
    assert waited > 0.9  # the wait for a connection is counted, not hidden


def test_post_all_sends_each_post_exactly_once_in_order(server: _Server) -> None:
    posts = _posts(n=40)
    result = post_all(HOST, _port(server), posts, connections=5)

    assert sorted(server.bodies) == sorted(p.body for p in posts)
    assert [s.index for s in result.samples] == list(range(40))
    assert result.ok() == 40
    assert result.connections_opened == 5


@pytest.mark.parametrize(
    ("mode", "opened"),
    [("chunked", 2), ("length", 2), ("close", 12), ("eof", 12)],
)
def test_each_response_framing_is_parsed(server: _Server, mode: str, opened: int) -> None:
    # A misread body would garble the next answer on the same connection.
    result = post_all(HOST, _port(server), _posts(f"mode={mode}", n=12), connections=2)

    assert result.statuses() == {200: 12}
    assert result.connections_opened == opened


def test_non_2xx_answers_alone_raise_no_success(server: _Server) -> None:
    with pytest.raises(NoSuccess, match=r"statuses \{500: \d+\}.*HTTP 500") as caught:
        closed_loop(HOST, _port(server), _posts("status=500"), connections=2, seconds=0.1)

    assert caught.value.result.ok() == 0
    assert len(caught.value.result.samples) == len(server.bodies)


def test_refused_port_gives_status_0_samples_then_no_success() -> None:
    port = _closed_port()
    result = post_all(HOST, port, _posts(n=3), connections=2)

    assert result.statuses() == {0: 3}
    assert "ConnectionRefusedError" in result.first_error

    with pytest.raises(NoSuccess, match=r"no request succeeded.*ConnectionRefused"):
        closed_loop(HOST, port, _posts(), connections=2, seconds=0.1)
    with pytest.raises(NoSuccess, match="no request succeeded") as caught:
        open_loop(HOST, port, _posts(), rate=100, seconds=0.1)
    assert caught.value.result.statuses() == {0: 10}


def test_a_timeout_is_a_status_0_sample_and_the_run_goes_on(server: _Server) -> None:
    posts = [*_posts("delay=0.5", n=1), *_posts(n=3)]
    result = post_all(HOST, _port(server), posts, connections=1, timeout=0.2)

    assert [s.status for s in result.samples] == [0, 200, 200, 200]
    assert "TimeoutError" in result.first_error
    assert result.connections_opened == 2  # the timed-out connection is not reused


def test_encode_states_host_length_and_type_once() -> None:
    post = Post("/x?token=t", b"abc", {"content-type": "text/xml", "Content-Length": "99"})

    assert encode("localhost", 8000, post) == (
        b"POST /x?token=t HTTP/1.1\r\nHost: localhost:8000\r\ncontent-type: text/xml\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    )
    with pytest.raises(ValueError, match="line break"):
        encode("localhost", 8000, Post("/x", b"", {"X-A": "1\r\nX-B: 2"}))
