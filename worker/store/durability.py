"""Whether what must survive a Redis crash does, before an irreversible call leaves.

A claim and its send marker that Redis loses in a crash would let a second worker claim the
operation afresh and send again: a second e-mail to a customer. Two ways make them durable:
`appendfsync always` on the store's Redis (every write is on disk before Redis answers, so
nothing is to be done per call), or a replica that confirms the write (`WAIT`), when the
Redis has replicas. `durability_warnings` tells operators (through `/readyz` and
`crmhook check`) when neither holds.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from redis.commands.core import Script

from worker.errors import NotDurable
from worker.store.connection import text

# How long a write waits for a replica's confirmation before it counts as not durable.
WAIT_TIMEOUT_MS = 1000
# How often the number of replicas is read again (INFO replication).
REPLICAS_REFRESH_SECONDS = 30.0


class Durability:
    """Runs the writes an irreversible call depends on so that they are durable."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._lock = threading.Lock()
        self._replicas = 0
        self._read_at = float("-inf")

    def replicas(self) -> int:
        """Replicas connected to the store's Redis now (read at most every 30 s)."""
        with self._lock:
            if time.monotonic() - self._read_at >= REPLICAS_REFRESH_SECONDS:
                self._replicas = connected_replicas(self._redis)
                self._read_at = time.monotonic()
            return self._replicas

    def write(self, script: Script, *, keys: list[str], args: list[Any]) -> Any:
        """Run `script`; where replicas exist, wait until one confirms it (and everything
        this Redis received before it). Raises NotDurable when none confirms in time."""
        replicas = self.replicas()
        if not replicas:
            return script(keys=keys, args=args)
        pipe = self._redis.pipeline(transaction=False)  # WAIT counts this connection's writes
        script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", 1, WAIT_TIMEOUT_MS)  # type: ignore[no-untyped-call]
        reply, confirmed = pipe.execute()
        if reply and int(confirmed) < 1:
            raise NotDurable(
                f"no replica of the store's Redis confirmed the write within {WAIT_TIMEOUT_MS} ms"
            )
        return reply


def connected_replicas(client: redis.Redis) -> int:
    info = client.info("replication")
    return int(info.get("connected_slaves", 0)) if info.get("role") == "master" else 0


def durability_warnings(client: redis.Redis) -> list[str]:
    """What about this Redis could lose queued work or idempotency keys, or let a crash
    repeat an irreversible call.

    The store needs persistence (AOF) and no eviction: an evicted key is a forgotten claim,
    which is a second cancellation e-mail. Exactly-once across a Redis crash also needs each
    claim on disk before its call (`appendfsync always`) or on a replica (`WAIT`), and an
    acknowledged message on disk before its Ack (`appendfsync always`: the edge does not
    wait for replicas). Managed Redis may refuse CONFIG: say so, do not fail.
    """
    try:
        config = (
            client.config_get("appendonly")
            | client.config_get("appendfsync")
            | client.config_get("maxmemory-policy")
        )
    except redis.RedisError:
        return [
            "cannot read the Redis configuration (CONFIG GET refused); make sure it "
            "persists (appendonly yes, appendfsync always) and does not evict "
            "(maxmemory-policy noeviction)"
        ]
    warnings = []
    if text(config.get("appendonly", "")) != "yes":
        warnings.append(
            "Redis has appendonly=no: queued tasks and idempotency keys are lost "
            "on restart; set appendonly yes"
        )
    elif (fsync := text(config.get("appendfsync", ""))) != "always":
        if connected_replicas(client):
            warnings.append(
                f"Redis has appendfsync={fsync}: a crash can lose the last second of "
                "acknowledged Salesforce messages (claims wait for the replica, messages do "
                "not); set appendfsync always"
            )
        else:
            warnings.append(
                f"Redis has appendfsync={fsync} and no replica: a crash can lose the last "
                "second of acknowledged Salesforce messages and of claims, and a lost claim "
                "can repeat a cancel; set appendfsync always"
            )
    policy = text(config.get("maxmemory-policy", ""))
    if policy != "noeviction":
        warnings.append(f"Redis maxmemory-policy is {policy}: keys may be evicted; set noeviction")
    return warnings
