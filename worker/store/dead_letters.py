"""The index of dead letters: failed operations, scored by when they failed.

It lives outside the operations' hash slots (Redis Cluster), so it is kept beside the
records rather than inside their scripts.
"""

from __future__ import annotations

import time
from typing import cast

import redis

from worker.domain.operations import Action
from worker.store import keys
from worker.store.connection import text


class DeadLetters:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def since(
        self, since: float | None = None, action: Action | None = None
    ) -> list[tuple[str, float]]:
        """(key, failed at) of every dead letter, newest first, failed at or after `since`
        (epoch seconds) and of `action` when given. Keys only: a page's records are read
        with `Records.read`."""
        rows = cast(
            "list[tuple[str, float]]",
            self._redis.zrevrangebyscore(
                keys.DEAD_LETTERS, "+inf", "-inf" if since is None else since, withscores=True
            ),
        )
        return [
            (text(key), float(score))
            for key, score in rows
            if action is None or keys.action_of(text(key)) is action
        ]

    def add(self, pipe: redis.client.Pipeline, key: str) -> None:
        pipe.zadd(keys.DEAD_LETTERS, {key: time.time()})

    def remove(self, pipe: redis.client.Pipeline, key: str) -> None:
        pipe.zrem(keys.DEAD_LETTERS, key)
