"""The record of an `Idempotency-Key`, on a real Redis: claim, answer, give back."""

from __future__ import annotations

import re

import pytest
import redis

from tests.conftest import OTHER_TOKEN, TOKEN
from worker.errors import IdempotencyKeyInUse, IdempotencyKeyReused
from worker.store import keys
from worker.store.idempotency import (
    IN_FLIGHT_SECONDS,
    Answer,
    Claim,
    Idempotency,
    fingerprint,
    scope,
    source_id,
)

RETENTION_SECONDS = 72 * 3600
SOURCE = source_id(TOKEN, "flow-run-42")
BODY = fingerprint({"action": "get", "crmEventId": "00U5g00000MnOpQEAV"})
OTHER_BODY = fingerprint({"action": "cancel", "crmEventId": "00U5g00000MnOpQEAV"})


@pytest.fixture
def records(client: redis.Redis) -> Idempotency:
    return Idempotency(client, RETENTION_SECONDS)


def test_a_scope_is_a_short_fingerprint_of_the_token_that_shows_nothing_of_it() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", scope(TOKEN))
    assert scope(TOKEN) == scope(TOKEN)
    assert scope(TOKEN) != scope(OTHER_TOKEN)
    assert scope(TOKEN) not in TOKEN


@pytest.mark.parametrize("key", ["a", "flow-run-42", "} {x}:y\t" * 25])
def test_a_source_id_is_bounded_and_free_of_the_callers_text(key: str) -> None:
    source = source_id(TOKEN, key)
    assert re.fullmatch(r"api:[0-9a-f]{16}:[0-9a-f]{32}", source)
    assert source != source_id(OTHER_TOKEN, key)
    assert TOKEN not in source


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ({"action": "get", "crmEventId": "x"}, {"crmEventId": "x", "action": "get"}, True),
        ({"events": [{"a": 1, "b": 2}]}, {"events": [{"b": 2, "a": 1}]}, True),
        ({"action": "get", "crmEventId": "x"}, {"action": "get", "crmEventId": "y"}, False),
        ({"action": "get", "crmEventId": "x"}, {"action": "get", "crmEventId": "x", "n": 1}, False),
        ({"events": [1, 2]}, {"events": [2, 1]}, False),
    ],
)
def test_the_body_fingerprint_is_its_json_whatever_the_key_order(
    first: object, second: object, same: bool
) -> None:
    assert (fingerprint(first) == fingerprint(second)) is same


def test_a_first_request_claims_the_key_for_a_short_while(
    records: Idempotency, client: redis.Redis
) -> None:
    claim = records.begin(SOURCE, BODY)
    assert isinstance(claim, Claim)
    assert 0 < client.ttl(keys.idempotency(SOURCE)) <= IN_FLIGHT_SECONDS


def test_the_same_key_while_its_first_request_is_at_work_is_409(records: Idempotency) -> None:
    records.begin(SOURCE, BODY)
    with pytest.raises(IdempotencyKeyInUse):
        records.begin(SOURCE, BODY)


def test_the_same_key_with_another_body_is_422_in_flight_or_done(records: Idempotency) -> None:
    claim = records.begin(SOURCE, BODY)
    with pytest.raises(IdempotencyKeyReused):
        records.begin(SOURCE, OTHER_BODY)
    assert isinstance(claim, Claim)
    records.settle(claim, Answer(202, '{"queued": 1}'))
    with pytest.raises(IdempotencyKeyReused):
        records.begin(SOURCE, OTHER_BODY)


def test_a_settled_key_answers_the_first_answer_for_the_retention(
    records: Idempotency, client: redis.Redis
) -> None:
    claim = records.begin(SOURCE, BODY)
    assert isinstance(claim, Claim)
    assert records.settle(claim, Answer(202, '{"queued": 1}\n'))
    assert records.begin(SOURCE, BODY) == Answer(202, '{"queued": 1}\n')
    assert IN_FLIGHT_SECONDS < client.ttl(keys.idempotency(SOURCE)) <= RETENTION_SECONDS


def test_a_released_claim_lets_the_retry_through(records: Idempotency) -> None:
    claim = records.begin(SOURCE, BODY)
    assert isinstance(claim, Claim)
    records.release(claim)
    assert isinstance(records.begin(SOURCE, BODY), Claim)


def test_a_claim_that_ran_out_neither_releases_nor_overwrites_a_later_claim(
    records: Idempotency, client: redis.Redis
) -> None:
    stale = records.begin(SOURCE, BODY)
    assert isinstance(stale, Claim)
    client.delete(stale.key)  # what its expiry does
    later = records.begin(SOURCE, BODY)
    assert isinstance(later, Claim)

    records.release(stale)
    assert not records.settle(stale, Answer(202, "{}"))
    assert client.get(later.key) == later.value


def test_a_claim_that_ran_out_with_nobody_after_it_still_records_its_answer(
    records: Idempotency, client: redis.Redis
) -> None:
    claim = records.begin(SOURCE, BODY)
    assert isinstance(claim, Claim)
    client.delete(claim.key)
    assert records.settle(claim, Answer(202, "{}"))
    assert records.begin(SOURCE, BODY) == Answer(202, "{}")
