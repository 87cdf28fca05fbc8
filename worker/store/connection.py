"""The Redis client every process builds, and what about a Redis could lose our work."""

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


def durability_warnings(client: redis.Redis) -> list[str]:
    """What about this Redis could lose queued work or idempotency keys.

    The store needs persistence (AOF) and no eviction: an evicted key is a forgotten claim,
    which is a second cancellation email. Managed Redis may refuse CONFIG: say so, do not fail.
    """
    try:
        config = client.config_get("appendonly") | client.config_get("maxmemory-policy")
    except redis.RedisError:
        return [
            "cannot read the Redis configuration (CONFIG GET refused); make sure it "
            "persists (appendonly yes) and does not evict (maxmemory-policy noeviction)"
        ]
    warnings = []
    if text(config.get("appendonly", "")) != "yes":
        warnings.append(
            "Redis has appendonly=no: queued tasks and idempotency keys are lost "
            "on restart; set appendonly yes"
        )
    policy = text(config.get("maxmemory-policy", ""))
    if policy != "noeviction":
        warnings.append(f"Redis maxmemory-policy is {policy}: keys may be evicted; set noeviction")
    return warnings
