"""Rejected notifications, kept (redacted) for operators and replayable after a fix."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import redis

from worker.domain.notifications import Rejection
from worker.domain.operations import Action
from worker.store import keys
from worker.store.connection import text


class Quarantine:
    def __init__(self, client: redis.Redis, retention_seconds: int) -> None:
        self._redis = client
        self._retention_seconds = retention_seconds

    def add(
        self, action: Action, organization_id: str, rejections: Iterable[Rejection], *, at: float
    ) -> None:
        """Keep `rejections`, bounded in time. Entries are their own members, scored by `at`
        (when the edge received them), so storing the same rejection twice keeps one."""
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
            pipe.zadd(keys.QUARANTINE, {json.dumps(entry, sort_keys=True): at})
        pipe.zremrangebyscore(keys.QUARANTINE, 0, time.time() - self._retention_seconds)
        pipe.execute()

    def list(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Quarantined notifications, newest first; each keeps its stored form under
        `entry` (what `release` takes)."""
        members = self._redis.zrevrange(keys.QUARANTINE, offset, offset + limit - 1)
        return [{**json.loads(text(member)), "entry": text(member)} for member in members]

    def count(self) -> int:
        return int(self._redis.zcard(keys.QUARANTINE))

    def release(self, entries: Iterable[str]) -> None:
        """Take replayed notifications out of the quarantine."""
        entries = list(entries)
        if entries:
            self._redis.zrem(keys.QUARANTINE, *entries)
