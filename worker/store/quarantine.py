"""Rejected notifications, kept (redacted) for operators and replayable after a fix.

Bounded twice, so that a flood of bad notifications cannot grow Redis without limit: in
time (`QUARANTINE_TTL_SECONDS`: older entries are trimmed on each write and never listed)
and in number (`MAX_ENTRIES`: the oldest are dropped first, with a warning).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, cast

import redis

from worker.domain.notifications import Rejection
from worker.domain.operations import Action
from worker.store import keys, paging
from worker.store.connection import text

log = logging.getLogger(__name__)

# At most about 1.1 KB each (`domain.notifications` bounds what a rejection keeps, as stored):
# some 20 MiB at most, two hundred full messages of rejections.
MAX_ENTRIES = 20_000
Page = list[dict[str, Any]]  # decoded entries, each with its stored form under `entry`


class Quarantine:
    def __init__(
        self, client: redis.Redis, retention_seconds: int, *, max_entries: int = MAX_ENTRIES
    ) -> None:
        self._redis = client
        self._retention_seconds = retention_seconds
        self._max_entries = max_entries

    def add(
        self, action: Action, organization_id: str, rejections: Iterable[Rejection], *, at: float
    ) -> None:
        """Keep `rejections`, bounded in time and number. Entries are their own members,
        scored by `at` (when the edge received them), so storing the same rejection twice
        keeps one."""
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
            pipe.zadd(keys.QUARANTINE, {json.dumps(entry, sort_keys=True, ensure_ascii=False): at})
        pipe.zremrangebyscore(keys.QUARANTINE, "-inf", f"({self._horizon()}")
        pipe.zremrangebyrank(keys.QUARANTINE, 0, -self._max_entries - 1)
        dropped = int(pipe.execute()[-1])
        if dropped:
            log.warning(
                "quarantine full (%d entries): dropped the %d oldest; see `crmhook quarantine`",
                self._max_entries,
                dropped,
            )

    def list(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Quarantined notifications, newest first, read a page at a time in Redis; each
        keeps its stored form under `entry` (what `release` takes)."""
        members = cast(
            "list[bytes | str]",
            self._redis.zrevrangebyscore(
                keys.QUARANTINE, "+inf", self._horizon(), start=offset, num=limit
            ),
        )
        return [_decode(text(member)) for member in members]

    def count(self) -> int:
        """How many `list` pages through (those past their retention are not counted)."""
        return int(self._redis.zcount(keys.QUARANTINE, self._horizon(), "+inf"))

    def walk(self, *, page: int = paging.PAGE) -> Iterator[Page]:
        """Every entry `list` would show, a page at a time, correct while the caller
        releases some and leaves others (see `paging`)."""
        for rows in paging.newest_first(
            self._redis, keys.QUARANTINE, since=self._horizon(), page=page
        ):
            yield [_decode(member) for member, _ in rows]

    def release(self, entries: Iterable[str]) -> None:
        """Take replayed notifications out of the quarantine."""
        entries = list(entries)
        if entries:
            self._redis.zrem(keys.QUARANTINE, *entries)

    def _horizon(self) -> float:
        """Entries received before this (epoch seconds) are past their retention."""
        return time.time() - self._retention_seconds


def _decode(member: str) -> dict[str, Any]:
    return {**json.loads(member), "entry": member}
