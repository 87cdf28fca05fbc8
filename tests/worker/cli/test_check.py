"""`crmhook check` against the sandbox and the Scalekit stand-in, right and wrong."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner

from tests.conftest import SandboxServer, ScalekitServer, random_event_id, scalekit_settings
from tests.scalekit_standin import CLIENT_ID, CLIENT_SECRET, IDENTIFIER
from worker.chilipiper.errors import tool_failure
from worker.cli import main
from worker.cli.check import check, explain
from worker.dev.redis_server import free_port
from worker.settings import Settings
from worker.store import keys


@pytest.fixture
def token_required(sandbox: SandboxServer) -> Iterator[str]:
    sandbox.state.required_token = "cp-secret-token-0123456789"
    yield sandbox.state.required_token
    sandbox.state.required_token = None


def lines(settings: Settings, event: str | None = None) -> tuple[bool, str]:
    report = check(settings, event)
    return report.ok, "\n".join(text for _, text in report.lines)


def test_mcp_ok_names_the_tools_in_use(settings: Settings, sandbox: SandboxServer) -> None:
    ok, text = lines(settings, random_event_id())
    assert ok, text
    assert "tools in use: crm-get, crm-noshow-post, crm-cancel-post" in text
    assert "meeting status Active" in text  # as ChiliPiper wrote it


def test_mcp_v1_tools_only(settings: Settings, sandbox: SandboxServer) -> None:
    sandbox.configure(tools="v1")
    ok, text = lines(settings)
    assert ok, text
    assert "tools in use: crm-get, crm-noshow, crm-cancel" in text


def test_a_listing_without_a_cancel_tool_explains_why_the_worker_will_not_start(
    settings: Settings, sandbox: SandboxServer
) -> None:
    sandbox.configure(tools="get-only")  # a token that may only read
    ok, text = lines(settings)
    assert not ok
    assert "ChiliPiper offers no crm-cancel-post or crm-cancel" in text
    assert "CRM tools: crm-get" in text
    assert "the worker will not start" in text


def test_mcp_bad_token(settings: Settings, token_required: str) -> None:
    wrong = settings.model_copy(
        update={
            "chilipiper_transport": "mcp",
            "chilipiper_mcp_url": settings.chilipiper_sandbox_url,
        }
    )
    ok, text = lines(wrong)
    assert not ok
    assert "ChiliPiper refused the token (HTTP 401): check CHILIPIPER_API_TOKEN" in text


def test_mcp_unreachable_url(settings: Settings) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/mcp"
    ok, text = lines(settings.model_copy(update={"chilipiper_sandbox_url": nowhere}))
    assert not ok
    assert f"cannot reach ChiliPiper MCP at {nowhere} (ConnectError)" in text


def test_event_without_a_meeting(settings: Settings, sandbox: SandboxServer) -> None:
    event = random_event_id("00V")
    ok, text = lines(settings, event)
    assert not ok
    assert f"crm-get {event}: no ChiliPiper meeting is linked to it" in text


def test_scalekit_ok(settings: Settings, scalekit: ScalekitServer) -> None:
    ok, text = lines(scalekit_settings(settings, scalekit))
    assert ok, text
    assert (
        "tools in use: chilipipermcp_crm-get, chilipipermcp_crm_noshow_post, "
        "chilipipermcp_crm_cancel_post" in text
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"scalekit_client_secret": "nope"},
            "Scalekit refused the client credentials (HTTP 401): check SCALEKIT_CLIENT_ID and "
            "SCALEKIT_CLIENT_SECRET",
        ),
        (
            {"scalekit_connection_name": "chilipiper-prod"},
            "no tools for connection 'chilipiper-prod' and identifier 'user_123': check "
            "SCALEKIT_CONNECTION_NAME",
        ),
        (
            {"scalekit_identifier": "user_999"},
            "Scalekit has no connected account 'user_999' for connection 'chilipipermcp': check "
            "SCALEKIT_IDENTIFIER",
        ),
        (
            {"scalekit_tool_prefix": "chilipiper"},
            "(the tools are named chilipipermcp_…: set SCALEKIT_TOOL_PREFIX)",
        ),
    ],
)
def test_scalekit_common_mistakes(
    settings: Settings, scalekit: ScalekitServer, change: dict[str, str], expected: str
) -> None:
    from pydantic import SecretStr

    update = {k: SecretStr(v) if k.endswith("secret") else v for k, v in change.items()}
    ok, text = lines(scalekit_settings(settings, scalekit).model_copy(update=update))
    assert not ok
    assert expected in text


def test_cli_exit_status(
    settings: Settings, scalekit: ScalekitServer, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    for name, value in {
        "REDIS_URL": settings.redis_url,
        "CHILIPIPER_TRANSPORT": "scalekit",
        "SCALEKIT_ENV_URL": scalekit.url,
        "SCALEKIT_CLIENT_ID": CLIENT_ID,
        "SCALEKIT_CLIENT_SECRET": CLIENT_SECRET,
        "SCALEKIT_IDENTIFIER": IDENTIFIER,
    }.items():
        monkeypatch.setenv(name, value)
    good = CliRunner().invoke(main, ["check"])
    assert good.exit_code == 0, good.output
    assert "✓ tools in use" in good.output
    monkeypatch.setenv("SCALEKIT_IDENTIFIER", "user_999")
    bad = CliRunner().invoke(main, ["check"])
    assert bad.exit_code == 1
    assert "✗ Scalekit has no connected account" in bad.output


def test_a_missing_permission_is_explained_by_name(settings: Settings) -> None:
    error = tool_failure(
        "crm-get",
        '403 Forbidden: {"errorCode":"MissingPermission","errorMessage":"Missing permission: '
        'meeting.read"}',
    )
    explained = explain(error, settings.model_copy(update={"chilipiper_transport": "mcp"}))
    assert "lacks the permission meeting.read" in explained
    assert "Command Center" in explained


def test_the_shared_limits_are_shown(
    settings: Settings, sandbox: SandboxServer, idle_redis: redis.Redis
) -> None:
    ok, text = lines(settings)
    assert ok, text
    assert "shared limits: 10 calls/s allowed (ceiling 1000/s), circuit closed" in text
    until = (time.time() + 20) * 1000
    idle_redis.hset(keys.GATE_BREAKER, mapping={"state": "open", "until": until})
    _, text = lines(settings)
    assert re.search(r"circuit open, calls held back (19|20) s more", text), text


def test_redis_out_of_reach_is_said(settings: Settings, sandbox: SandboxServer) -> None:
    nowhere = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    ok, text = lines(nowhere)
    assert not ok
    assert "cannot read the shared limits: Redis at REDIS_URL" in text
