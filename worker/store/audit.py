"""The audit trail: who replayed or queued what by hand, when, and with what outcome.

Every entry goes to one Redis stream (`crmhook audit`, capped) and, when it concerns one
operation, to that operation's own list beside its record (`crmhook status` shows it), kept
as long as the record. Actors are the OS user (`cli:alice`) or the admin token's name
(`admin:ops-bot`); entries carry IDs and words, never a secret.
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from worker.domain.operations import KEY_PREFIX

AUDIT_STREAM = f"{KEY_PREFIX}:audit"
AUDIT_STREAM_LENGTH = 100_000


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    what: str  # replay, forced-replay, enqueue, quarantine-replay
    target: str  # an operation key, or a notification ID for the quarantine
    outcome: str
    at: float = field(default_factory=time.time)
    detail: str = ""


def cli_actor() -> str:
    """The OS user running `crmhook`: whoever replays from a shell is named in the trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers with arbitrary UIDs)
        return "cli:unknown"


def operation_audit_key(operation_key: str) -> str:
    # Same hash tag as the record: one slot on Redis Cluster.
    return f"{operation_key}:audit"


def write(client: redis.Redis, entries: list[AuditEntry], *, ttl_seconds: int) -> None:
    """Append `entries` to the stream and to their operations' trails, in one round trip."""
    if not entries:
        return
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        fields: dict[Any, Any] = {name: str(value) for name, value in asdict(entry).items()}
        pipe.xadd(AUDIT_STREAM, fields, maxlen=AUDIT_STREAM_LENGTH, approximate=True)
        if entry.target.startswith(f"{KEY_PREFIX}:op:"):
            trail = operation_audit_key(entry.target)
            pipe.rpush(trail, json.dumps(asdict(entry)))
            pipe.expire(trail, ttl_seconds)
    pipe.execute()


def trail(client: redis.Redis, operation_key: str) -> list[dict[str, Any]]:
    """One operation's audit entries, oldest first."""
    return [json.loads(raw) for raw in client.lrange(operation_audit_key(operation_key), 0, -1)]


def recent(
    client: redis.Redis, *, limit: int = 100, before: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """The newest entries (before the stream ID `before`, exclusive), and the cursor for
    the page after them (None at the end)."""
    newest = f"({before}" if before else "+"
    rows = cast(
        "list[tuple[str, dict[str, str]]]",
        client.xrevrange(AUDIT_STREAM, max=newest, min="-", count=limit),
    )
    entries = []
    for stream_id, fields in rows:
        entry: dict[str, Any] = dict(fields)
        entry["at"] = float(entry["at"])
        entry["id"] = stream_id
        entries.append(entry)
    cursor = entries[-1]["id"] if len(entries) == limit else None
    return entries, cursor
