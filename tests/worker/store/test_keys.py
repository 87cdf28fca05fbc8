"""The key module: every key's shape, hash tags, and reading an operation key back."""

from __future__ import annotations

import pytest

from worker.domain.operations import Action, Operation
from worker.store import keys

EVENT = "00U5g00000MnOpQEAV"
NOTE, OTHER_NOTE = "04l5g000000AbCdAAK", "04l5g000000AbCeAAK"


def test_irreversible_keys_ignore_the_source_and_get_keys_do_not() -> None:
    cancel_a = Operation(Action.CANCEL, EVENT, NOTE)
    cancel_b = Operation(Action.CANCEL, EVENT, OTHER_NOTE)
    get_a, get_b = Operation(Action.GET, EVENT, NOTE), Operation(Action.GET, EVENT, OTHER_NOTE)
    assert (
        keys.operation(cancel_a)
        == keys.operation(cancel_b)
        == "crmhook:op:{cancel:00U5g00000MnOpQEAV}"
    )
    assert keys.operation(get_a) != keys.operation(get_b)
    assert keys.operation(Operation(Action.NOSHOW, EVENT, NOTE)) != keys.operation(cancel_a)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first `{` and the next `}`."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


def test_an_operations_keys_share_one_hash_tag() -> None:
    record = keys.operation(Operation(Action.GET, EVENT, "api:flow-run-42"))
    assert hash_tag(keys.sources(record)) == hash_tag(keys.audit_trail(record)) == hash_tag(record)
    assert hash_tag(keys.event_index(EVENT)) == EVENT
    gate = {keys.GATE_LIMITER, keys.GATE_PAUSE, keys.GATE_BREAKER, keys.GATE_BREAKER_WINDOW}
    assert {hash_tag(key) for key in gate} == {"chilipiper"}


@pytest.mark.parametrize(
    ("key", "action"),
    [
        ("crmhook:op:{cancel:00U5g00000MnOpQEAV}", Action.CANCEL),
        ("crmhook:op:{get:00U5g00000MnOpQEAV:api:x}", Action.GET),
        ("crmhook:op:{cancel:00U5g00000MnOpQEAV}:sources", None),
        ("crmhook:op:{reschedule:00U5g00000MnOpQEAV}", None),
        ("00U5g00000MnOpQEAV", None),
    ],
)
def test_action_of_reads_an_operation_key_back(key: str, action: Action | None) -> None:
    assert keys.action_of(key) is action
    assert keys.is_operation(key) is key.startswith("crmhook:op:")


def test_an_idempotency_key_is_hashed_whatever_the_callers_text() -> None:
    hostile = keys.idempotency("} {crmhook:op:{cancel:x}}\n")
    assert hostile.startswith("crmhook:idempotency:{")
    assert "\n" not in hostile
    assert keys.idempotency("a") != keys.idempotency("b")
