"""The Redis client every process builds."""

from __future__ import annotations

from typing import Any

import redis


def redis_client(url: str) -> redis.Redis:
    """A Redis client with explicit timeouts: a dead Redis fails fast instead of hanging."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=25,
        decode_responses=True,
    )


def text(value: Any) -> str:
    """A Redis reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)
