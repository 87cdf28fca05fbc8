"""Whether what must survive a Redis crash or a failover does, before it is relied upon.

Two writes are relied upon: the edge's record of an inbound message (Salesforce gets its Ack
after it, and stops retrying), and the send marker of an irreversible call (the claim is
written before it, on the same master). Lost in a crash, the first loses a cancellation for
good; the second lets a second worker claim the operation afresh and send a second e-mail.
Two ways make them durable: `appendfsync always` on the store's Redis (on disk before Redis
answers, so nothing is to be done per write), and, where the Redis has replicas, every
online replica confirming the write (`WAIT n`) before it counts. Redis replicates
asynchronously, so without WAIT a failover to a replica (Sentinel, a managed Redis) can roll
either back.

WAIT confirms everything the master received before the write, so the send marker's WAIT
covers the claim before it too: both are on the replicas before the call leaves, for one
WAIT.
`durability_warnings` tells operators (through `/readyz` and a worker metric) what is missing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script

from worker.errors import NotDurable
from worker.store.connection import text

# How long a write waits for a replica's confirmation before it counts as not durable.
WAIT_TIMEOUT_MS = 1000
# How often the number of replicas is read again (INFO replication); at once after a write
# that no replica confirmed, or that failed on its connection (a failover, perhaps).
REPLICAS_REFRESH_SECONDS = 1.0


class Durability:
    """Runs the writes that are relied upon so that they are durable."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._lock = threading.Lock()
        self._replicas = 0
        self._read_at = float("-inf")

    def replicas(self) -> int:
        """Replicas in sync with the store's Redis now (read at most every second: a replica
        that has just come online is waited for within a second)."""
        with self._lock:
            if time.monotonic() - self._read_at >= REPLICAS_REFRESH_SECONDS:
                self._replicas = connected_replicas(self._redis)
                self._read_at = time.monotonic()
            return self._replicas

    def _read_again(self) -> None:
        with self._lock:
            self._read_at = float("-inf")

    def write(self, script: Script, *, keys: list[str], args: list[Any]) -> Any:
        """Run `script`; where replicas are online and it wrote (a truthy reply), wait until
        they confirm it. NotDurable when they do not in time, or Redis refuses the write
        for want of replicas (`min-replicas-to-write`) or refuses WAIT itself."""
        if not self.replicas():  # one round trip (a script in a pipeline is checked first)
            try:
                return script(keys=keys, args=args)
            except redis.ResponseError as exc:
                raise self._refused(exc) from exc
        pipe = self._redis.pipeline(transaction=False)  # WAIT counts this connection's writes
        script(keys=keys, args=args, client=pipe)
        [reply] = self.execute(pipe, required=lambda replies: bool(replies[0]))
        return reply

    def execute(
        self, pipe: Pipeline, required: Callable[[list[Any]], bool] | None = None
    ) -> list[Any]:
        """Execute the writes queued on `pipe`, then, where replicas are online, `WAIT` for
        every one of them to confirm the writes (on the same connection, in the same round
        trip): Sentinel may promote any of them, not always the one that answered first.
        The replies of the writes; NotDurable when not all confirmed in time (or Redis
        refused the writes or the WAIT, as `write` says) and `required(replies)` (default:
        always) says the writes mattered."""
        wanted = self.replicas()
        if wanted:
            pipe.execute_command("WAIT", wanted, WAIT_TIMEOUT_MS)  # type: ignore[no-untyped-call]
        try:
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError):
            self._read_again()  # the master may have changed
            raise
        confirmed = replies.pop() if wanted else None
        for reply in replies:
            if isinstance(reply, Exception):
                raise self._refused(reply)
        if not wanted or (required is not None and not required(replies)):
            return replies
        if isinstance(confirmed, Exception):  # an ACL or a managed Redis that forbids WAIT
            raise NotDurable(f"the store's Redis refused WAIT: {confirmed}")
        if int(str(confirmed)) < wanted:
            self._read_again()
            raise NotDurable(
                f"{confirmed} of the {wanted} replicas of the store's Redis confirmed the "
                f"write within {WAIT_TIMEOUT_MS} ms"
            )
        return replies

    def _refused(self, error: Exception) -> Exception:
        """A write Redis refused for want of replicas is not durable (the caller answers
        503 or sends nothing); any other error is the caller's as it is."""
        if isinstance(error, redis.ResponseError) and str(error).startswith("NOREPLICAS"):
            self._read_again()
            return NotDurable(f"the store's Redis refused the write: {error}")
        return error


def connected_replicas(client: redis.Redis) -> int:
    """Replicas of this Redis that are online (a replica still loading its first copy
    would confirm nothing), or 0 when it is not a master."""
    info = client.info("replication")
    if info.get("role") != "master":
        return 0
    count = int(info.get("connected_slaves", 0))
    return sum(
        1
        for index in range(count)
        if isinstance(replica := info.get(f"slave{index}"), dict)
        and replica.get("state") == "online"
    )


def durability_warnings(client: redis.Redis) -> list[str]:
    """What about this Redis could lose queued work or idempotency keys, or let a crash
    repeat an irreversible call.

    The store needs persistence (AOF) and no eviction: an evicted key is a forgotten claim,
    which is a second cancellation e-mail. Exactly-once across a Redis crash also needs each
    claim and each acknowledged message on disk (`appendfsync always`) or on a replica
    (`WAIT`); a replica alone does not cover a master that restarts from its own disk before
    a failover (the replica then copies the master's older data). A replicated Redis also
    needs `min-replicas-to-write`: a master cut off from its replicas writes unconfirmed once
    it has dropped them. Managed Redis may refuse CONFIG: say so, do not fail.
    """
    pipe = client.pipeline(transaction=False)  # one round trip (Redis 6 takes one name each)
    for name in ("appendonly", "appendfsync", "maxmemory-policy", "min-replicas-to-write"):
        pipe.config_get(name)
    try:
        config = {name: value for part in pipe.execute() for name, value in part.items()}
    except redis.RedisError:
        return [
            "cannot read the Redis configuration (CONFIG GET refused); make sure it "
            "persists (appendonly yes, appendfsync always) and does not evict "
            "(maxmemory-policy noeviction)"
        ]
    replicas = connected_replicas(client)
    warnings = []
    if text(config.get("appendonly", "")) != "yes":
        warnings.append(
            "Redis has appendonly=no: queued tasks and idempotency keys are lost "
            "on restart; set appendonly yes"
        )
    elif (fsync := text(config.get("appendfsync", ""))) != "always":
        if replicas:
            warnings.append(
                f"Redis has appendfsync={fsync}: a master that crashes and restarts before "
                "a failover can lose the last second of acknowledged Salesforce messages and "
                "claims (its replica then copies them away too); set appendfsync always"
            )
        else:
            warnings.append(
                f"Redis has appendfsync={fsync} and no replica: a crash can lose the last "
                "second of acknowledged Salesforce messages and of claims, and a lost claim "
                "can repeat a cancel; set appendfsync always"
            )
    if replicas and text(config.get("min-replicas-to-write", "0")) == "0":
        warnings.append(
            "Redis has replicas and min-replicas-to-write 0: a master cut off from them (a "
            "network split) keeps taking writes, without waiting once it has dropped them, "
            "and a failover discards them, a send marker among them; set "
            "min-replicas-to-write 1 and min-replicas-max-lag 10"
        )
    policy = text(config.get("maxmemory-policy", ""))
    if policy != "noeviction":
        warnings.append(f"Redis maxmemory-policy is {policy}: keys may be evicted; set noeviction")
    return warnings
