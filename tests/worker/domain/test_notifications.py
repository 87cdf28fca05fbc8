from __future__ import annotations

import pytest

from worker.domain.notifications import Disposition, Notification, triage
from worker.domain.operations import Action, Operation

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


API_SOURCE = "api:flow-run-42"


@pytest.mark.parametrize(
    ("notifications", "route_action", "expected"),
    [
        pytest.param(
            [Notification(NOTE, EVENT)], Action.CANCEL, [Action.CANCEL], id="route action"
        ),
        pytest.param(
            [Notification(NOTE, EVENT, action=Action.GET)],
            Action.CANCEL,
            [Action.GET],
            id="own action wins",
        ),
        pytest.param(
            [
                Notification(NOTE, EVENT, action=Action.NOSHOW),
                Notification(OTHER_NOTE, OTHER_EVENT, action=Action.CANCEL),
            ],
            None,
            [Action.NOSHOW, Action.CANCEL],
            id="each its own, no route action",
        ),
    ],
)
def test_a_notification_may_carry_its_own_action(
    notifications: list[Notification], route_action: Action | None, expected: list[Action]
) -> None:
    result = triage(notifications, route_action, ["00U"])
    assert [operation.action for operation in result.operations] == expected


def test_a_notification_without_any_action_is_the_callers_mistake() -> None:
    with pytest.raises(ValueError, match="action"):
        triage([Notification(NOTE, EVENT)], None, ["00U"])


@pytest.mark.parametrize(
    ("events", "dispositions", "queued"),
    [
        pytest.param(
            [(Action.CANCEL, EVENT), (Action.CANCEL, OTHER_EVENT)],
            ["queued", "queued"],
            [EVENT, OTHER_EVENT],
            id="one source shared by many events",
        ),
        pytest.param(
            [(Action.GET, EVENT), (Action.GET, EVENT)],
            ["queued", "duplicate"],
            [EVENT],
            id="the same get twice in one request",
        ),
        pytest.param(
            [(Action.CANCEL, EVENT), (Action.NOSHOW, EVENT)],
            ["queued", "queued"],
            [EVENT, EVENT],
            id="two actions on one event",
        ),
        pytest.param(
            [(Action.CANCEL, "00U5g00000MnOpQ"), (Action.CANCEL, EVENT)],
            ["queued", "duplicate"],
            [EVENT],
            id="15 and 18 characters are one event",
        ),
        pytest.param(
            [(Action.CANCEL, "0031I0000081tbPQAQ"), (Action.GET, "nope"), (Action.GET, EVENT)],
            ["rejected", "rejected", "queued"],
            [EVENT],
            id="bad IDs do not block the others",
        ),
    ],
)
def test_a_given_source_replaces_notification_ids(
    events: list[tuple[Action, str]], dispositions: list[str], queued: list[str]
) -> None:
    notifications = [Notification("", event_id, action=action) for action, event_id in events]
    result = triage(notifications, None, ["00U"], source_id=API_SOURCE)
    assert [verdict.disposition for verdict in result.verdicts] == dispositions
    assert [operation.crm_event_id for operation in result.operations] == queued
    assert {operation.source_id for operation in result.operations} <= {API_SOURCE}


def test_verdicts_follow_the_input_order_and_say_why() -> None:
    notifications = [
        Notification(NOTE, EVENT),
        Notification("04le0000004lnFFAAZ", EVENT),  # bad notification Id
        Notification(OTHER_NOTE, EVENT),  # the same cancel as the first
        Notification("04l5g00000QrStWAAV", "0031I0000081tbPQAQ"),  # wrong prefix
    ]
    result = triage(notifications, Action.CANCEL, ["00U"])
    assert [(v.disposition, v.operation) for v in result.verdicts] == [
        (Disposition.QUEUED, Operation(Action.CANCEL, EVENT, NOTE)),
        (Disposition.REJECTED, None),
        (Disposition.DUPLICATE, Operation(Action.CANCEL, EVENT, OTHER_NOTE)),
        (Disposition.REJECTED, None),
    ]
    assert "notification Id" in result.verdicts[1].reason
    assert "key prefix '003'" in result.verdicts[3].reason
    # The SOAP route and the operator read these two, unchanged.
    assert result.operations == [Operation(Action.CANCEL, EVENT, NOTE)]
    assert [r.reason for r in result.rejections] == [
        result.verdicts[1].reason,
        result.verdicts[3].reason,
    ]
