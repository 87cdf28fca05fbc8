"""The redaction of secrets: the function on texts, and the log records it rewrites."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import redaction
from worker.chilipiper import errors as chilipiper_errors
from worker.redaction import MASK, Redactor, secret_values
from worker.settings import load_settings

TOKEN = "whk-unit-4f9c2e7a1b3d5f60"
OTHER = "cp-unit-9a8b7c6d5e4f3a2b"
SESSION = "00D5g000004XyZq!AQ4AQFr0mS4lesforce.Ses5ionXyZ_0123456789abcdef"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "POST /salesforce/outbound/cancel?token=anything-at-all-42&x=1 HTTP/1.1",
            f"POST /salesforce/outbound/cancel?token={MASK}&x=1 HTTP/1.1",
        ),
        ("GET /a?x=1&Token=ZZ", f"GET /a?x=1&Token={MASK}"),
        ("form grant_type=x&client_secret=s3cr3t", f"form grant_type=x&client_secret={MASK}"),
        ("Authorization: Bearer abc.def-ghi_jkl", f"Authorization: Bearer {MASK}"),
        ("authorization: basic dXNlcjpwYXNz", f"authorization: basic {MASK}"),
        ("{'Authorization': 'Bearer abcdefghij'}", f"{{'Authorization': 'Bearer {MASK}'}}"),
        ("sent with Bearer eyJhbGciOi.J9xyz", f"sent with Bearer {MASK}"),
        (
            '{"access_token": "ey.x", "expires_in": 3}',
            f'{{"access_token": "{MASK}", "expires_in": 3}}',
        ),
        ("redis://:hunter2@10.0.0.1:6379/0", f"redis://:{MASK}@10.0.0.1:6379/0"),
        ("rediss://user:p%40ss@redis.example:6380/1", f"rediss://user:{MASK}@redis.example:6380/1"),
        (
            f"<sessionId>{SESSION}</sessionId>",
            f"<sessionId>{MASK}</sessionId>",
        ),
        (
            f'<sf:SESSIONID xmlns:sf="urn:x">{SESSION}</sf:SESSIONID><Id>1</Id>',
            f'<sf:SESSIONID xmlns:sf="urn:x">{MASK}</sf:SESSIONID><Id>1</Id>',
        ),
        (f"cut off: <SessionId>{SESSION[:30]}", f"cut off: <SessionId>{MASK}"),
        (f"a bare session ID {SESSION} in prose", f"a bare session ID {MASK} in prose"),
    ],
)
def test_every_secret_shape_is_masked(raw: str, expected: str) -> None:
    assert Redactor()(raw) == expected


@pytest.mark.parametrize(
    "harmless",
    [
        "crmhook:op:{cancel:00U5g00000MnOpQEAV}: failed (HTTP 404)",
        '<SessionId xsi:nil="true"/><Id>04l5g000000AbCdAAK</Id>',
        "http://127.0.0.1:8000/readyz and http://127.0.0.1:8000/x@y",
        "the bearer token is refused",
        "tokens_issued=3 next_page_token_count=2",
    ],
)
def test_text_without_a_secret_is_left_alone(harmless: str) -> None:
    assert Redactor()(harmless) == harmless


def test_configured_secrets_are_masked_inside_longer_text_and_url_encoded() -> None:
    redactor = Redactor([TOKEN, OTHER, "p@ss/word+1"])
    text = f"x{TOKEN}y and {OTHER}, then p%40ss%2Fword%2B1 and p%40ss%2Fword%2B1 again"
    assert redactor(text) == f"x{MASK}y and {MASK}, then {MASK} and {MASK} again"


def test_a_secret_that_contains_another_is_masked_whole() -> None:
    assert Redactor(["abcdef", "abcdefghij"])("<abcdefghij>") == f"<{MASK}>"


def test_a_short_secret_is_masked_in_urls_only() -> None:
    redactor = Redactor(["pw1"])
    assert redactor("redis://:pw1@h/0 pw1") == f"redis://:{MASK}@h/0 pw1"


def test_secret_values_come_from_every_secret_setting() -> None:
    settings = load_settings(
        redis_url="redis://:redis-pass-1@h:1/0",
        celery_broker_url="redis://broker:broker%2Fpass@h:1/0;redis://:fail-over@h2:1/0",
        webhook_tokens=f"{TOKEN},second-token-0123456789",
        admin_tokens="ops:read:admin-secret-0123456789,bare-admin-secret-012345",
        chilipiper_api_token=OTHER,
        scalekit_client_secret="scalekit-secret-0123",
        _env_file=None,
    )
    assert set(secret_values(settings)) == {
        TOKEN,
        "second-token-0123456789",
        "admin-secret-0123456789",
        "bare-admin-secret-012345",
        OTHER,
        "scalekit-secret-0123",
        "redis-pass-1",
        "broker%2Fpass",
        "broker/pass",
        "fail-over",
    }


def test_the_sentinels_password_and_the_masters_are_secrets() -> None:
    settings = load_settings(
        redis_url="redis://:master:pass@ignored:1/0",
        redis_sentinels="127.0.0.1:26379",
        redis_sentinel_master="crmhook",
        redis_sentinel_password="sentinel-pass-0123",
        _env_file=None,
    )
    values = set(secret_values(settings))
    assert {"sentinel-pass-0123", "master:pass", "master%3Apass"} <= values
    assert all(value not in Redactor(values)(settings.broker_url) for value in values)


# --- log records ----------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A child logger whose records reach a handler on its parent, as gunicorn's and
    Celery's handlers receive records propagated from loggers they never saw."""
    redaction.install(secrets=[TOKEN, OTHER])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    parent = logging.getLogger("redaction-test")
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG)
    yield logging.getLogger("redaction-test.child.grandchild"), stream
    parent.removeHandler(handler)


def test_a_record_propagated_from_a_child_logger_is_redacted(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = captured
    log.info("got %s from %s", f"token={TOKEN}", f"redis://:{OTHER}@h/0")
    log.warning("several: %s %s", TOKEN, OTHER)
    assert stream.getvalue() == (
        f"INFO got token={MASK} from redis://:{MASK}@h/0\nWARNING several: {MASK} {MASK}\n"
    )


def test_exception_text_is_redacted_and_the_exception_object_dropped(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = captured
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    log.addHandler(keep)
    try:
        raise ValueError(f"refused Authorization: Bearer {TOKEN}")
    except ValueError:
        log.exception("call failed")
    finally:
        log.removeHandler(keep)
    text = stream.getvalue()
    assert TOKEN not in text
    assert f"ValueError: refused Authorization: Bearer {MASK}" in text
    assert "Traceback (most recent call last)" in text
    [record] = records
    assert record.exc_info is None  # a formatter of its own cannot render it unredacted


def test_redaction_holds_for_a_json_formatter_that_renders_the_record_itself(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    """Formats come and go (JSON next): what any formatter can read is already redacted."""

    class Json(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            extra = {"url": getattr(record, "url", None), "data": getattr(record, "data", None)}
            return json.dumps(
                {
                    "message": record.getMessage(),
                    "exc": record.exc_text
                    or (record.exc_info and self.formatException(record.exc_info)),
                    **extra,
                }
            )

    log, _ = captured
    json_stream = io.StringIO()
    handler = logging.StreamHandler(json_stream)
    handler.setFormatter(Json())
    log.addHandler(handler)
    try:
        try:
            raise RuntimeError(TOKEN)
        except RuntimeError:
            log.error(
                "with %(token)s",
                {"token": TOKEN},
                exc_info=True,
                extra={"url": f"http://x/?token={OTHER}", "data": {"args": [OTHER]}},
            )
        log.info({"event": "structured", "secret": OTHER})
    finally:
        log.removeHandler(handler)
    rendered = json_stream.getvalue()
    assert TOKEN not in rendered
    assert OTHER not in rendered
    first = json.loads(rendered.splitlines()[0])
    assert first["message"] == f"with {MASK}"
    assert first["url"] == f"http://x/?token={MASK}"
    assert first["data"] == {"args": [MASK]}
    assert first["exc"].endswith(f"RuntimeError: {MASK}")


def test_a_message_whose_arguments_do_not_fit_is_printed_redacted(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = captured
    log.info("one %s two %s", TOKEN)  # a bug: logging would print the arguments raw
    assert TOKEN not in stream.getvalue()
    assert "arguments that do not fit" in stream.getvalue()


def test_installing_again_adds_secrets_without_stacking_factories() -> None:
    redaction.install(secrets=["first-secret-abcdef"])
    factory = logging.getLogRecordFactory()
    redaction.install(secrets=["second-secret-abcdef"])
    assert logging.getLogRecordFactory() is factory
    assert redaction.redact("first-secret-abcdef second-secret-abcdef") == f"{MASK} {MASK}"


def test_chilipiper_words_kept_in_a_dead_letter_are_redacted() -> None:
    """A stored value is no log record: what ChiliPiper echoes back is redacted on its way
    into a dead letter's `last_error` too."""
    kept = chilipiper_errors.redact(
        "401 for ann@example.com: Authorization: Bearer abcdefgh12345678 not accepted"
    )
    assert "abcdefgh12345678" not in kept
    assert "ann@example.com" not in kept


def test_a_password_in_a_urls_query_is_a_secret_too() -> None:
    assert redaction.url_passwords("redis://cache:6379/0?password=s3cret-in-query") == [
        "s3cret-in-query"
    ]


def test_percent_encoded_letters_do_not_hide_a_name_or_a_secret() -> None:
    redact = redaction.Redactor(["configured-secret-1234"])
    line = "Invalid request line: 'POST /c?tok%65n=abcdefgh12 HTTP/1.1' configured-secr%65t-1234"
    shown = redact(line)
    assert "abcdefgh12" not in shown
    assert "configured-secret-1234" not in shown.replace("%65", "e")
    assert "%0A" in redact("a%0Ab")  # other escapes stay: no new line in a log line


# Pieces of log lines that come near a shape, or are one, to be put together at random.
FRAGMENTS = [
    "token=",
    "?access_token=abc123xyz",
    "tok%65n=",
    "%74oken",
    "Authorization: Bearer ",
    "bearer ",
    "redis://:pw@host:6379",
    "://",
    "<sf:SessionId>",
    "00D5g000004XyZq!AQ4AQHh1bVqExample.TokenValue",
    '"client_secret": "',
    "password",
    "s3cr3t-value-123",
    "Task crmhook.perform[1f0c] received",
    " ",
    "=",
    '"',
    "@",
]


@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=8), max_size=12))
def test_the_quick_screen_leaves_every_line_as_the_full_redaction_does(parts: list[str]) -> None:
    line = "".join(parts)
    screened = Redactor(["s3cr3t-value-123"])
    thorough = Redactor(["s3cr3t-value-123"])
    thorough._triggers = re.compile("")  # every line takes the full path
    assert screened(line) == thorough(line)


def test_a_secret_with_an_escaped_letter_is_masked_as_it_is_read() -> None:
    """The line's `%41` is read as `A` before secrets are looked for; so is the secret's."""
    redactor = Redactor(["abc%41defgh-123"])
    assert "defgh" not in redactor("token abc%41defgh-123 in a line")
    assert "defgh" not in redactor("the same, decoded: abcAdefgh-123")
