"""The idempotency store: one Redis hash per operation, claimed and settled by Lua scripts.

The queue is at-least-once; this is what makes the effect exactly-once. A worker claims an
operation atomically (state, owner, fencing token, lease expiry) and records the outcome only
while its token is still the current one, so a worker that lost its lease cannot overwrite
the work of the one that took over.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import redis

from worker.domain.notifications import Rejection
from worker.domain.operations import KEY_PREFIX, Action, Operation
from worker.store.audit import operation_audit_key

QUARANTINE_KEY = f"{KEY_PREFIX}:quarantine"
DEAD_LETTERS_KEY = f"{KEY_PREFIX}:dead"
SCHEDULE_KEY = f"{KEY_PREFIX}:scheduled"
# Operations not yet settled, scored by when they were last handed to the broker. The broker
# can lose a message (kombu's Redis transport pops it before recording it as unacknowledged,
# so a Redis restart in between leaves it only in a worker's memory); this index cannot.
PENDING_KEY = f"{KEY_PREFIX}:pending"
UNSETTLED = frozenset({"queued", "running", "retrying", "in_doubt"})


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    IN_DOUBT = "in_doubt"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# KEYS: record. ARGV: owner, lease ms, ttl s, action, event id, source.
# Returns {verdict, previous state, token, attempts, created_at ms}; verdict is
# claimed | done (succeeded) | busy (live claim elsewhere) | failed (this source already failed).
_CLAIM = """
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', key, 'state') or 'new'
local function answer(verdict)
  -- A replay starts the age limit afresh: it counts from the replay, not the first queueing.
  local since = redis.call('HGET', key, 'replayed_at') or redis.call('HGET', key, 'created_at')
  return {verdict, state, redis.call('HGET', key, 'token') or '0',
          redis.call('HGET', key, 'attempts') or '0', since or '0'}
end
if state == 'succeeded' then return answer('done') end
if state == 'failed' and redis.call('HGET', key, 'last_source') == ARGV[6] then
  return answer('failed')
end
if state == 'running' then
  local lease = tonumber(redis.call('HGET', key, 'lease_until') or '0')
  if lease > now and redis.call('HGET', key, 'owner') ~= ARGV[1] then return answer('busy') end
end
redis.call('HINCRBY', key, 'token', 1)
redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSETNX', key, 'created_at', now)
redis.call('HSET', key, 'state', 'running', 'owner', ARGV[1],
           'lease_until', now + tonumber(ARGV[2]), 'updated_at', now, 'action', ARGV[4],
           'crm_event_id', ARGV[5], 'previous_state', state, 'last_source', ARGV[6])
redis.call('EXPIRE', key, tonumber(ARGV[3]))
return answer('claimed')
"""

# KEYS: record. ARGV: token, lease ms. Extends the lease if the token is still current.
_RENEW = """
local key = KEYS[1]
if redis.call('HGET', key, 'token') ~= ARGV[1] or redis.call('HGET', key, 'state') ~= 'running' then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', key, 'lease_until', now + tonumber(ARGV[2]))
return 1
"""

# KEYS: record. ARGV: token. Undo a claim whose call was never sent (deferred by the shared
# limits): back to the state before it, and the attempt not counted.
_RELEASE = """
local key = KEYS[1]
if redis.call('HGET', key, 'token') ~= ARGV[1] or redis.call('HGET', key, 'state') ~= 'running' then
  return 0
end
local previous = redis.call('HGET', key, 'previous_state') or 'queued'
if previous == 'new' then previous = 'queued' end
redis.call('HSET', key, 'state', previous)
redis.call('HINCRBY', key, 'attempts', -1)
redis.call('HDEL', key, 'lease_until')
return 1
"""

# KEYS: record. ARGV: force ('1' | '0'), actor, state for a reopened dead letter. An operator's
# replay: a failed operation (or, forced, a succeeded one, which goes back to queued) is
# reopened with a fresh attempt budget; anything else is left as it is.
# Returns {previous state ('missing' when there is no record), attempts}.
_REOPEN = """
local key = KEYS[1]
local state = redis.call('HGET', key, 'state')
if not state then return {'missing', '0'} end
local attempts = redis.call('HGET', key, 'attempts') or '0'
if state == 'failed' or (state == 'succeeded' and ARGV[1] == '1') then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local after = ARGV[3]
  if state == 'succeeded' then
    after = 'queued'
    redis.call('HSET', key, 'forced', ARGV[2])
  end
  redis.call('HSET', key, 'state', after, 'attempts', 0, 'updated_at', now,
             'replayed_at', now, 'replayed_by', ARGV[2])
end
return {state, attempts}
"""

# KEYS: schedule. ARGV: now s, lease s, limit. Due entries are pushed `lease` into the
# future (so a dispatcher that dies re-dispatches them later) and returned.
_TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), member)
end
return due
"""

# KEYS: record. ARGV: token, new state, ttl s, last error, result JSON ('' = keep).
# Returns 1 when recorded, 0 when the caller no longer owns the claim.
_SETTLE = """
local key = KEYS[1]
if redis.call('HGET', key, 'token') ~= ARGV[1] or redis.call('HGET', key, 'state') ~= 'running' then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', key, 'state', ARGV[2], 'updated_at', now, 'last_error', ARGV[4])
redis.call('HDEL', key, 'lease_until')
if ARGV[5] ~= '' then redis.call('HSET', key, 'result', ARGV[5]) end
if ARGV[2] == 'succeeded' then redis.call('HSET', key, 'succeeded_at', now) end
redis.call('EXPIRE', key, tonumber(ARGV[3]))
return 1
"""


class Verdict(StrEnum):
    CLAIMED = "claimed"
    DONE = "done"
    BUSY = "busy"
    FAILED = "failed"


@dataclass(frozen=True)
class Claim:
    verdict: Verdict
    previous_state: str
    token: str
    attempts: int = 0
    created_at_ms: int = 0

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.created_at_ms / 1000)

    @property
    def after_interruption(self) -> bool:
        """The last holder started the call and never settled it: it may have taken effect."""
        return self.previous_state in (State.RUNNING, State.IN_DOUBT)


@dataclass(frozen=True)
class Retention:
    action_seconds: int
    get_seconds: int
    notification_seconds: int
    quarantine_seconds: int

    def for_operation(self, operation: Operation) -> int:
        return self.action_seconds if operation.action.irreversible else self.get_seconds


class Store:
    """Operation records, notification markers and the quarantine, in one Redis."""

    def __init__(self, client: redis.Redis, retention: Retention) -> None:
        self._redis = client
        self._retention = retention
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._settle = client.register_script(_SETTLE)
        self._take_due = client.register_script(_TAKE_DUE)
        self._reopen = client.register_script(_REOPEN)

    # --- the edge dedupe, run by the fan-out task -------------------------------------------

    def first_sightings(self, operations: Iterable[Operation], ingest_id: str) -> list[Operation]:
        """The operations whose notification this ingest is the first to queue.

        Each notification gets a marker naming the ingest that queues it. A marker naming
        *this* ingest means we are its redelivery after a crash mid-fan-out, so the
        operation is queued again (over-enqueue is safe, the claim guards; under-enqueue
        would lose it). One pipelined round trip for the whole batch.
        """
        operations = list(operations)
        pipe = self._redis.pipeline(transaction=False)
        for operation in operations:
            marker = self._marker(operation)
            pipe.set(marker, ingest_id, nx=True, ex=self._retention.notification_seconds)
            pipe.get(marker)
        replies = pipe.execute()
        fresh = []
        for index, operation in enumerate(operations):
            created, holder = replies[2 * index], replies[2 * index + 1]
            if created or holder == ingest_id:
                fresh.append(operation)
        return fresh

    def mark_queued(self, operations: Iterable[Operation]) -> None:
        """Create (or touch) each operation's record as queued and remember its source."""
        pipe = self._redis.pipeline(transaction=False)
        now = _now_ms()
        for operation in operations:
            ttl = self._retention.for_operation(operation)
            pipe.hsetnx(operation.key, "state", State.QUEUED)
            pipe.hsetnx(operation.key, "created_at", now)
            pipe.hsetnx(operation.key, "source_id", operation.source_id)
            pipe.zadd(PENDING_KEY, {operation.key: now / 1000})
            pipe.hset(
                operation.key,
                mapping={"action": operation.action.value, "crm_event_id": operation.crm_event_id},
            )
            pipe.expire(operation.key, ttl)
            pipe.sadd(operation.sources_key, operation.source_id)
            pipe.expire(operation.sources_key, ttl)
        pipe.execute()

    def pending_count(self) -> int:
        return int(self._redis.zcard(PENDING_KEY))

    def _marker(self, operation: Operation) -> str:
        # Per operation, not per notification: one API request may carry many events.
        return (
            f"{KEY_PREFIX}:seen:{{{operation.source_id}}}:"
            f"{operation.action}:{operation.crm_event_id}"
        )

    # --- claims -----------------------------------------------------------------------------

    def claim(self, operation: Operation, owner: str, lease_seconds: float) -> Claim:
        """Take the operation for `owner` unless it succeeded, is held by a live claim, or
        failed already for this same source (a redelivery of what failed stays failed; a new
        notification or a replay tries again)."""
        verdict, previous, token, attempts, created_at = self._claim(
            keys=[operation.key],
            args=[
                owner,
                int(lease_seconds * 1000),
                self._retention.for_operation(operation),
                operation.action.value,
                operation.crm_event_id,
                operation.source_id,
            ],
        )
        return Claim(
            Verdict(_text(verdict)),
            _text(previous),
            _text(token),
            int(_text(attempts)),
            int(_text(created_at)),
        )

    def renew(self, operation: Operation, claim: Claim, lease_seconds: float) -> bool:
        """Extend the lease; False if the claim was lost (then do not call anything)."""
        renewed = self._renew(keys=[operation.key], args=[claim.token, int(lease_seconds * 1000)])
        return bool(renewed)

    def release(self, operation: Operation, claim: Claim) -> bool:
        """Give the claim back as if it had not been taken (the call was never sent)."""
        return bool(self._release(keys=[operation.key], args=[claim.token]))

    def settle(
        self,
        operation: Operation,
        claim: Claim,
        state: State,
        *,
        error: str = "",
        result: Any = None,
    ) -> bool:
        """Record the outcome if `claim` is still the current one; False means it was lost."""
        recorded = bool(
            self._settle(
                keys=[operation.key],
                args=[
                    claim.token,
                    state.value,
                    self._retention.for_operation(operation),
                    error[:2000],
                    "" if result is None else json.dumps(result),
                ],
            )
        )
        # The dead-letter index lives outside the operation's hash slot (Redis Cluster), so it
        # is kept beside the record rather than inside the script; it can be rebuilt by a scan.
        if recorded and state in (State.FAILED, State.SUCCEEDED):
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrem(PENDING_KEY, operation.key)
            if state is State.FAILED:
                pipe.zadd(DEAD_LETTERS_KEY, {operation.key: time.time()})
            else:
                pipe.zrem(DEAD_LETTERS_KEY, operation.key)
            pipe.execute()
        return recorded

    def dead_letters(self, limit: int = 100) -> list[str]:
        """Keys of failed operations, newest first."""
        return [_text(key) for key in self._redis.zrevrange(DEAD_LETTERS_KEY, 0, limit - 1)]

    def dead_letters_since(
        self, since: float | None = None, action: Action | None = None
    ) -> list[tuple[str, float]]:
        """(key, failed at) of every dead letter, newest first, failed at or after `since`
        (epoch seconds) and of `action` when given. Keys only: a page's records are read
        with `records`."""
        rows = cast(
            "list[tuple[str, float]]",
            self._redis.zrevrangebyscore(
                DEAD_LETTERS_KEY, "+inf", "-inf" if since is None else since, withscores=True
            ),
        )
        marker = f"{KEY_PREFIX}:op:{{{action}:" if action is not None else None
        return [
            (_text(key), float(score))
            for key, score in rows
            if marker is None or _text(key).startswith(marker)
        ]

    def reopen(self, operation: Operation, *, force: bool, actor: str) -> tuple[str, int]:
        """Reopen a failed operation (or, with `force`, a succeeded one) for a replay; any
        other is left as it is. Returns the state it was in and its attempts (`missing`
        when nothing is recorded). The caller enqueues it when it was reopened.

        A dead `cancel`/`noshow` is reopened *in doubt*: its last attempt may have reached
        ChiliPiper unanswered, so the replay asks `crm-get` before calling again. A forced
        replay is queued as is: the operator asked for the call.
        """
        dead_state = State.IN_DOUBT if operation.action.irreversible else State.QUEUED
        previous, attempts = self._reopen(
            keys=[operation.key], args=["1" if force else "0", actor, dead_state.value]
        )
        previous = _text(previous)
        if previous == State.FAILED or (previous == State.SUCCEEDED and force):
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrem(DEAD_LETTERS_KEY, operation.key)
            pipe.zadd(PENDING_KEY, {operation.key: time.time()})
            pipe.execute()
        return previous, int(_text(attempts))

    def requeued(self, operations: Iterable[Operation]) -> None:
        """Stamp unsettled operations as just handed to the broker (the lost-message
        sweeper counts from here)."""
        stamps = {operation.key: time.time() for operation in operations}
        if stamps:
            self._redis.zadd(PENDING_KEY, stamps)

    # --- long retries, kept in Redis by due time ----------------------------------------------

    def schedule(self, operation: Operation, due: float) -> None:
        """Run `operation` again at `due` (epoch seconds). Each entry is unique, so a
        dispatcher removing an entry it dispatched never removes a newer one."""
        member = json.dumps({"operation": operation.to_message(), "nonce": uuid.uuid4().hex})
        self._redis.zadd(SCHEDULE_KEY, {member: due})

    def take_due(self, lease_seconds: float, limit: int = 100) -> list[tuple[str, Operation]]:
        """Entries due now, leased for `lease_seconds`; `done(entry)` once re-enqueued."""
        members = self._take_due(keys=[SCHEDULE_KEY], args=[time.time(), lease_seconds, limit])
        taken = []
        for member in members:
            entry = _text(member)
            taken.append((entry, Operation.from_message(json.loads(entry)["operation"])))
        return taken

    def stale(self, older_than: float, limit: int = 100) -> list[Operation]:
        """Unsettled operations last enqueued more than `older_than` seconds ago: their
        message may be lost. Settled ones found on the way are dropped from the index; the
        returned ones are stamped as enqueued now (the caller re-enqueues them)."""
        now = time.time()
        keys = self._redis.zrangebyscore(PENDING_KEY, "-inf", now - older_than, 0, limit)
        found = []
        for key in (_text(k) for k in keys):
            state, action, event, source = self._redis.hmget(
                key, ["state", "action", "crm_event_id", "source_id"]
            )
            if _text(state) not in UNSETTLED or not (action and event and source):
                self._redis.zrem(PENDING_KEY, key)
                continue
            self._redis.zadd(PENDING_KEY, {key: now})
            found.append(Operation(Action(_text(action)), _text(event), _text(source)))
        return found

    def done(self, entry: str) -> None:
        self._redis.zrem(SCHEDULE_KEY, entry)

    def scheduled_count(self) -> int:
        return int(self._redis.zcard(SCHEDULE_KEY))

    # --- reading ----------------------------------------------------------------------------

    def record(self, key: str) -> dict[str, Any] | None:
        """The stored record of one operation key, decoded, or None."""
        return self.records([key])[0]

    def records(self, keys: list[str]) -> list[dict[str, Any] | None]:
        """The records of `keys` (None where there is none), with their sources and audit
        trail, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
            pipe.smembers(f"{key}:sources")
            pipe.lrange(operation_audit_key(key), 0, -1)
        replies = pipe.execute()
        found: list[dict[str, Any] | None] = []
        for index, key in enumerate(keys):
            fields, sources, audit = replies[3 * index : 3 * index + 3]
            if not fields:
                found.append(None)
                continue
            record: dict[str, Any] = {_text(k): _text(v) for k, v in fields.items()}
            record["key"] = key
            record["sources"] = sorted(_text(s) for s in sources)
            record["audit"] = [json.loads(_text(entry)) for entry in audit]
            if "result" in record:
                record["result"] = json.loads(record["result"])
            found.append(record)
        return found

    def records_for_event(self, crm_event_id: str) -> list[dict[str, Any]]:
        """Every operation record of one canonical event ID (all actions)."""
        keys = [
            _text(key)
            for action in Action
            for key in self._redis.scan_iter(
                match=f"{KEY_PREFIX}:op:{{{action}:{crm_event_id}*}}", count=500
            )
        ]
        found = [record for record in self.records(keys) if record is not None]
        return sorted(found, key=lambda record: record.get("created_at", ""))

    # --- quarantine -------------------------------------------------------------------------

    def quarantine(
        self, action: Action, organization_id: str, rejections: Iterable[Rejection], *, at: float
    ) -> None:
        """Keep rejected notifications (redacted) for operators, bounded in time.

        Entries are their own members, scored by `at` (when the edge received them), so
        storing the same rejection twice keeps one entry.
        """
        rejections = list(rejections)
        if not rejections:
            return
        pipe = self._redis.pipeline(transaction=False)
        for rejection in rejections:
            entry = {
                "action": action.value,
                "organization_id": organization_id,
                "received_at": at,
                **rejection.to_message(),
            }
            pipe.zadd(QUARANTINE_KEY, {json.dumps(entry, sort_keys=True): at})
        pipe.zremrangebyscore(QUARANTINE_KEY, 0, time.time() - self._retention.quarantine_seconds)
        pipe.execute()

    def quarantined(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Quarantined notifications, newest first; each keeps its stored form under
        `entry` (what `unquarantine` takes)."""
        members = self._redis.zrevrange(QUARANTINE_KEY, offset, offset + limit - 1)
        return [{**json.loads(_text(member)), "entry": _text(member)} for member in members]

    def quarantine_count(self) -> int:
        return int(self._redis.zcard(QUARANTINE_KEY))

    def unquarantine(self, entries: Iterable[str]) -> None:
        """Take replayed notifications out of the quarantine."""
        entries = list(entries)
        if entries:
            self._redis.zrem(QUARANTINE_KEY, *entries)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)


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
    if _text(config.get("appendonly", "")) != "yes":
        warnings.append(
            "Redis has appendonly=no: queued tasks and idempotency keys are lost "
            "on restart; set appendonly yes"
        )
    policy = _text(config.get("maxmemory-policy", ""))
    if policy != "noeviction":
        warnings.append(f"Redis maxmemory-policy is {policy}: keys may be evicted; set noeviction")
    return warnings
