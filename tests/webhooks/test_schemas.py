"""The request models: what they accept, what they refuse, and the messages they refuse with."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from webhooks.schemas import (
    DryRunRequest,
    EnqueueRequest,
    Event,
    EventBatch,
    InvalidEvent,
    ReplayFailedRequest,
    ReplayRequest,
    parse,
)
from worker.domain.operations import Action
from worker.errors import MalformedRequest

EVENT = "00U5g00000MnOpQEAV"


def test_a_bare_event_is_a_batch_of_one() -> None:
    batch = parse(EventBatch, {"action": " Cancel ", "crmEventId": EVENT, "note": "ignored"})
    [event] = batch.events
    assert isinstance(event, Event)
    assert (event.action, event.crm_event_id) == (Action.CANCEL, EVENT)


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"action": "reschedule", "crmEventId": EVENT}, "'action': unknown action 'reschedule'"),
        ({"action": 3, "crmEventId": EVENT}, "'action': Input should be 'get', 'noshow' or"),
        ({"action": "get"}, "'crmEventId' is required"),
        ({"action": "get", "crmEventId": 12}, "'crmEventId': Input should be a valid string"),
        ({"action": "get", "crmEventId": "\ud800"}, "'crmEventId': must be Unicode text"),
        ({}, "'action' is required; 'crmEventId' is required"),
        ("not an object", "expected a JSON object"),
        ([{"action": "get"}], "expected a JSON object"),
        (None, "expected a JSON object"),
    ],
)
def test_a_bad_item_is_rejected_alone_with_its_reason(item: Any, reason: str) -> None:
    batch = parse(EventBatch, {"events": [item, {"action": "get", "crmEventId": EVENT}]})
    invalid, valid = batch.events
    assert isinstance(invalid, InvalidEvent)
    assert invalid.reason.startswith(reason)
    assert isinstance(valid, Event)


def test_a_reason_never_grows_with_the_input() -> None:
    [invalid] = parse(
        EventBatch, {"events": [{"action": "x" * 100_000, "crmEventId": EVENT}]}
    ).events
    assert isinstance(invalid, InvalidEvent)
    assert len(invalid.reason) < 300


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([1, 2], 'expected a JSON object: one event or {"events": [...]}'),
        ("text", 'expected a JSON object: one event or {"events": [...]}'),
        ({"events": []}, "'events': must be a non-empty list"),
        ({"events": None}, "'events': must be a non-empty list"),
        ({"events": {"action": "get"}}, "'events': must be a non-empty list"),
        ({"events": [{}] * 101}, "'events': at most 100 events per request, got 101"),
    ],
)
def test_a_bad_envelope_refuses_the_request(document: Any, message: str) -> None:
    with pytest.raises(MalformedRequest) as refused:
        parse(EventBatch, document)
    assert refused.value.message == message


@pytest.mark.parametrize(
    ("model", "document", "message"),
    [
        (ReplayRequest, {}, "'targets' is required"),
        (ReplayRequest, {"targets": []}, "'targets': List should have at least 1 item"),
        (ReplayRequest, {"targets": ["x"] * 1001}, "'targets': List should have at most 1000"),
        (ReplayRequest, {"targets": "00U5g00000MnOpQ"}, "'targets': Input should be a valid list"),
        (ReplayRequest, {"targets": [" \t"]}, "'targets[0]': must not be blank"),
        (ReplayRequest, {"targets": ["x", 1]}, "'targets[1]': Input should be a valid string"),
        (ReplayRequest, {"targets": ["crmhook:op:{\ud800}"]}, "'targets[0]': must be Unicode"),
        (ReplayRequest, {"targets": ["x"], "force": "yes"}, "'force': Input should be a valid"),
        (ReplayRequest, {"targets": ["x"], "dry_run": 1}, "'dry_run': Input should be a valid"),
        (ReplayRequest, [], "expected a JSON object"),
        (ReplayFailedRequest, {"action": "reschedule"}, "'action': unknown action 'reschedule'"),
        (ReplayFailedRequest, {"since": 7200}, "'since': Input should be a valid string"),
        (DryRunRequest, {"dry_run": "true"}, "'dry_run': Input should be a valid boolean"),
        (EnqueueRequest, {"crmEventIds": [EVENT]}, "'action' is required"),
        (EnqueueRequest, {"action": "get", "crmEventIds": []}, "'crmEventIds': List should"),
        (EnqueueRequest, {"action": "get", "crmEventIds": [None]}, "'crmEventIds[0]': Input"),
    ],
)
def test_bad_admin_bodies_say_which_field(
    model: type[BaseModel], document: Any, message: str
) -> None:
    with pytest.raises(MalformedRequest) as refused:
        parse(model, document)
    assert refused.value.message.startswith(message)


def test_many_problems_are_summed_up() -> None:
    with pytest.raises(MalformedRequest) as refused:
        parse(ReplayRequest, {"targets": list(range(10))})
    assert refused.value.message.endswith("; and 7 more")


def test_admin_bodies_take_defaults_and_ignore_unknown_fields() -> None:
    assert parse(ReplayFailedRequest, {"action": None, "extra": [[[]]]}) == ReplayFailedRequest()
    replay = parse(ReplayRequest, {"targets": ["x"], "force": True})
    assert (replay.targets, replay.force, replay.dry_run) == (["x"], True, False)
    enqueue = parse(EnqueueRequest, {"action": "NOSHOW", "crmEventIds": [EVENT]})
    assert (enqueue.action, enqueue.crm_event_ids) == (Action.NOSHOW, [EVENT])


def test_the_action_enum_comes_from_action() -> None:
    schema = EnqueueRequest.model_json_schema()
    assert schema["$defs"]["Action"]["enum"] == [action.value for action in Action]
