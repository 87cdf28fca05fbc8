"""The JSON request bodies as pydantic models: they validate the requests, and their JSON
Schema is what `/openapi.json` says of them, so the document cannot drift from the checks.

Unknown fields are ignored, as they always were. IDs are judged by triage and the operator,
not here: a bad ID rejects one event or one target, never the whole request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PlainValidator,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from worker.domain.bounded import bounded
from worker.domain.operations import Action, parse_action
from worker.errors import MalformedRequest

MAX_EVENTS = 100
MAX_TARGETS = 1000
_SHOWN_PROBLEMS = 3
_SHOWN_CHARS = 200

Model = TypeVar("Model", bound=BaseModel)


def _action(value: Any) -> Any:
    """An action as people type it (` Cancel`), through `parse_action`, whose error lists
    the valid ones."""
    return parse_action(value) if isinstance(value, str) else value


def _encodable(value: str) -> str:
    """JSON may escape half a surrogate pair (`"\\ud800"`), which is no text: refused here,
    before it reaches Redis, whose client cannot encode it."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be Unicode text (it holds an unpaired surrogate)") from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


ActionName = Annotated[Action, BeforeValidator(_action)]
Text = Annotated[StrictStr, AfterValidator(_encodable)]
NonBlank = Annotated[Text, AfterValidator(_not_blank), Field(json_schema_extra={"pattern": r"\S"})]


class Event(BaseModel):
    """One event: an action on one Salesforce Event."""

    action: ActionName
    crm_event_id: Text = Field(
        alias="crmEventId", title="crmEventId", description="a Salesforce ID, 15 or 18 characters"
    )


@dataclass(frozen=True)
class InvalidEvent:
    """An item of `events` that is not an event, and why: rejected alone, so that its
    neighbours are still queued."""

    reason: str


def _event_or_invalid(item: Any) -> Event | InvalidEvent:
    try:
        return Event.model_validate(item)
    except ValidationError as exc:
        return InvalidEvent(describe(exc))


class EventBatch(BaseModel):
    """`{"events": [...]}`; a bare event is a batch of one."""

    events: list[
        Annotated[
            Event | InvalidEvent,
            PlainValidator(_event_or_invalid, json_schema_input_type=Event),
        ]
    ] = Field(min_length=1, max_length=MAX_EVENTS)

    @model_validator(mode="before")
    @classmethod
    def _bare_event_is_a_batch_of_one(cls, document: Any) -> Any:
        if not isinstance(document, dict):
            raise ValueError('expected a JSON object: one event or {"events": [...]}')
        return document if "events" in document else {"events": [document]}

    @field_validator("events", mode="before")
    @classmethod
    def _within_bounds(cls, events: Any) -> Any:
        """The bounds of the field, said in the sender's words, and checked before any
        item is judged (a body of 100 000 items is refused at once)."""
        if not isinstance(events, list) or not events:
            raise ValueError("must be a non-empty list")
        if len(events) > MAX_EVENTS:
            raise ValueError(f"at most {MAX_EVENTS} events per request, got {len(events)}")
        return events


class ReplayRequest(BaseModel):
    targets: list[NonBlank] = Field(
        min_length=1, max_length=MAX_TARGETS, description="operation keys or event IDs"
    )
    force: StrictBool = Field(False, description="replay succeeded operations too")
    dry_run: StrictBool = Field(False, description="say what would happen, change nothing")


class ReplayFailedRequest(BaseModel):
    action: ActionName | None = Field(None, description="only dead letters of this action")
    since: Text | None = Field(
        None,
        description="only dead letters since: a duration ago (90s, 30m, 2h, 7d) "
        "or an ISO 8601 time with a zone",
    )
    dry_run: StrictBool = Field(False, description="say what would happen, change nothing")


class DryRunRequest(BaseModel):
    dry_run: StrictBool = Field(False, description="say what would happen, change nothing")


class PauseRequest(BaseModel):
    reason: Text = Field("", max_length=200, description="why, for the audit trail")


class HeldRequest(BaseModel):
    keys: list[NonBlank] = Field(
        [], max_length=MAX_TARGETS, description="operation keys, as GET /admin/held lists them"
    )
    all: StrictBool = Field(False, description="every operation the request may act on")

    @model_validator(mode="after")
    def _keys_or_all(self) -> HeldRequest:
        if bool(self.keys) == self.all:
            raise ValueError("give keys, or all: true")
        return self


class EnqueueRequest(BaseModel):
    action: ActionName
    crm_event_ids: list[Text] = Field(
        alias="crmEventIds", title="crmEventIds", min_length=1, max_length=MAX_TARGETS
    )


def parse(model: type[Model], document: Any) -> Model:
    """`document` as `model`, or MalformedRequest saying what is wrong with it."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise MalformedRequest(describe(exc)) from None


def describe(error: ValidationError) -> str:
    """The first problems, one short clause each, naming the field:
    `'force': Input should be a valid boolean`. Never the input itself, which may hold
    anything (a pasted secret); messages we wrote ourselves are bounded instead."""
    problems = error.errors(include_url=False, include_input=False)
    shown = "; ".join(_problem(problem) for problem in problems[:_SHOWN_PROBLEMS])
    hidden = len(problems) - _SHOWN_PROBLEMS
    return f"{shown}; and {hidden} more" if hidden > 0 else shown


def _problem(problem: ErrorDetails) -> str:
    field = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"]
    ).lstrip(".")
    if problem["type"] == "missing":
        return f"{field!r} is required"
    if problem["type"] == "value_error":  # ours: the ValueError's own words
        what = str(problem["ctx"]["error"])
    elif problem["type"] == "model_type":  # pydantic would say "instance of Event"
        what = "expected a JSON object"
    else:
        what = problem["msg"]
    what = bounded(what, _SHOWN_CHARS)  # it may quote the sender's text
    return f"{field!r}: {what}" if field else what
