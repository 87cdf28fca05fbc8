"""Every Redis key the service writes, built here and nowhere else.

Keys of one operation (its record, sources and audit trail) share a Redis Cluster hash tag,
the braces around the operation's identity, so one Lua script may touch them all. Indexes
across operations (pending, dead letters, the schedule, per event) live in their own slots
and are kept beside the records, never inside a script.

    crmhook:op:{cancel:00U…EAV}             operation record (hash)
    crmhook:op:{cancel:00U…EAV}:sources     notification IDs that asked for it (set)
    crmhook:op:{cancel:00U…EAV}:audit       what operators did to it (list)
    crmhook:event:{00U…EAV}                 keys of every operation of one event (set)
    crmhook:seen:{04l…}:cancel:00U…EAV      a notification already queued (string)
    crmhook:idempotency:{sha256}            an `Idempotency-Key`: claim, then answer (string)
    crmhook:{chilipiper}:limiter|paused_until|breaker[:window]   shared by every worker
    crmhook:pending  crmhook:dead  crmhook:scheduled  crmhook:quarantine   (sorted sets)
    crmhook:ingests                         ingest IDs by when last published (sorted set)
    crmhook:dead:cancel|noshow|get          dead letters of one action (sorted set)
    crmhook:audit                           the audit stream
    crmhook:migrations                      one-off migrations already applied (hash)
"""

from __future__ import annotations

import hashlib

from worker.domain.operations import Action, Operation

PREFIX = "crmhook"
_OPERATION = f"{PREFIX}:op:"

PENDING = f"{PREFIX}:pending"
DEAD_LETTERS = f"{PREFIX}:dead"
SCHEDULE = f"{PREFIX}:scheduled"
QUARANTINE = f"{PREFIX}:quarantine"
INGESTS = f"{PREFIX}:ingests"
AUDIT_STREAM = f"{PREFIX}:audit"
MIGRATIONS = f"{PREFIX}:migrations"

GATE_LIMITER = f"{PREFIX}:{{chilipiper}}:limiter"
GATE_PAUSE = f"{PREFIX}:{{chilipiper}}:paused_until"
# The safety valves for irreversible calls (README, "Operating it"): an operator's pause of
# every one of them, the guard's sliding minute of those sent, and the operations an
# operator released past the guard; with the gate's keys, so that one script checks them.
GATE_IRREVERSIBLE_PAUSE = f"{PREFIX}:{{chilipiper}}:irreversible_paused"
GATE_GUARD_SENT = f"{PREFIX}:{{chilipiper}}:guard_sent"
GATE_GUARD_RELEASED = f"{PREFIX}:{{chilipiper}}:guard_released"
# Operations the valves held back, waiting for an operator: operation identity -> JSON. With
# the gate's keys too: the gate holds again any copy of an operation held here.
HELD = f"{PREFIX}:{{chilipiper}}:held"
GATE_BREAKER = f"{PREFIX}:{{chilipiper}}:breaker"
GATE_BREAKER_WINDOW = f"{PREFIX}:{{chilipiper}}:breaker:window"

# SCAN pattern of operation records alone (not their `:sources` or `:audit` companions).
OPERATION_PATTERN = f"{_OPERATION}{{*}}"


def operation(op: Operation) -> str:
    """The record of one operation; the braces are its hash tag."""
    return f"{_OPERATION}{{{op.identity}}}"


def is_operation(key: str) -> bool:
    """Whether `key` is meant as an operation key (what operators paste from listings)."""
    return key.startswith(_OPERATION)


def action_of(key: str) -> Action | None:
    """The action of an operation record's key, or None when `key` is not one."""
    if not (is_operation(key) and key.endswith("}")):
        return None
    try:
        return Action(key[len(_OPERATION) + 1 :].split(":", 1)[0])
    except ValueError:
        return None


def dead_letters_of(action: Action) -> str:
    """Dead letters of one action, kept beside `DEAD_LETTERS`, so that a listing filtered by
    action pages inside Redis instead of filtering the whole index in Python."""
    return f"{DEAD_LETTERS}:{action.value}"


def sources(record: str) -> str:
    return f"{record}:sources"


def audit_trail(record: str) -> str:
    return f"{record}:audit"


def event_index(crm_event_id: str) -> str:
    """Keys of every operation of one canonical event ID, so `status` and replays by event
    ID read one set instead of scanning the keyspace (a SCAN on Cluster sees one node)."""
    return f"{PREFIX}:event:{{{crm_event_id}}}"


def seen(op: Operation) -> str:
    """Marks a notification as queued, per operation: one API request may carry many events."""
    return f"{PREFIX}:seen:{{{op.source_id}}}:{op.action}:{op.crm_event_id}"


def idempotency(scoped_key: str) -> str:
    """The record of an API caller's `Idempotency-Key`, named by the key within its caller's
    scope (`store.idempotency.source_id`), hashed: a fixed length whatever the caller sent."""
    return f"{PREFIX}:idempotency:{{{hashlib.sha256(scoped_key.encode()).hexdigest()}}}"


def ingest(ingest_id: str) -> str:
    """One inbound message's batch, kept until its fan-out has queued it (`store.ingests`)."""
    return f"{PREFIX}:ingest:{{{ingest_id}}}"
