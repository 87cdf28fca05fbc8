"""The audit trail: who replayed or queued what by hand, when, and with what outcome.

Every entry goes to one Redis stream (`crmhook audit`, capped) and, when it concerns one
operation, to that operation's own list beside its record (`crmhook status` shows it), kept
as long as the record. Actors are the OS user (`cli:alice`) or the admin token's name
(`admin:ops-bot`); entries carry IDs and words, never a secret.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from worker.store import keys

AUDIT_STREAM_LENGTH = 100_000


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    what: str  # replay, forced-replay, enqueue, quarantine-replay
    target: str  # an operation key, or a notification ID for the quarantine
    outcome: str
    at: float = field(default_factory=time.time)  # epoch seconds
    detail: str = ""


class Audit:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl_seconds = ttl_seconds

    def write(self, entries: list[AuditEntry]) -> None:
        """Append `entries` to the stream and to their operations' trails, in one round trip."""
        if not entries:
            return
        pipe = self._redis.pipeline(transaction=False)
        for entry in entries:
            fields: dict[Any, Any] = {name: str(value) for name, value in asdict(entry).items()}
            pipe.xadd(keys.AUDIT_STREAM, fields, maxlen=AUDIT_STREAM_LENGTH, approximate=True)
            if keys.is_operation(entry.target):
                trail = keys.audit_trail(entry.target)
                pipe.rpush(trail, json.dumps(asdict(entry)))
                pipe.expire(trail, self._ttl_seconds)
        pipe.execute()

    def recent(
        self, *, limit: int = 100, before: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The newest entries (before the stream ID `before`, exclusive), and the cursor for
        the page after them (None at the end)."""
        newest = f"({before}" if before else "+"
        rows = cast(
            "list[tuple[str, dict[str, str]]]",
            self._redis.xrevrange(keys.AUDIT_STREAM, max=newest, min="-", count=limit),
        )
        entries = []
        for stream_id, fields in rows:
            entry: dict[str, Any] = dict(fields)
            entry["at"] = float(entry["at"])
            entry["id"] = stream_id
            entries.append(entry)
        cursor = entries[-1]["id"] if len(entries) == limit else None
        return entries, cursor
