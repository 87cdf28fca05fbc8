"""A local ChiliPiper stand-in: a real MCP server (streamable HTTP) for development and tests.

It models ChiliPiper's documented MCP server rather than our guesses, so the worker's parsers
meet the shapes they will meet in production:

- Tools, each taking one string argument `crmEventId`: `crm-get` (the full meeting record), the
  deprecated v1 `crm-cancel` and `crm-noshow`, and their v2 replacements `crm-cancel-post` and
  `crm-noshow-post`. Which of them are offered is a switch (`tools`), since a ChiliPiper
  account may expose either generation.
- Meeting records as ChiliPiper's Edge API answers them (`meetingId`, `meetingStatus`,
  `dateTime`, host, guest, attendees). Live ChiliPiper writes statuses `Active`, `Canceled`,
  `NoShow`, `Completed` while its tool descriptions say `CANCELLED`, `NO_SHOW`; the switch
  `status_spelling` picks which one the answers use. Internally a meeting's status is always
  one of BOOKED, CANCELLED, NO_SHOW, COMPLETED, which is what `meetings` and the call log hold.
- Tool errors as the MCP server relays the Edge API's HTTP errors: a result with `isError`
  whose text is `"<status> <reason>: <body>"` (the body JSON `{"errorCode", "errorMessage"}`,
  or text/plain for a request the API cannot decode).
- A server-side rate limit (fixed one-second windows) answering HTTP 429.

Any Event ID (key prefix 00U) gets an Active meeting on first use, so demos need no seeding.
Control endpoints, which is what the tests drive it with:

- `GET /sandbox/calls`: the call log; `GET /sandbox/meetings/<id>`, `POST /sandbox/meetings`:
  read and seed meetings; `GET|POST /sandbox/config`: the switches; `POST /sandbox/reset`.
- `GET /sandbox/stats`: how many calls the log holds (`calls`, cheaper to poll than the log),
  the most MCP requests answered at once since the last reset (`most_in_flight`), and what
  the faults did: `answers_lost` (answers a proxy lost after the effect),
  `rate_limited`, and `faults_served` by status (the last not cleared by reset).
- `POST /sandbox/faults`: a JSON object of `Faults` fields (any left out are off). Some refuse
  requests before they reach the meetings: HTTP errors with `Retry-After` (`fail_next`,
  `status`, `rates`, `retry_after`), slow answers (`delay_seconds`), SSE answers (`sse`) and
  expired sessions (`expire_sessions`). Others let an irreversible call (any tool but
  `crm-get`, which stays unaffected so the caller can reconcile through it) take effect while
  its caller gets no timely answer: an answer trickled as SSE comments (`trickle_seconds`,
  `trickle_interval`), an effect that lands after the caller gave up (`late_effect_seconds`),
  and an answer lost by a proxy after the effect (`lose_answer_rate`, `lost_answer_status`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, Final, Literal

from flask import Flask, Response, jsonify, request

log = logging.getLogger("crmhook.sandbox")

PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")

# The sandbox's own (canonical) statuses; answers spell them as `status_spelling` says.
BOOKED, CANCELLED, NO_SHOW, COMPLETED = "BOOKED", "CANCELLED", "NO_SHOW", "COMPLETED"
SPELLINGS: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {
        "edge": MappingProxyType(
            {BOOKED: "Active", CANCELLED: "Canceled", NO_SHOW: "NoShow", COMPLETED: "Completed"}
        ),
        "upper": MappingProxyType({s: s for s in (BOOKED, CANCELLED, NO_SHOW, COMPLETED)}),
    }
)
# What the seed endpoint accepts, compared without case, spaces, "-" or "_".
STATUS_WORDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "booked": BOOKED,
        "active": BOOKED,
        "cancelled": CANCELLED,
        "canceled": CANCELLED,
        "noshow": NO_SHOW,
        "completed": COMPLETED,
    }
)

TOOLS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "crm-get": (
            "Get the ChiliPiper meeting linked to a CRM event: the full meeting record "
            "(meetingId, meetingStatus, dateTime, host, primaryGuest, attendees)."
        ),
        "crm-cancel": (
            "Cancel the ChiliPiper meeting linked to a CRM event; its status becomes CANCELLED. "
            "This is irreversible; may email attendees. (deprecated: use crm-cancel-post)"
        ),
        "crm-noshow": (
            "Mark the ChiliPiper meeting linked to a CRM event as a no-show; its status becomes "
            "NO_SHOW. This is not reversible via API. (deprecated: use crm-noshow-post)"
        ),
        "crm-cancel-post": (
            "Cancel the ChiliPiper meeting linked to a CRM event and answer the updated meeting "
            "record; its status becomes CANCELLED. This is irreversible; may email attendees. "
            "404 when no meeting is linked to the CRM event."
        ),
        "crm-noshow-post": (
            "Mark the ChiliPiper meeting linked to a CRM event as a no-show and answer the "
            "updated meeting record; its status becomes NO_SHOW. This is not reversible via "
            "API. 404 when no meeting is linked to the CRM event."
        ),
    }
)
ACTIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "crm-get": "get",
        "crm-cancel": "cancel",
        "crm-cancel-post": "cancel",
        "crm-noshow": "noshow",
        "crm-noshow-post": "noshow",
    }
)
TOOL_SETS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "v1": ("crm-get", "crm-cancel", "crm-noshow"),
        "v2": ("crm-get", "crm-cancel-post", "crm-noshow-post"),
        "both": tuple(TOOLS),
        # What a token limited to reading might be offered: the worker cannot work with it.
        "get-only": ("crm-get",),
    }
)
AFTER_ACTION: Final[Mapping[str, str]] = MappingProxyType({"cancel": CANCELLED, "noshow": NO_SHOW})

ToolSet = Literal["v1", "v2", "both", "get-only"]
Spelling = Literal["edge", "upper"]
DEFAULT_CONFIG: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "tools": "both",
        "status_spelling": "edge",
        "missing_permission": None,
        "rate_limit": None,
        "rate_limit_retry_after": True,
    }
)

CRM_EVENT_ID = re.compile(r"[A-Za-z0-9]{15}|[A-Za-z0-9]{18}")
MALFORMED_ID = "Invalid value for: path parameter crmEventId"
RATE_LIMITED_BODY: Final[Mapping[str, str]] = MappingProxyType(
    {"errorCode": "TooManyRequests", "errorMessage": "Rate limit exceeded"}
)
MEETING_MINUTES = 30

FIRST_NAMES = ("Ada", "Grace", "Alan", "Katherine", "Edsger", "Barbara", "Dennis", "Frances")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Johnson", "Dijkstra", "Liskov", "Ritchie", "Allen")


@dataclass
class Faults:
    """Switches for bad minutes. `fail_next` answers with `status` that many times; `rates`
    answers each request at random, e.g. {"503": 0.3, "429": 0.1}. A faulted request is
    refused before it reaches the meetings (as a real 429/503 is).

    The rest separate an irreversible call's effect from its answer, the case a caller cannot
    retry its way out of; `crm-get` is never affected, so callers can reconcile through it:
    - `trickle_seconds`: the effect is applied at once, then the answer comes as an SSE stream
      of one comment every `trickle_interval` seconds for that long before the message, so no
      single read ever waits long enough to time out;
    - `late_effect_seconds`: the request is held and the effect applied that long after it
      arrived, whether or not the caller is still waiting, then the answer is given;
    - `lose_answer_rate`: the chance that, once the effect is applied, the answer is replaced
      by HTTP `lost_answer_status` (a proxy lost it), counted in `Sandbox.answers_lost`."""

    fail_next: int = 0
    status: int = 503
    rates: dict[str, float] = field(default_factory=dict)
    retry_after: float | None = None
    delay_seconds: float = 0.0
    sse: bool = False
    expire_sessions: bool = False
    trickle_seconds: float = 0.0
    trickle_interval: float = 0.5
    late_effect_seconds: float = 0.0
    lose_answer_rate: float = 0.0
    lost_answer_status: int = 504

    def __post_init__(self) -> None:
        """ValueError for values that would make the sandbox spin or never answer."""
        for name in ("trickle_seconds", "late_effect_seconds"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be finite and >= 0, not {getattr(self, name)!r}")
        if not 0 < self.trickle_interval < math.inf:
            raise ValueError(f"trickle_interval must be positive, not {self.trickle_interval!r}")
        if not 0 <= self.lose_answer_rate <= 1:
            raise ValueError(f"lose_answer_rate must be in [0, 1], not {self.lose_answer_rate!r}")
        if not 400 <= self.lost_answer_status <= 599:
            raise ValueError(
                f"lost_answer_status must be an HTTP error status, not {self.lost_answer_status!r}"
            )


@dataclass(frozen=True)
class Person:
    full_name: str
    email: str


@dataclass(frozen=True)
class MeetingDetails:
    """Everything a meeting record says besides its status. Fixed when the sandbox first sees
    the meeting, so every answer about it agrees (the same meetingId, the same times)."""

    meeting_id: str
    start: datetime
    booked_at: datetime
    host_id: str
    host: Person
    guests: tuple[Person, Person]
    workspace_id: str

    @classmethod
    def invent(cls, crm_event_id: str, now: float) -> MeetingDetails:
        """Made-up but plausible details, the same for the same event ID (times aside: the
        meeting starts at a whole hour in the next three days, booked in the last week)."""
        rng = random.Random(crm_event_id)  # noqa: S311 - made-up details, not secrets
        current = datetime.fromtimestamp(now, UTC).replace(microsecond=0)
        hour = current.replace(minute=0, second=0)
        return cls(
            meeting_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            start=hour + timedelta(hours=rng.randint(1, 72)),
            booked_at=current - timedelta(minutes=rng.randint(5, 7 * 24 * 60)),
            host_id=f"{rng.getrandbits(96):024x}",
            host=_person(rng, "example.com"),
            guests=(_person(rng, "example.org"), _person(rng, "example.net")),
            workspace_id=f"{rng.getrandbits(96):024x}",
        )

    def record(self, meeting_status: str) -> dict[str, Any]:
        """The meeting as `crm-get` answers it, with `meeting_status` already spelled."""
        end = self.start + timedelta(minutes=MEETING_MINUTES)
        return {
            "meetingId": self.meeting_id,
            "meetingStatus": meeting_status,
            "dateTime": {"start": _iso(self.start), "end": _iso(end)},
            "bookedAt": _iso(self.booked_at),
            "hostId": self.host_id,
            "hostEmail": self.host.email,
            "hostName": self.host.full_name,
            "primaryGuest": {"value": self.guests[0].email},
            "attendees": [{"email": p.email, "fullName": p.full_name} for p in self.guests],
            "workspaceId": self.workspace_id,
        }


@dataclass(frozen=True)
class Answer:
    """A tool's answer as ChiliPiper's HTTP API gives it to the MCP server: a status and a
    body, JSON (a record, or an Edge API error) or text/plain (a request it cannot decode)."""

    status: int
    body: dict[str, Any] | str

    @property
    def ok(self) -> bool:
        return self.status < 400

    def text(self) -> str:
        """The tool result's text: the record as JSON, or `"<status> <reason>: <body>"` as the
        MCP server relays an HTTP error."""
        body = self.body if isinstance(self.body, str) else _compact(self.body)
        if self.ok:
            return body
        return f"{self.status} {HTTPStatus(self.status).phrase}: {body}"

    def structured(self) -> dict[str, Any]:
        """`structuredContent`: the record, or the error's status, code and message (the code
        is None for a text/plain error)."""
        if isinstance(self.body, dict) and self.ok:
            return self.body
        if isinstance(self.body, str):
            return {"status": self.status, "errorCode": None, "errorMessage": self.body}
        return {"status": self.status, **self.body}

    def mcp_result(self) -> dict[str, Any]:
        return {
            "content": [{"type": "text", "text": self.text()}],
            "structuredContent": self.structured(),
            "isError": not self.ok,
        }


@dataclass
class Sandbox:
    """The sandbox's state: meetings, sessions, the call log, the switches and the faults.

    `meetings` maps a CRM event ID to its canonical status (tests may set it directly);
    `records` holds the rest of each meeting, invented on first sight."""

    auto_book: bool = True
    required_token: str | None = None  # when set, requests must carry it as a bearer token
    tools: ToolSet = "both"
    status_spelling: Spelling = "edge"
    missing_permission: str | None = None  # e.g. "meeting.modify": cancel/noshow answer 403
    rate_limit: float | None = None  # tools/call requests per second, over all tools
    rate_limit_retry_after: bool = True
    meetings: dict[str, str] = field(default_factory=dict)
    records: dict[str, MeetingDetails] = field(default_factory=dict)
    unlinked: set[str] = field(default_factory=set)
    calls: list[dict[str, Any]] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    faults: Faults = field(default_factory=Faults)
    faults_served: dict[int, int] = field(default_factory=dict)
    fault_times: list[float] = field(default_factory=list)
    rate_limited: int = 0
    answers_lost: int = 0  # irreversible calls applied whose answer lose_answer_rate dropped
    window: int = 0  # the rate limit's current one-second window...
    window_calls: int = 0  # ...and the calls admitted in it
    in_flight: int = 0  # MCP requests being answered now...
    most_in_flight: int = 0  # ...and the most at once since the last reset
    clock: Callable[[], float] = field(default=time.time, repr=False)
    random: random.Random = field(default_factory=random.Random)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for name in DEFAULT_CONFIG:
            _check_setting(name, getattr(self, name))

    # --- switches ---------------------------------------------------------------------------

    def configure(self, **values: Any) -> dict[str, Any]:
        """Set any of the switches named in DEFAULT_CONFIG; answer them all. Every value is
        checked first, so a bad one changes nothing (ValueError)."""
        checked = {name: _check_setting(name, value) for name, value in values.items()}
        with self.lock:
            for name, value in checked.items():
                setattr(self, name, value)
            return self._config()

    def config(self) -> dict[str, Any]:
        with self.lock:
            return self._config()

    def offered_tools(self) -> tuple[str, ...]:
        return TOOL_SETS[self.tools]

    def _config(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in DEFAULT_CONFIG}

    # --- meetings ---------------------------------------------------------------------------

    def seed(self, statuses: Mapping[str, str | None]) -> dict[str, str]:
        """Set meetings' statuses (any spelling); None means no meeting is linked. All are
        checked first (ValueError). Answers every meeting's canonical status."""
        checked = {
            event_id: None if status is None else canonical_status(status)
            for event_id, status in statuses.items()
        }
        with self.lock:
            for event_id, status in checked.items():
                if status is None:
                    self.meetings.pop(event_id, None)
                    self.unlinked.add(event_id)
                else:
                    self.meetings[event_id] = status
                    self.unlinked.discard(event_id)
            return dict(self.meetings)

    def meeting(self, crm_event_id: str) -> dict[str, Any]:
        """The control view of one meeting: its canonical status and its record, or None
        for both when none is linked. Books nothing."""
        with self.lock:
            status = self._status(crm_event_id)
            record = None if status is None else self._record(crm_event_id, status)
        return {"crmEventId": crm_event_id, "status": status, "record": record}

    def reset(self) -> None:
        """Back to a fresh sandbox: no meetings, no calls, no faults, default switches."""
        with self.lock:
            self.meetings.clear()
            self.records.clear()
            self.unlinked.clear()
            self.calls.clear()
            self.faults = Faults()
            for name, value in DEFAULT_CONFIG.items():
                setattr(self, name, value)
            self.rate_limited = self.answers_lost = self.window = self.window_calls = 0
            self.most_in_flight = self.in_flight

    def stats(self) -> dict[str, Any]:
        """The size of the call log and what the faults have done: `/sandbox/stats`."""
        with self.lock:
            return {
                "calls": len(self.calls),
                "most_in_flight": self.most_in_flight,
                "answers_lost": self.answers_lost,
                "rate_limited": self.rate_limited,
                "faults_served": {str(code): n for code, n in sorted(self.faults_served.items())},
            }

    # --- tools ------------------------------------------------------------------------------

    def call_tool(self, tool: str, crm_event_id: str) -> Answer:
        """Apply `tool` (any name in TOOLS, offered or not) to the meeting and log the call.
        Checks run in this order (our choice; ChiliPiper documents none): decode the ID
        (400), permission (403), a linked meeting (404), a meeting still Active (409)."""
        action = ACTIONS[tool]
        with self.lock:
            refusal = self._refusal(action, crm_event_id)
            if refusal is None:
                self._auto_book(crm_event_id)
            before = self._status(crm_event_id)
            answer = refusal or self._act(action, crm_event_id)
            after = self._status(crm_event_id)
            self._log(tool, crm_event_id, answer.status, before, after)
        log.info(
            "%s %s: %s → %s", tool, crm_event_id, before, after if answer.ok else answer.text()
        )
        return answer

    def run_tool(self, tool: str, crm_event_id: str) -> tuple[bool, dict[str, Any] | str]:
        """(ok, the record or the error text): `call_tool` for callers that relay answers
        without HTTP statuses (the Scalekit stand-in)."""
        answer = self.call_tool(tool, crm_event_id)
        if answer.ok and isinstance(answer.body, dict):
            return True, answer.body
        return False, answer.text()

    def over_rate_limit(self, tool: str, crm_event_id: object) -> bool:
        """True when this tools/call goes over `rate_limit`; the refusal is then counted and
        logged, and the meetings are left alone. Fixed one-second windows admit at most
        ceil(rate_limit) calls each, so a burst across a window edge gets twice that."""
        with self.lock:
            if self.rate_limit is None:
                return False
            now = self.clock()
            if int(now) != self.window:
                self.window, self.window_calls = int(now), 0
            if self.window_calls < self.rate_limit:
                self.window_calls += 1
                return False
            self.rate_limited += 1
            self.faults_served[429] = self.faults_served.get(429, 0) + 1
            self.fault_times.append(now)
            event_id = crm_event_id if isinstance(crm_event_id, str) else None
            status = None if event_id is None else self._status(event_id)
            self._log(tool, event_id, 429, status, status)
        log.info("%s %s: rate limited", tool, crm_event_id)
        return True

    def take_fault(self) -> int | None:
        """The status to fail this request with, if any."""
        with self.lock:
            faults = self.faults
            status: int | None = None
            if faults.fail_next > 0:
                faults.fail_next -= 1
                status = faults.status
            else:
                roll = self.random.random()
                for code, rate in faults.rates.items():
                    if roll < rate:
                        status = int(code)
                        break
                    roll -= rate
            if status is not None:
                self.faults_served[status] = self.faults_served.get(status, 0) + 1
                self.fault_times.append(self.clock())
            return status

    def lose_answer(self, rate: float) -> bool:
        """True when a proxy loses this answer (with probability `rate`, drawn from `random`
        so seeded sandboxes repeat); counted in `answers_lost`. Draws nothing at rate 0, so
        turning the switch off leaves other seeded draws as they were."""
        if rate <= 0:
            return False
        with self.lock:
            lost = self.random.random() < rate
            if lost:
                self.answers_lost += 1
        if lost:
            log.info("answer lost on the way (rate %g)", rate)
        return lost

    # --- under the lock ---------------------------------------------------------------------

    def _refusal(self, action: str, crm_event_id: str) -> Answer | None:
        """The answers given before the meeting is looked up."""
        if not CRM_EVENT_ID.fullmatch(crm_event_id):
            return Answer(400, MALFORMED_ID)
        if action != "get" and self.missing_permission:
            permission = self.missing_permission
            return _error(
                403,
                "MissingPermission",
                f"Missing permission: {permission}",
                {"permission": permission},
            )
        return None

    def _auto_book(self, crm_event_id: str) -> None:
        bookable = self.auto_book and crm_event_id not in self.unlinked
        if bookable and crm_event_id.startswith("00U") and crm_event_id not in self.meetings:
            self.meetings[crm_event_id] = BOOKED

    def _act(self, action: str, crm_event_id: str) -> Answer:
        status = self._status(crm_event_id)
        if status is None:
            return _error(
                404, "CrmEventNotLinked", f"No meeting linked to CRM event {crm_event_id}"
            )
        if action != "get":
            if status != BOOKED:
                meeting_id = self._details(crm_event_id).meeting_id
                spelled = SPELLINGS[self.status_spelling][status]
                return _error(409, "MeetingNotActive", f"Meeting {meeting_id} is already {spelled}")
            status = self.meetings[crm_event_id] = AFTER_ACTION[action]
        return Answer(200, self._record(crm_event_id, status))

    def _status(self, crm_event_id: str) -> str | None:
        status = self.meetings.get(crm_event_id)
        return None if status is None else canonical_status(status)

    def _details(self, crm_event_id: str) -> MeetingDetails:
        details = self.records.get(crm_event_id)
        if details is None:
            details = self.records[crm_event_id] = MeetingDetails.invent(crm_event_id, self.clock())
        return details

    def _record(self, crm_event_id: str, status: str) -> dict[str, Any]:
        return self._details(crm_event_id).record(SPELLINGS[self.status_spelling][status])

    def _log(
        self,
        tool: str,
        crm_event_id: str | None,
        status: int,
        before: str | None,
        after: str | None,
    ) -> None:
        self.calls.append(
            {
                "tool": tool,
                "action": ACTIONS.get(tool),
                "crmEventId": crm_event_id,
                "ok": status < 400,
                "status": status,
                "before": before,
                "after": after,
                "at": self.clock(),
            }
        )


def canonical_status(word: str) -> str:
    """BOOKED, CANCELLED, NO_SHOW or COMPLETED for any spelling of them (Active, Canceled,
    no-show, booked...); ValueError otherwise."""
    status = STATUS_WORDS.get(re.sub(r"[\s_-]", "", str(word)).lower())
    if status is None:
        raise ValueError(f"unknown meeting status {word!r}")
    return status


def create_sandbox_app(sandbox: Sandbox | None = None) -> Flask:
    """The sandbox as a WSGI app: MCP at `/mcp`, controls under `/sandbox/`."""
    state = sandbox or Sandbox()
    app = Flask("crmhook-sandbox")
    app.extensions["sandbox"] = state

    @app.post("/mcp")
    def mcp() -> Response | tuple[Response, int]:
        with state.lock:
            state.in_flight += 1
            state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            return _mcp()
        finally:
            with state.lock:
                state.in_flight -= 1

    def _mcp() -> Response | tuple[Response, int]:
        arrived = time.monotonic()
        faults = state.faults
        if faults.delay_seconds:
            time.sleep(faults.delay_seconds)
        if state.required_token and request.headers.get("Authorization") != (
            f"Bearer {state.required_token}"
        ):
            return _rpc_error(None, -32001, "invalid token", status=401)
        fault = state.take_fault()
        if fault is not None:
            retry_after = faults.retry_after
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            return Response("sandbox fault", status=fault, headers=headers)
        accept = request.headers.get("Accept", "")
        if "application/json" not in accept or "text/event-stream" not in accept:
            return _rpc_error(
                None, -32600, "Accept must list application/json and text/event-stream", status=406
            )
        message = request.get_json(silent=True)
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            return _rpc_error(None, -32700, "not a JSON-RPC 2.0 message", status=400)
        method, message_id = message.get("method"), message.get("id")
        if method == "initialize":
            return _initialize(state, message)
        session = request.headers.get("Mcp-Session-Id", "")
        if faults.expire_sessions:
            with state.lock:
                state.sessions.clear()
                faults.expire_sessions = False
        if session not in state.sessions:
            return _rpc_error(message_id, -32001, "unknown session", status=404 if session else 400)
        if message_id is None:  # a notification, such as notifications/initialized
            return Response(status=202)
        if method == "tools/list":
            tools = [_tool_schema(name) for name in state.offered_tools()]
            return _answer(message_id, {"tools": tools}, faults)
        if method == "tools/call":
            return _tools_call(state, message_id, message.get("params"), faults, arrived)
        if method == "ping":
            return _answer(message_id, {}, faults)
        return _rpc_error(message_id, -32601, f"method {method!r} not found")

    @app.get("/sandbox/calls")
    def calls() -> Response:
        with state.lock:
            return jsonify(list(state.calls))

    @app.post("/sandbox/meetings")
    def seed() -> Response | tuple[Response, int]:
        """Body: {"<crm event id>": "BOOKED" | "CANCELLED" | "NO_SHOW" | "COMPLETED" | null}
        (null: no meeting linked); any casing, and the Edge spellings, are accepted."""
        body = request.get_json(force=True) or {}
        if not isinstance(body, dict):
            return jsonify({"error": "body must be a JSON object"}), 400
        try:
            return jsonify(state.seed(body))
        except ValueError as error:
            return jsonify({"error": str(error)}), 400

    @app.get("/sandbox/meetings/<event_id>")
    def meeting(event_id: str) -> Response:
        return jsonify(state.meeting(event_id))

    @app.get("/sandbox/config")
    def config() -> Response:
        return jsonify(state.config())

    @app.post("/sandbox/config")
    def configure() -> Response | tuple[Response, int]:
        """Body: any of {"tools", "status_spelling", "missing_permission", "rate_limit",
        "rate_limit_retry_after"}; answers them all."""
        body = request.get_json(force=True) or {}
        if not isinstance(body, dict):
            return jsonify({"error": "body must be a JSON object"}), 400
        try:
            return jsonify(state.configure(**body))
        except ValueError as error:
            return jsonify({"error": str(error)}), 400

    @app.get("/sandbox/stats")
    def stats() -> Response:
        return jsonify(state.stats())

    @app.post("/sandbox/faults")
    def set_faults() -> Response | tuple[Response, int]:
        """Body: any Faults fields; the ones left out are off. Answers them all."""
        body = request.get_json(force=True) or {}
        try:
            faults = Faults(**body)
        except (TypeError, ValueError) as error:  # not an object, an unknown field, a bad value
            return jsonify({"error": str(error)}), 400
        with state.lock:
            state.faults = faults
            return jsonify(asdict(faults))

    @app.post("/sandbox/reset")
    def reset() -> Response:
        state.reset()
        return jsonify({"reset": True})

    return app


def _initialize(state: Sandbox, message: dict[str, Any]) -> Response:
    asked = (message.get("params") or {}).get("protocolVersion")
    version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[-1]
    session = uuid.uuid4().hex
    with state.lock:
        state.sessions.add(session)
    result = {
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": False}},
        "serverInfo": {"name": "chilipiper-sandbox", "version": "0.2.0"},
    }
    response = _answer(message.get("id"), result, state.faults)
    response.headers["Mcp-Session-Id"] = session
    return response


def _tools_call(
    state: Sandbox, message_id: Any, params: object, faults: Faults, arrived: float
) -> Response | tuple[Response, int]:
    """A tools/call: the rate limit first (it counts every call), then the JSON-RPC checks,
    then the tool, whose HTTP-ish errors become `isError` results. `arrived` is when the
    request came in (time.monotonic())."""
    if not isinstance(params, dict):
        params = {}
    name = str(params.get("name"))
    arguments = params.get("arguments")
    event_id = arguments.get("crmEventId") if isinstance(arguments, dict) else None
    if state.over_rate_limit(name, event_id):
        headers = {"Retry-After": "1"} if state.rate_limit_retry_after else {}
        return Response(
            _compact(dict(RATE_LIMITED_BODY)),
            status=429,
            headers=headers,
            mimetype="application/json",
        )
    if name not in state.offered_tools():
        return _rpc_error(message_id, -32602, f"Unknown tool: {name}")
    if not isinstance(event_id, str) or not event_id:
        return _rpc_error(message_id, -32602, "argument crmEventId is required")
    if ACTIONS[name] == "get":  # how callers reconcile: never delayed, lost or trickled
        return _answer(message_id, state.call_tool(name, event_id).mcp_result(), faults)
    return _irreversible_call(state, message_id, name, event_id, faults, arrived)


def _irreversible_call(
    state: Sandbox, message_id: Any, tool: str, event_id: str, faults: Faults, arrived: float
) -> Response:
    """A call that cannot be undone, through the faults that part its effect from its answer:
    the effect lands late, then the answer is lost or trickled (or, all off, given as usual)."""
    if faults.late_effect_seconds > 0:
        due = arrived + faults.late_effect_seconds
        answer = _late_effect(state, tool, event_id, due - time.monotonic())
    else:
        answer = state.call_tool(tool, event_id)
    if state.lose_answer(faults.lose_answer_rate):
        return Response(
            "sandbox: the upstream answer was lost",
            status=faults.lost_answer_status,
            mimetype="text/plain",
        )
    if faults.trickle_seconds > 0:
        return _trickle(_message(message_id, answer.mcp_result()), faults)
    return _answer(message_id, answer.mcp_result(), faults)


def _late_effect(state: Sandbox, tool: str, event_id: str, delay: float) -> Answer:
    """The call, applied by a timer thread `delay` seconds from now, once this request waited
    for it. The timer, not the request, applies it: it lands exactly once whether or not the
    caller still listens (a dropped connection only shows when the answer is written) and
    even if the server gives up on this request's thread."""
    answers: list[Answer] = []
    timer = threading.Timer(
        max(delay, 0.0), lambda: answers.append(state.call_tool(tool, event_id))
    )
    timer.daemon = True  # a stopping sandbox drops it, as a crashing ChiliPiper would
    timer.start()
    timer.join()
    return answers[0] if answers else Answer(500, "sandbox: the late effect failed")


def _trickle(message: dict[str, Any], faults: Faults) -> Response:
    """An SSE answer that sends a comment every `trickle_interval` seconds for
    `trickle_seconds`, then `message`: a caller timing each read never times out, only one
    that bounds the whole answer does."""

    def stream() -> Iterator[str]:
        deadline = time.monotonic() + faults.trickle_seconds
        while (left := deadline - time.monotonic()) > 0:
            yield ": .\n\n"
            time.sleep(min(faults.trickle_interval, left))
        yield f"event: message\ndata: {json.dumps(message)}\n\n"

    return Response(stream(), mimetype="text/event-stream")


def _message(message_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": message_id, "result": result}


def _answer(message_id: Any, result: dict[str, Any], faults: Faults) -> Response:
    message = _message(message_id, result)
    if faults.sse:

        def stream() -> Iterator[str]:
            yield ": sandbox stream\n\n"
            yield f"event: message\ndata: {json.dumps(message)}\n\n"

        return Response(stream(), mimetype="text/event-stream")
    return jsonify(message)


def _rpc_error(message_id: Any, code: int, text: str, status: int = 200) -> tuple[Response, int]:
    body = {"jsonrpc": "2.0", "id": message_id, "error": {"code": code, "message": text}}
    return jsonify(body), status


def _tool_schema(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": TOOLS[name],
        "inputSchema": {
            "type": "object",
            "properties": {"crmEventId": {"type": "string", "description": "Salesforce Event ID"}},
            "required": ["crmEventId"],
        },
    }


def _error(status: int, code: str, message: str, arguments: dict[str, str] | None = None) -> Answer:
    """An Edge API error answer: {"errorCode", "errorMessage"[, "arguments"]}."""
    body: dict[str, Any] = {"errorCode": code, "errorMessage": message}
    if arguments:
        body["arguments"] = arguments
    return Answer(status, body)


def _check_setting(name: str, value: Any) -> Any:
    """`value` if it is a valid value for the switch `name` (rate_limit as a float), else
    ValueError."""
    if name not in DEFAULT_CONFIG:
        raise ValueError(f"unknown setting {name!r} (known: {', '.join(DEFAULT_CONFIG)})")
    if name == "tools" and value not in TOOL_SETS:
        raise ValueError(f"tools must be one of {', '.join(TOOL_SETS)}, not {value!r}")
    if name == "status_spelling" and value not in SPELLINGS:
        raise ValueError(f"status_spelling must be one of {', '.join(SPELLINGS)}, not {value!r}")
    if name == "missing_permission" and not (value is None or (isinstance(value, str) and value)):
        raise ValueError(f"missing_permission must be a permission name or null, not {value!r}")
    if name == "rate_limit" and value is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"rate_limit must be calls per second or null, not {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"rate_limit must be positive, not {value!r}")
        return float(value)
    if name == "rate_limit_retry_after" and not isinstance(value, bool):
        raise ValueError(f"rate_limit_retry_after must be true or false, not {value!r}")
    return value


def _person(rng: random.Random, domain: str) -> Person:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    return Person(f"{first} {last}", f"{first}.{last}@{domain}".lower())


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _compact(body: Mapping[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))
