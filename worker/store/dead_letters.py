"""The index of dead letters: failed operations, scored by when they failed.

One index of every dead letter and one per action beside it, written and removed together,
so that listings, filtered or not, page and count inside Redis. They live outside the
operations' hash slots (Redis Cluster), so they are kept beside the records rather than
inside their scripts.

A record expires after its retention while its key may stay indexed, so the indexes are
trimmed twice: on each write, of entries older than the longest retention; and by readers,
who `forget` the entries they meet whose record is gone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import cast

import redis

from worker.domain.operations import Action
from worker.store import keys, paging
from worker.store.connection import text

# KEYS: one index. ARGV: member, score, member, score, … Removes each member still scored as
# its reader saw it: one that failed again meanwhile (a new score) is a new dead letter.
_FORGET = """
local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""

Entry = tuple[str, float]  # (operation key, failed at in epoch seconds)


class DeadLetters:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._forget = client.register_script(_FORGET)

    # --- writing, beside the records ------------------------------------------------------

    def add(self, pipe: redis.client.Pipeline, key: str, *, keep_seconds: int) -> None:
        """Index `key` as failed now, and drop entries older than `keep_seconds` (the longest
        retention: their records are gone)."""
        now = time.time()
        for index in _indexes(key):
            pipe.zadd(index, {key: now})
            pipe.zremrangebyscore(index, "-inf", f"({now - keep_seconds}")

    def remove(self, pipe: redis.client.Pipeline, key: str) -> None:
        for index in _indexes(key):
            pipe.zrem(index, key)

    def forget(self, entries: Sequence[Entry]) -> int:
        """Take out of the indexes entries whose record has expired, unless failed again
        since they were read. Returns how many left the index of every action."""
        by_index: dict[str, list[str | float]] = {}
        for key, failed_at in entries:
            for index in _indexes(key):
                by_index.setdefault(index, []).extend((key, failed_at))
        if not by_index:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for index, args in by_index.items():
            self._forget(keys=[index], args=args, client=pipe)
        return int(pipe.execute()[0])  # every entry is in the index of all, the first one

    # --- reading --------------------------------------------------------------------------

    def page(
        self,
        since: float | None = None,
        action: Action | None = None,
        *,
        offset: int = 0,
        limit: int = 100,
    ) -> list[Entry]:
        """One page of (key, failed at), newest first, failed at or after `since` (epoch
        seconds) and of `action` when given, read in Redis. Keys only: the records are read
        with `Records.read_many`."""
        rows = cast(
            "list[tuple[bytes | str, float]]",
            self._redis.zrevrangebyscore(
                _index(action), "+inf", _floor(since), start=offset, num=limit, withscores=True
            ),
        )
        return [(text(key), float(score)) for key, score in rows]

    def count(self, since: float | None = None, action: Action | None = None) -> int:
        """How many entries `page` would walk through, expired records not yet met included."""
        if since is None:
            return int(self._redis.zcard(_index(action)))
        return int(self._redis.zcount(_index(action), since, "+inf"))

    def walk(
        self, since: float | None = None, action: Action | None = None, *, page: int = paging.PAGE
    ) -> Iterator[list[Entry]]:
        """Every entry `page` would list, a page at a time, correct while the caller replays
        them (see `paging`)."""
        return paging.newest_first(self._redis, _index(action), since=since, page=page)

    def since(self, since: float | None = None, action: Action | None = None) -> list[Entry]:
        """Every entry at once, newest first: for tests and small checks; listings and
        replays use `page` and `walk`, which hold one page at a time."""
        return [entry for batch in self.walk(since, action, page=1000) for entry in batch]


def _index(action: Action | None) -> str:
    return keys.DEAD_LETTERS if action is None else keys.dead_letters_of(action)


def _indexes(key: str) -> list[str]:
    """The indexes that list `key`: every dead letter's, and its action's."""
    action = keys.action_of(key)
    return [keys.DEAD_LETTERS] + ([keys.dead_letters_of(action)] if action else [])


def _floor(since: float | None) -> float | str:
    return "-inf" if since is None else since
