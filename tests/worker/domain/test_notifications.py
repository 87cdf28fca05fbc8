from __future__ import annotations

from worker.domain.notifications import Notification, triage
from worker.domain.operations import Action, Operation
from worker.store import keys

EVENT = "00U5g00000MnOpQEAV"
OTHER_EVENT = "00U5g00000MnOpREAV"
NOTE = "04l5g00000QrStUAAV"
OTHER_NOTE = "04l5g00000QrStVAAV"


def test_valid_notifications_become_operations_in_canonical_form() -> None:
    result = triage(
        [Notification(NOTE, " 00U5g00000MnOpQ "), Notification(OTHER_NOTE, OTHER_EVENT)],
        Action.CANCEL,
        ["00U"],
    )
    assert result.operations == [
        Operation(Action.CANCEL, EVENT, NOTE),
        Operation(Action.CANCEL, OTHER_EVENT, OTHER_NOTE),
    ]
    assert result.rejections == []


def test_same_notification_twice_in_one_message_is_one_operation() -> None:
    result = triage([Notification(NOTE, EVENT), Notification(NOTE, EVENT)], Action.GET, ["00U"])
    assert len(result.operations) == 1


def test_two_notifications_cancelling_one_event_are_one_operation() -> None:
    result = triage(
        [Notification(NOTE, EVENT), Notification(OTHER_NOTE, EVENT)], Action.CANCEL, ["00U"]
    )
    assert len(result.operations) == 1


def test_two_notifications_getting_one_event_are_two_operations() -> None:
    result = triage(
        [Notification(NOTE, EVENT), Notification(OTHER_NOTE, EVENT)], Action.GET, ["00U"]
    )
    assert len(result.operations) == 2


def test_bad_notifications_are_rejected_with_reasons_and_do_not_block_others() -> None:
    notifications = [
        Notification("04le0000004lnFFAAZ", EVENT),  # notification Id fails its checksum
        Notification(NOTE, "0031I0000081tbPQAQ", sobject_type="Contact"),  # wrong prefix
        Notification(OTHER_NOTE, None, deleted=True),
        Notification("04l5g00000QrStWAAV", None),  # no event ID field
        Notification("04l5g00000QrStXAAV", "x" * 500),
        Notification("04l5g00000QrStYAAV", OTHER_EVENT),
    ]
    result = triage(notifications, Action.NOSHOW, ["00U"], event_id_field="WhoId")
    assert [op.crm_event_id for op in result.operations] == [OTHER_EVENT]
    reasons = [rejection.reason for rejection in result.rejections]
    assert "notification Id" in reasons[0]
    assert "checksum" in reasons[0]
    assert "key prefix '003'" in reasons[1]
    assert "deleted" in reasons[2]
    assert "'WhoId'" in reasons[3]
    assert result.rejections[1].sobject_type == "Contact"
    assert len(result.rejections[4].value or "") <= 101  # the value as sent, bounded


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
    # One hash tag per operation: its keys share a Redis Cluster slot.
    assert keys.sources(keys.operation(cancel_a)).startswith(keys.operation(cancel_a))
