"""Task messages across a rolling deploy: this release reads the previous one's, and back."""

from __future__ import annotations

from worker.domain.operations import MESSAGE_VERSION, Action, Operation
from worker.ingest import Batch


def test_a_message_of_the_previous_release_is_read() -> None:
    v1 = {"action": "cancel", "crm_event_id": "00U5g00000MnOpQEAV", "source_id": "04l1"}
    assert Operation.from_message(v1) == Operation(Action.CANCEL, "00U5g00000MnOpQEAV", "04l1")


def test_messages_carry_their_version_and_keep_the_previous_fields() -> None:
    operation = Operation(Action.NOSHOW, "00U5g00000MnOpQEAV", "04l1")
    message = operation.to_message()
    assert message["v"] == MESSAGE_VERSION == 2
    # What a previous-release worker reads: the same three fields, unchanged.
    assert {name: message[name] for name in ("action", "crm_event_id", "source_id")} == {
        "action": "noshow",
        "crm_event_id": "00U5g00000MnOpQEAV",
        "source_id": "04l1",
    }
    assert Operation.from_message(message) == operation
    assert Operation.from_message({**message, "v": 3, "added_later": True}) == operation


def test_a_fan_out_message_round_trips_with_its_version() -> None:
    batch = Batch("00D000000000001", [Operation(Action.CANCEL, "00U5g00000MnOpQEAV", "04l1")])
    message = batch.to_message()
    assert message["v"] == MESSAGE_VERSION
    del message["v"]  # as the previous release wrote it
    assert Batch.from_message(message).operations == batch.operations


def test_the_notification_id_is_the_source_only_when_salesforce_sent_it() -> None:
    sent = Operation(Action.CANCEL, "00U5g00000MnOpQEAV", "04l5g00000QrStUAAV")
    assert sent.notification_id == "04l5g00000QrStUAAV"
    for source in ("api:3f9a:5e1c", "cli:0d6f2b", "admin:ops:1"):
        assert Operation(Action.CANCEL, "00U5g00000MnOpQEAV", source).notification_id is None
