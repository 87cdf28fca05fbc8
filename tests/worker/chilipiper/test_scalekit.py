"""The Scalekit transport against a Scalekit stand-in on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import SandboxServer, ScalekitServer, random_event_id, scalekit_settings
from tests.scalekit_standin import CLIENT_ID, CONNECTION
from worker.chilipiper import build_gateway
from worker.chilipiper.deadline import Deadline
from worker.chilipiper.scalekit import ClientCredentials, ScalekitGateway
from worker.domain.operations import Action
from worker.errors import (
    InDoubtError,
    MissingPermission,
    NoMeetingError,
    PermanentError,
    RetryableError,
    ToolError,
)
from worker.settings import Settings


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2) as client:
        yield client


@pytest.fixture
def gateway(settings: Settings, scalekit: ScalekitServer, client: httpx.Client) -> ScalekitGateway:
    built = build_gateway(scalekit_settings(settings, scalekit), client=client)
    assert isinstance(built, ScalekitGateway)
    return built


def test_tools_are_called_with_the_connector_prefix_and_identifier(
    gateway: ScalekitGateway, scalekit: ScalekitServer, sandbox: SandboxServer
) -> None:
    event = random_event_id()
    result = gateway.call(Action.CANCEL, event)
    assert result.meeting.status == "CANCELLED"
    assert result.execution_id == scalekit.state.executions[-1]["execution_id"]
    assert scalekit.state.executions[-1]["tool_name"] == f"{CONNECTION}_crm_cancel_post"
    assert sandbox.state.meetings[event] == "CANCELLED"


@pytest.mark.parametrize(
    ("tools", "used"),
    [("v1", "chilipipermcp_crm-noshow"), ("v2", "chilipipermcp_crm_noshow_post")],
)
def test_the_catalogue_names_are_used_as_listed(
    gateway: ScalekitGateway,
    scalekit: ScalekitServer,
    sandbox: SandboxServer,
    tools: str,
    used: str,
) -> None:
    """Scalekit spells v1 tools with dashes and v2 with underscores after the prefix."""
    sandbox.configure(tools=tools)
    assert gateway.call(Action.NOSHOW, random_event_id()).meeting.status == "NO_SHOW"
    assert scalekit.state.executions[-1]["tool_name"] == used


def test_chilipipers_refusal_through_scalekit_keeps_its_meaning(
    gateway: ScalekitGateway, sandbox: SandboxServer
) -> None:
    sandbox.configure(missing_permission="meeting.modify")
    with pytest.raises(MissingPermission, match=r"lacks the permission meeting\.modify"):
        gateway.call(Action.CANCEL, random_event_id())


def test_token_is_cached_and_shared(gateway: ScalekitGateway, scalekit: ScalekitServer) -> None:
    before = scalekit.state.tokens_issued
    for _ in range(5):
        gateway.call(Action.GET, random_event_id())
    assert scalekit.state.tokens_issued - before == 1


def test_token_is_refreshed_shortly_before_it_expires(
    gateway: ScalekitGateway, scalekit: ScalekitServer
) -> None:
    scalekit.state.token_lifetime = 2  # refreshed after 2 - 0.2 s
    gateway.call(Action.GET, random_event_id())
    issued = scalekit.state.tokens_issued
    gateway.call(Action.GET, random_event_id())
    assert scalekit.state.tokens_issued == issued
    time.sleep(2)
    gateway.call(Action.GET, random_event_id())
    assert scalekit.state.tokens_issued == issued + 1


def test_one_401_refreshes_the_token_and_the_call_goes_through(
    gateway: ScalekitGateway, scalekit: ScalekitServer
) -> None:
    gateway.call(Action.GET, random_event_id())
    issued = scalekit.state.tokens_issued
    scalekit.state.reject_tokens = 1  # revoked
    assert gateway.call(Action.GET, random_event_id()).meeting.status == "BOOKED"
    assert scalekit.state.tokens_issued == issued + 1


def test_401_twice_is_permanent(gateway: ScalekitGateway, scalekit: ScalekitServer) -> None:
    scalekit.state.reject_tokens = 2
    with pytest.raises(PermanentError, match="401 twice"):
        gateway.call(Action.GET, random_event_id())


def test_wrong_client_secret_is_permanent(
    settings: Settings, scalekit: ScalekitServer, client: httpx.Client
) -> None:
    credentials = ClientCredentials(f"{scalekit.url}/oauth/token", CLIENT_ID, "wrong", client)
    with pytest.raises(PermanentError, match="SCALEKIT_CLIENT_SECRET"):
        credentials.get(Deadline(5))


def test_no_meeting_linked_is_a_permanent_tool_error(gateway: ScalekitGateway) -> None:
    with pytest.raises(NoMeetingError, match="No meeting linked"):
        gateway.call(Action.NOSHOW, random_event_id("00V"))


def test_already_cancelled_is_a_tool_error(gateway: ScalekitGateway) -> None:
    event = random_event_id()
    gateway.call(Action.CANCEL, event)
    with pytest.raises(ToolError, match=r"HTTP 409: MeetingNotActive: .* already Canceled"):
        gateway.call(Action.CANCEL, event)


def test_429_is_retried_after_retry_after(
    gateway: ScalekitGateway, scalekit: ScalekitServer
) -> None:
    gateway.call(Action.GET, random_event_id())
    scalekit.state.fail_next, scalekit.state.fail_status, scalekit.state.retry_after = 1, 429, 1
    started = time.monotonic()
    assert gateway.call(Action.GET, random_event_id()).meeting.status == "BOOKED"
    assert time.monotonic() - started >= 0.9


@pytest.mark.parametrize(("status", "kind"), [(503, RetryableError), (502, InDoubtError)])
def test_persistent_5xx_on_cancel(
    gateway: ScalekitGateway, scalekit: ScalekitServer, status: int, kind: type[Exception]
) -> None:
    gateway.call(Action.GET, random_event_id())
    scalekit.state.fail_next, scalekit.state.fail_status = 100, status
    with pytest.raises(kind, match=f"HTTP {status}"):
        gateway.call(Action.CANCEL, random_event_id())


def test_scoped_tools_are_listed_across_pages(gateway: ScalekitGateway) -> None:
    assert sorted(gateway.list_tools()) == sorted(
        f"{CONNECTION}_{tool}"
        for tool in ("crm-get", "crm-cancel", "crm-noshow", "crm_cancel_post", "crm_noshow_post")
    )


def test_unknown_identifier_is_permanent(
    settings: Settings, scalekit: ScalekitServer, client: httpx.Client
) -> None:
    wrong = scalekit_settings(settings, scalekit).model_copy(
        update={"scalekit_identifier": "nobody"}
    )
    gateway = build_gateway(wrong, client=client)
    with pytest.raises(PermanentError, match="connected account not found"):
        gateway.call(Action.GET, random_event_id())
