"""The Redis client every process builds: on REDIS_URL, or on whichever node the sentinels
name master (REDIS_SENTINELS), found again after a failover."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from worker.settings import Settings, redis_url_credentials

# Explicit timeouts: a dead Redis (or sentinel) fails fast instead of hanging a thread.
TIMEOUTS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "health_check_interval": 25,
}
# A sentinel that does not answer in a second is skipped for the next, at once: redis-py's
# own retries (ten by default) would make one frozen sentinel host cost each new connection,
# and each `/readyz`, fifteen seconds and more.
SENTINEL_TIMEOUTS: dict[str, Any] = {
    "socket_connect_timeout": 1,
    "socket_timeout": 1,
    "retry": Retry(NoBackoff(), 0),
}


def redis_client(url: str) -> redis.Redis:
    """A client of the Redis at `url`."""
    return redis.Redis.from_url(url, decode_responses=True, **TIMEOUTS)


def store_client(settings: Settings) -> redis.Redis:
    """The store's client: REDIS_URL's Redis, or the sentinels' current master.

    Through Sentinel, redis-py asks the sentinels for the master on every new connection, and
    drops a connection whose node answers READONLY (a master demoted by a failover). While no
    master is promoted, commands fail fast (ConnectionError, MasterNotFoundError: the edge
    answers 503, tasks retry); the first one after the promotion reaches the new master. The
    master's password and database come from REDIS_URL when it is given."""
    if not settings.redis_sentinels:
        assert settings.redis_url is not None  # Settings' validator saw to it
        return redis_client(settings.redis_url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        settings.sentinel_addresses,
        sentinel_kwargs=sentinel_kwargs(settings),
        **master_kwargs(settings),
    )
    assert settings.redis_sentinel_master is not None
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master, redis_class=redis.Redis
    )
    return master


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """How to reach the sentinels themselves (REDIS_SENTINEL_PASSWORD, short timeouts)."""
    password = settings.redis_sentinel_password
    return {
        **SENTINEL_TIMEOUTS,
        **({"password": password.get_secret_value()} if password is not None else {}),
    }


def master_kwargs(settings: Settings) -> dict[str, Any]:
    """How to talk to the master the sentinels name: REDIS_URL's credentials and database."""
    credentials = redis_url_credentials(settings.redis_url)
    return {
        "decode_responses": True,
        "db": credentials.db,
        "username": credentials.username,
        "password": credentials.password,
        **TIMEOUTS,
    }


def where(settings: Settings) -> str:
    """Where the store is, for messages: no password, ever."""
    if settings.redis_sentinels:
        return f"the master {settings.redis_sentinel_master!r} of sentinels " + ",".join(
            settings.redis_sentinels
        )
    return "REDIS_URL"


def sentinel_warnings(settings: Settings) -> list[str]:
    """What about the sentinels would stop a failover, or make one go astray: sentinels that
    do not answer (a failover needs a majority of them) or that name different masters."""
    if not settings.redis_sentinels:
        return []
    masters: set[str | None] = set()
    silent = []
    for address, (host, port) in zip(
        settings.redis_sentinels, settings.sentinel_addresses, strict=True
    ):
        sentinel = redis.Redis(host, port, decode_responses=True, **sentinel_kwargs(settings))
        try:
            found = sentinel.sentinel_get_master_addr_by_name(settings.redis_sentinel_master)
            masters.add(f"{text(found[0])}:{found[1]}" if isinstance(found, list | tuple) else None)
        except redis.RedisError as exc:
            silent.append(f"{address} ({type(exc).__name__})")
        finally:
            sentinel.close()
    warnings = []
    if silent:
        warnings.append(
            f"{len(silent)} of {len(settings.redis_sentinels)} sentinels do not answer: "
            + ", ".join(silent)
            + "; a failover needs a majority of them"
        )
    if None in masters:
        warnings.append(f"a sentinel does not know the master {settings.redis_sentinel_master!r}")
    if len(masters - {None}) > 1:
        warnings.append("the sentinels name different masters (a failover in progress?)")
    return warnings


def text(value: Any) -> str:
    """A Redis reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)
