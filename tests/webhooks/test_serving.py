"""The web server's timeouts: their settings, the refusal to serve without gevent, and the
body deadline itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, BinaryIO
from wsgiref.types import WSGIApplication

import gevent
import gevent.socket
import pytest

from webhooks.serving import BODY_TIMEOUT, HEADER_TIMEOUT, BodyDeadline, body_timeout, create_app
from worker.errors import ConfigError


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, 10),
        ({BODY_TIMEOUT: "3"}, 3),
        ({BODY_TIMEOUT: " 30 ", HEADER_TIMEOUT: "1"}, 30),
    ],
)
def test_body_timeout_defaults_to_ten_seconds(environ: dict[str, str], expected: float) -> None:
    assert body_timeout(environ) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({BODY_TIMEOUT: "0"}, "WEB_BODY_TIMEOUT_SECONDS: must be a whole number of seconds"),
        ({BODY_TIMEOUT: "2.5"}, "WEB_BODY_TIMEOUT_SECONDS: must be a whole number of seconds"),
        # gunicorn would wait for headers forever on a keep-alive of 0.
        ({HEADER_TIMEOUT: "0"}, "WEB_HEADER_TIMEOUT_SECONDS: must be a whole number of seconds"),
        ({HEADER_TIMEOUT: "soon"}, "WEB_HEADER_TIMEOUT_SECONDS: must be a whole number"),
    ],
)
def test_a_timeout_that_is_not_whole_positive_seconds_is_refused_by_name(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        body_timeout(environ)


def test_the_app_refuses_to_serve_outside_the_gevent_worker(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without gevent's patching nothing could interrupt a body read: refuse, as a bad
    setting is refused (exit status 4 stops gunicorn's master too)."""
    monkeypatch.delenv(BODY_TIMEOUT, raising=False)
    monkeypatch.delenv(HEADER_TIMEOUT, raising=False)
    with pytest.raises(SystemExit) as exited:
        create_app()
    assert exited.value.code == 4
    assert "needs gunicorn's gevent worker (--worker-class gevent)" in capsys.readouterr().err


# --- BodyDeadline, over a real socket pair driven by gevent -----------------------------------

DEADLINE = 0.2


@pytest.fixture
def client_and_input() -> Iterator[tuple[gevent.socket.socket, BinaryIO]]:
    """The client's end of a connection, and the server's end as `wsgi.input`."""
    client, server = gevent.socket.socketpair()
    stream = server.makefile("rb")
    yield client, stream
    stream.close()
    server.close()
    client.close()


def serve(
    app: WSGIApplication, stream: BinaryIO, path: str = "/salesforce/outbound/cancel"
) -> tuple[str, bytes]:
    started: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        started.append(status)

    environ = {"wsgi.input": stream, "PATH_INFO": path, "REQUEST_METHOD": "POST"}
    body = b"".join(BodyDeadline(app, DEADLINE)(environ, start_response))
    return started[-1], body


def reads_the_body(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read(10)
    gevent.sleep(DEADLINE * 2)  # the app's own work after the body: never interrupted
    start_response("200 OK", [])
    return [body]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/salesforce/outbound/cancel", b"<faultcode>soapenv:Client</faultcode>"),
        ("/v1/events", b'{"error": "request body not received within 0.2 s'),
    ],
)
def test_a_body_that_stops_arriving_is_answered_408_in_the_routes_language(
    client_and_input: tuple[gevent.socket.socket, BinaryIO], path: str, expected: bytes
) -> None:
    client, stream = client_and_input
    client.sendall(b"<soap")  # five of the ten bytes, then nothing
    started = time.monotonic()
    status, body = serve(reads_the_body, stream, path)
    assert status == "408 Request Timeout"
    assert expected in body
    print(f"\n408 after {time.monotonic() - started:.2f} s (deadline {DEADLINE} s)")


def test_a_body_that_arrives_in_time_leaves_the_app_all_the_time_it_needs(
    client_and_input: tuple[gevent.socket.socket, BinaryIO],
) -> None:
    client, stream = client_and_input
    client.sendall(b"<soap:Env>")
    assert serve(reads_the_body, stream) == ("200 OK", b"<soap:Env>")


def test_a_timeout_of_the_apps_own_is_not_taken_for_a_slow_body(
    client_and_input: tuple[gevent.socket.socket, BinaryIO],
) -> None:
    _, stream = client_and_input

    def times_out(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with gevent.Timeout(0.01):
            gevent.sleep(1)
        return []

    with pytest.raises(gevent.Timeout):
        serve(times_out, stream)
