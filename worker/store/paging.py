"""Walking a sorted set newest first, a page at a time, while the walk itself changes it.

A bulk replay takes some members out of the set it walks (replayed dead letters, released
notifications) and leaves others (still failing, or a dry run), and workers add new ones
meanwhile; rank offsets shift under all of this, so the walk keeps a cursor on scores
instead: the lowest score given so far, and the members of that score already given (a
whole message's rejections share one score). Each page asks Redis for what lies at or
below that score, skipping those members, so

- nothing present when the walk began is skipped or given twice, whatever leaves the set;
- what is added with a newer score than the cursor (a replay that failed again, a new
  rejection) is not reached, so a walk ends. What is added below the cursor (a fan-out
  that ran late, a worker whose clock is behind) is reached: it would take such arrivals,
  without end and faster than the walk goes, to keep it going.

Memory is one page and the members of the current score.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import redis

from worker.store.connection import text

PAGE = 100


def newest_first(
    client: redis.Redis, key: str, *, since: float | None = None, page: int = PAGE
) -> Iterator[list[tuple[str, float]]]:
    """Pages of (member, score) of `key`, newest first, down to `since` (inclusive). Fetch
    the next page only after acting on this one: each page is read when it is asked for."""
    floor: float | str = "-inf" if since is None else since
    ceiling: float | str = "+inf"
    given_at_ceiling: set[str] = set()
    while True:
        wanted = page + len(given_at_ceiling)
        rows = cast(
            "list[tuple[bytes | str, float]]",
            client.zrevrangebyscore(key, ceiling, floor, start=0, num=wanted, withscores=True),
        )
        unseen = [
            (member, float(score))
            for member, score in ((text(m), s) for m, s in rows)
            if member not in given_at_ceiling
        ]
        fresh = unseen[:page]
        if not fresh:
            return
        yield fresh
        if len(rows) < wanted and len(unseen) == len(fresh):
            return  # everything at or below the cursor was in this page
        lowest = fresh[-1][1]
        if lowest != ceiling:
            ceiling, given_at_ceiling = lowest, set()
        given_at_ceiling.update(member for member, score in fresh if score == lowest)
