"""`crmhook dev`'s banner: paste-ready for what it generated, silent about the caller's secrets."""

from __future__ import annotations

import re
import shlex

from worker.dev.runner import DevStack

CALLER_TOKEN = "caller-webhook-token-0123456789"
CALLER_ADMIN = "caller-admin-secret-0123456789"
CALLER_PASSWORD = "caller-redis-password-42"


def banner(environ: dict[str, str], redis_url: str = "redis://127.0.0.1:6390/0") -> str:
    stack = DevStack(port=8123, sandbox_port=8765, concurrency=4, environ=environ)
    return stack.banner(stack.environment(redis_url))


def test_tokens_generated_for_the_session_are_shown_ready_to_paste() -> None:
    text = banner({"PATH": "/usr/bin"})
    curl = re.search(r"^\s*(curl -sS -X POST .+)$", text, re.MULTILINE)
    assert curl is not None
    url = next(arg for arg in shlex.split(curl.group(1)) if arg.startswith("http"))
    assert re.fullmatch(r"http://127.0.0.1:8123/salesforce/outbound/cancel\?token=dev-\S{20,}", url)
    assert re.search(r"Authorization: Bearer dev-admin-\S{20,}'", text)
    assert "REDIS_URL=redis://127.0.0.1:6390/0 crmhook status" in text  # no password: shown


def test_secrets_from_the_environment_are_never_printed() -> None:
    redis_url = f"redis://crmhook:{CALLER_PASSWORD}@10.0.0.5:6379/0"
    environ = {
        "WEBHOOK_TOKENS": f"{CALLER_TOKEN},second-token-0123456789",
        "ADMIN_TOKENS": f"ops:write:{CALLER_ADMIN}",
        "REDIS_URL": redis_url,
    }
    text = banner(environ, redis_url)
    for secret in (CALLER_TOKEN, "second-token-0123456789", CALLER_ADMIN, CALLER_PASSWORD):
        assert secret not in text
    # The curl still works in a POSIX shell that has the caller's WEBHOOK_TOKENS.
    assert '"http://127.0.0.1:8123/salesforce/outbound/cancel?token=${WEBHOOK_TOKENS%%,*}"' in text
    assert "Authorization: Bearer <the secret of ADMIN_TOKENS entry 'ops'>" in text
    assert "crmhook status 00U5g00000MnOpQ  # with your REDIS_URL (password not shown)" in text


def test_with_sentinels_no_redis_is_embedded_and_the_children_get_the_sentinels() -> None:
    environ = {"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_SENTINEL_MASTER": "crmhook"}
    stack = DevStack(port=8123, sandbox_port=8765, concurrency=4, environ=environ)
    assert stack.redis_url() is None
    assert stack.redis is None  # nothing started
    env = stack.environment(None)
    assert "REDIS_URL" not in env
    assert env["REDIS_SENTINELS"] == "10.0.0.1:26379"
    assert env["REDIS_SENTINEL_MASTER"] == "crmhook"
    assert "crmhook status 00U5g00000MnOpQ  # with your REDIS_SENTINELS settings" in stack.banner(
        env
    )
