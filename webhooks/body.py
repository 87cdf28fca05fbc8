"""Reading request bodies within the configured bound."""

from __future__ import annotations

import json
from typing import Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from webhooks.extension import edge
from worker.errors import MalformedRequest, PayloadTooLarge


def read_body() -> bytes:
    """The request body, or PayloadTooLarge past MAX_BODY_BYTES (declared or streamed)."""
    limit = edge().settings.max_body_bytes
    try:
        return request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"body larger than {limit} bytes (MAX_BODY_BYTES)") from None


def read_json() -> Any:
    """The body as a JSON document of any shape (the schemas judge the shape), or
    MalformedRequest: parsed here rather than by werkzeug, whose refusals are HTML pages, so
    that a body nested past the parser's depth is refused by name, not as a crash."""
    try:
        return json.loads(read_body())
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, an integer of 5000 digits
        raise MalformedRequest("body is not JSON") from None
    except RecursionError:
        raise MalformedRequest("body nests too deeply to be read") from None
