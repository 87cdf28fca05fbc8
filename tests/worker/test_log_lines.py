"""`LOG_FORMAT=json`'s lines, unit by unit: fields, correlation fields, and no secret in any
of them, however it joined the line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from worker import logs, redaction

SECRET = "s3cr3t-webhook-token-XYZ"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    redaction.install(None, secrets=[SECRET])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("json"))
    logger = logging.getLogger("test.log_lines")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)


def parsed(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class Opaque:
    def __str__(self) -> str:
        return f"an object holding {SECRET}"


def test_bound_fields_and_extras_are_fields_and_carry_no_secret(lines: io.StringIO) -> None:
    log = logging.getLogger("test.log_lines")
    with logs.bound(event_id=f"00U{SECRET}", operation_key="crmhook:op:{cancel:00U}", attempt=2):
        log.info("settled %s", SECRET, extra={"tool": "crm-cancel", "thing": Opaque()})
    log.info("outside")
    [inside, outside] = parsed(lines)
    assert {"time", "level", "logger", "message"} <= inside.keys()
    assert inside["attempt"] == 2
    assert inside["tool"] == "crm-cancel"
    assert inside["operation_key"] == "crmhook:op:{cancel:00U}"
    assert "event_id" not in outside
    assert SECRET not in lines.getvalue()


def test_a_traceback_is_one_field_of_one_line(lines: io.StringIO) -> None:
    try:
        raise ValueError(f"token={SECRET}")
    except ValueError:
        logging.getLogger("test.log_lines").exception("failed")
    [line] = parsed(lines)
    assert "ValueError" in str(line["exc_info"])
    assert SECRET not in lines.getvalue()
