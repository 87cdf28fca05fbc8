"""A call's total deadline holds against answers streamed a byte at a time (real HTTP)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from flask import Flask, Response

from tests.conftest import SandboxServer, random_event_id, serve
from worker.chilipiper.deadline import Deadline
from worker.chilipiper.errors import error_for_exception
from worker.chilipiper.mcp import McpGateway
from worker.domain.operations import Action
from worker.errors import InDoubtError, RetryableError


def test_a_cancel_answer_trickling_past_the_deadline_is_abandoned_in_doubt(
    sandbox: SandboxServer,
) -> None:
    """Each chunk arrives well within the read timeout, so only the deadline can end it."""
    event = random_event_id()
    sandbox.set_faults(trickle_seconds=4, trickle_interval=0.1)
    with httpx.Client(timeout=0.5) as client:
        gateway = McpGateway(sandbox.url, client=client, deadline_seconds=1.0)
        gateway.call(Action.GET, event)  # the session is open, the meeting booked
        began = time.monotonic()
        with pytest.raises(InDoubtError, match="deadline"):
            gateway.call(Action.CANCEL, event)
        assert 1.0 <= time.monotonic() - began < 1.6  # the deadline, plus one read at most


def test_a_trickle_within_the_deadline_is_read_to_its_end(sandbox: SandboxServer) -> None:
    event = random_event_id()
    sandbox.set_faults(trickle_seconds=1.0, trickle_interval=0.1)
    with httpx.Client(timeout=0.5) as client:
        gateway = McpGateway(sandbox.url, client=client, deadline_seconds=5.0)
        result = gateway.call(Action.CANCEL, event)
    assert result.meeting.status_as_sent == "Canceled"


def trickling_app(seconds: float) -> Flask:
    app = Flask("trickle")

    @app.get("/slow")
    def slow() -> Response:
        def body() -> Iterator[bytes]:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                yield b"."
                time.sleep(0.05)

        return Response(body(), mimetype="application/json")

    return app


def test_a_plain_body_trickling_past_the_deadline_is_cut_off() -> None:
    """The Scalekit transport reads whole bodies: `Deadline.fetch` ends them on time."""
    server = serve(trickling_app(5.0))
    try:
        with httpx.Client(timeout=0.5) as client:
            request = client.build_request("GET", f"http://127.0.0.1:{server.port}/slow")
            began = time.monotonic()
            with pytest.raises(httpx.ReadTimeout, match="deadline"):
                Deadline(0.8).fetch(client, request)
            assert 0.8 <= time.monotonic() - began < 1.4
    finally:
        server.shutdown()


def test_each_timeout_is_capped_at_the_time_left() -> None:
    deadline = Deadline(2.0)
    capped = deadline.timeout(httpx.Timeout(10.0, connect=5.0))
    assert capped.read is not None
    assert 1.9 < capped.read <= 2.0
    assert capped.connect is not None
    assert capped.connect <= 2.0


def test_no_request_of_a_call_starts_after_its_deadline() -> None:
    """What a call sends is over by its deadline plus one read: that is what the settle
    time is reckoned from. A request not yet sent at the deadline is never sent."""
    deadline = Deadline(0.0)
    with pytest.raises(httpx.ConnectTimeout) as late:
        deadline.before_request()
    error = error_for_exception(late.value, tool="crm-cancel-post", irreversible=True)
    assert isinstance(error, RetryableError)  # never sent: not in doubt
