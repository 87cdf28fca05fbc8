"""What the Procfile's gunicorn serves: the web app, under a deadline for request bodies.

The Procfile runs gunicorn's gevent worker, so a client that sends slowly holds a greenlet,
never one of a few threads: forty slow senders cannot keep a normal post waiting. gunicorn
bounds the wait for a request's headers (its keep-alive, `WEB_HEADER_TIMEOUT_SECONDS`) but not
for its body, which the app reads; `BodyDeadline` gives each request `WEB_BODY_TIMEOUT_SECONDS`
from its start to deliver the body, and answers 408 past it.

gunicorn imports this module in each worker, after gevent has patched the standard library.
Nothing the gunicorn master imports may come from the `webhooks` package: its `__init__`
imports the whole app (Celery, redis, ssl), which must load after the patching, not before.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol, TypeVar
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import gevent
from gevent import monkey

from webhooks.app import create_app as create_flask_app
from webhooks.soap import CONTENT_TYPE, fault
from worker.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

HEADER_TIMEOUT = "WEB_HEADER_TIMEOUT_SECONDS"
BODY_TIMEOUT = "WEB_BODY_TIMEOUT_SECONDS"
# The Procfile passes the header timeout to gunicorn as `--keep-alive ${...:-5}`.
DEFAULTS = {HEADER_TIMEOUT: 5, BODY_TIMEOUT: 10}


def create_app() -> WSGIApplication:
    """The app for gunicorn's gevent worker (`webhooks.serving:create_app()`). A bad setting
    stops the worker with exit status 4, which gunicorn's master takes for "App failed to
    load" and stops on too, rather than respawning a crash loop."""
    try:
        seconds = body_timeout(os.environ)
        if not monkey.is_module_patched("socket"):
            raise ConfigError(
                "webhooks.serving needs gunicorn's gevent worker (--worker-class gevent): "
                f"without it nothing can enforce {BODY_TIMEOUT}"
            )
    except ConfigError as exc:
        print(f"crmhook web: {exc}", file=sys.stderr)
        raise SystemExit(4) from None
    return BodyDeadline(create_flask_app(), seconds)


def body_timeout(environ: Mapping[str, str]) -> float:
    """`WEB_BODY_TIMEOUT_SECONDS`, after checking that `WEB_HEADER_TIMEOUT_SECONDS` is not 0:
    gunicorn reads it too (as its keep-alive), and on 0 it would wait for headers forever."""
    _seconds(environ, HEADER_TIMEOUT)
    return _seconds(environ, BODY_TIMEOUT)


def _seconds(environ: Mapping[str, str], name: str) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return DEFAULTS[name]
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ConfigError(f"{name}: must be a whole number of seconds, at least 1 (got {raw!r})")
    return int(raw)


class _Input(Protocol):
    """What WSGI promises of `wsgi.input` (PEP 3333)."""

    def read(self, size: int | None = ..., /) -> bytes: ...
    def readline(self, size: int | None = ..., /) -> bytes: ...
    def readlines(self, hint: int | None = ..., /) -> list[bytes]: ...


class DeadlineInput:
    """`wsgi.input` whose every read ends by `deadline` (a `time.monotonic()` value): a read
    still waiting then raises `gevent.Timeout`, remembered in `expired`. Only reads are timed:
    the app's own work (Redis, the broker) is never interrupted."""

    def __init__(self, stream: _Input, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline
        self.expired: gevent.Timeout | None = None

    def read(self, size: int | None = None, /) -> bytes:
        return self._timed(self._stream.read, size)

    def readline(self, size: int | None = None, /) -> bytes:
        return self._timed(self._stream.readline, size)

    def readlines(self, hint: int | None = None, /) -> list[bytes]:
        return self._timed(self._stream.readlines, hint)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def _timed(self, read: Callable[[int | None], T], argument: int | None) -> T:
        # What has already arrived is taken even past the deadline: a read only fails if it
        # has to wait for the client.
        timer = gevent.Timeout(max(0.0, self._deadline - time.monotonic()))
        timer.start()
        try:
            return read(argument)
        except gevent.Timeout as exc:
            if exc is timer:
                self.expired = timer
            raise
        finally:
            timer.close()


class BodyDeadline:
    """WSGI middleware: a request's body must have arrived `seconds` after the request reached
    the app, or the answer is 408 (a SOAP fault on the Salesforce routes, JSON elsewhere).

    The expiry is a `gevent.Timeout`, a BaseException, so it passes through Flask's handlers
    (which catch Exception) to here, before any response was started."""

    def __init__(self, app: WSGIApplication, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = DeadlineInput(environ["wsgi.input"], time.monotonic() + self.seconds)
        environ["wsgi.input"] = body
        try:
            return self.app(environ, start_response)
        except gevent.Timeout as exc:
            if body.expired is None or exc is not body.expired:
                raise
            # PATH_INFO is the path alone: the webhook token travels in the query string.
            log.info(
                "%s %s: body not received within %g s; answered 408",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
                self.seconds,
            )
            return self._too_slow(environ, start_response)

    def _too_slow(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        message = f"request body not received within {self.seconds:g} s ({BODY_TIMEOUT})"
        if str(environ.get("PATH_INFO", "")).startswith("/salesforce/"):
            content, content_type = fault(message).encode(), CONTENT_TYPE
        else:
            content, content_type = json.dumps({"error": message}).encode(), "application/json"
        headers = [("Content-Type", content_type), ("Content-Length", str(len(content)))]
        start_response("408 Request Timeout", headers, sys.exc_info())
        return [content]
