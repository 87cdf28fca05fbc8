"""Reading request bodies within the configured bound."""

from __future__ import annotations

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from webhooks.app import edge
from worker.errors import PayloadTooLarge


def read_body() -> bytes:
    """The request body, or PayloadTooLarge past MAX_BODY_BYTES (declared or streamed)."""
    limit = edge().settings.max_body_bytes
    try:
        return request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"body larger than {limit} bytes (MAX_BODY_BYTES)") from None
