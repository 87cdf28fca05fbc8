"""Walking a sorted set newest first while the walker takes members out and others arrive."""

from __future__ import annotations

import random

import pytest
import redis

from worker.store import keys, paging

KEY = keys.QUARANTINE  # any sorted set: the walk knows nothing of what it holds


def fill(client: redis.Redis, scores: list[float]) -> dict[str, float]:
    members = {f"member-{index:04d}": score for index, score in enumerate(scores)}
    client.zadd(KEY, members)
    return members


def walked(client: redis.Redis, *, page: int, since: float | None = None) -> list[str]:
    return [m for rows in paging.newest_first(client, KEY, since=since, page=page) for m, _ in rows]


def test_a_walk_is_newest_first_and_ties_go_in_the_sets_own_order(client: redis.Redis) -> None:
    fill(client, [1, 5, 5, 5, 2, 5, 3])
    expected = list(client.zrevrangebyscore(KEY, "+inf", "-inf"))
    assert walked(client, page=2) == expected
    assert walked(client, page=100) == expected
    assert walked(client, page=2, since=3) == expected[:5]  # scores 5, 5, 5, 5, 3


@pytest.mark.parametrize("seed", range(8))
def test_a_walk_gives_each_member_once_while_it_leaves_some_and_others_arrive(
    client: redis.Redis, seed: int
) -> None:
    """The cases of a bulk replay: more members than a page; ties longer than a page (a
    message's rejections share a score); the walker removing some of each page (released)
    and leaving others (still failing); members added meanwhile, newer than the walk (a
    replay that failed again) or with a score already passed (a late fan-out)."""
    rng = random.Random(seed)
    scores = [float(rng.choice(range(20))) for _ in range(180)] + [7.0] * 40
    original = fill(client, scores)
    page = rng.choice([1, 3, 7, 25])
    given: list[str] = []
    newer: set[str] = set()
    pages = 0
    for rows in paging.newest_first(client, KEY, page=page):
        pages += 1
        assert len(rows) <= page
        given += [member for member, _ in rows]
        leaving = [member for member, _ in rows if rng.random() < 0.5]
        if leaving:
            client.zrem(KEY, *leaving)
        arrival = f"arrival-{pages:04d}"
        newer.add(arrival)
        client.zadd(KEY, {arrival: 100.0 + pages})  # newer than the walk: not reached
        if pages <= 5:  # a few with a score already passed (a late fan-out): reached or not
            client.zadd(KEY, {f"late-{pages:04d}": rng.choice([0.5, 7.0, 19.0])})
        assert pages <= len(original) + 5, "the walk does not end"
    assert len(given) == len(set(given)), "a member was given twice"
    assert set(original) <= set(given), "a member was skipped"
    assert not newer & set(given)
    order = [original[m] for m in given if m in original]
    assert order == sorted(order, reverse=True)
    print(f"\n[paging] seed {seed}: {len(original)} members, page {page}, {pages} pages")


def test_a_walk_survives_a_whole_tie_group_leaving_behind_its_cursor(client: redis.Redis) -> None:
    """Members of the cursor's score that were given and then removed must not make the
    next page skip the members that follow them."""
    fill(client, [5.0] * 5 + [4.0] * 3)
    given = []
    for rows in paging.newest_first(client, KEY, page=3):
        given += [member for member, _ in rows]
        client.zrem(KEY, *[member for member, _ in rows])
    assert sorted(given) == sorted(f"member-{index:04d}" for index in range(8))
