"""What `crmhook` prints never quotes a secret: configuration errors and `check`'s report."""

from __future__ import annotations

from typing import Any

import pytest

from worker.cli.check import check
from worker.dev.redis_server import free_port
from worker.errors import ConfigError
from worker.settings import Settings, load_settings

SECRET = "Sup3r-S3cret-Value-0123"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("webhook_tokens", f"{SECRET[:10]}"),  # too short
        ("webhook_tokens", f"{SECRET},{SECRET[:8]}"),
        ("admin_tokens", f"bad name:write:{SECRET}"),
        ("admin_tokens", f"ops:admin:{SECRET}"),
        ("admin_tokens", f"ops:write:{SECRET[:8]}"),
        ("admin_tokens", f"ops:write:{SECRET},ops:read:{SECRET}x"),
        ("chilipiper_api_token", [SECRET]),
        ("scalekit_client_secret", {"value": SECRET}),
        ("scalekit_env_url", f"htps://client:{SECRET}@scalekit.example"),
        ("chilipiper_mcp_url", f"ftp://user:{SECRET}@chilipiper.example/mcp"),
    ],
)
def test_a_configuration_error_names_the_variable_never_the_secret(
    variable: str, value: Any
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(redis_url="redis://127.0.0.1:1/0", _env_file=None, **{variable: value})
    assert variable.upper() in str(refused.value)
    assert SECRET[:8] not in str(refused.value)


def test_check_report_never_quotes_a_secret(settings: Settings) -> None:
    unreachable = f"http://user:{SECRET}@127.0.0.1:{free_port()}/mcp?token={SECRET}x"
    quoted = settings.model_copy(
        update={"chilipiper_sandbox_url": unreachable, "chilipiper_timeout_seconds": 1.0}
    )
    report = check(quoted)
    text = "\n".join(line for _, line in report.lines)
    assert not report.ok
    assert "cannot reach ChiliPiper MCP at http://user:[redacted]@127.0.0.1" in text
    assert SECRET not in text
