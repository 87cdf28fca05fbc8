"""How log lines look: `LOG_FORMAT=json` (one JSON object per line, for a log pipeline) or
`text` (for a terminal: `crmhook dev`), and the correlation fields every line carries.

A line written while an operation runs says which: its `event_id`, `operation_key`, `action`,
`task_id` and `attempt` are bound once, where the task starts (`bound`), rather than passed to
every call that might log; a line can add its own (`tool`, `outcome`) with `extra=`. In JSON
they are fields; in text, the messages already name the operation.

Why formatters on the handlers that gunicorn and Celery create, rather than our own handlers:
both set up their logging themselves (levels, stdout redirection, gunicorn's access log) and
keep doing so; swapping the formatter is the smallest change that makes every line, theirs
included, one JSON object. Secrets are masked before any formatter runs (`worker.redaction`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pythonjsonlogger.json import JsonFormatter

from worker import redaction

LogFormat = Literal["json", "text"]
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"

# The fields a line may carry to say what it is about (ARCHITECTURE.md, "Operations").
CORRELATION_FIELDS = (
    "ingest_id",
    "notification_id",
    "event_id",
    "operation_key",
    "action",
    "task_id",
    "attempt",
    "tool",
    "outcome",
)

_NONE: Mapping[str, Any] = MappingProxyType({})
_bound: ContextVar[Mapping[str, Any]] = ContextVar("crmhook_log_fields", default=_NONE)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Every line logged inside the block (in this thread or greenlet) carries `fields`."""
    token = _bound.set({**_bound.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _bound.reset(token)


def bound_fields() -> Mapping[str, Any]:
    return _bound.get()


class JsonLines(JsonFormatter):
    """One object per line: `time`, `level`, `logger`, `message`, then the correlation
    fields (bound, or given with `extra=`), then anything else a line was given; a
    traceback as `exc_info`. Non-ASCII stays readable (`ensure_ascii=False`)."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
            json_default=str,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        for name, value in bound_fields().items():
            log_data.setdefault(name, value)
        if "task_id" not in log_data and (task_id := _celery_task_id()):
            log_data["task_id"] = task_id
        # Celery's task formatter adds these to records as it renders them; not fields of ours.
        for celery_only in ("task_name", "data"):
            if log_data.get(celery_only) in ("???", None):
                log_data.pop(celery_only, None)
        # The record was redacted when it was made; bound fields, and objects that only
        # `str` renders, join the line here, so every value is redacted once more. (The
        # serialized line itself is not: a mask could swallow a JSON escape.)
        for name, value in log_data.items():
            log_data[name] = _redacted(value)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """ISO 8601 in UTC with milliseconds: sortable, and what log pipelines parse."""
        from datetime import UTC, datetime

        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _redacted(value: Any) -> Any:
    """`value` with every string in it redacted; anything JSON cannot hold as it is, as its
    redacted `str`."""
    if isinstance(value, str):
        return redaction.redact(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, dict):
        return {str(key): _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return redaction.redact(str(value))


def _celery_task_id() -> str | None:
    """The running Celery task's ID, for lines of code that did not bind one."""
    try:
        from celery import current_task
    except ImportError:  # pragma: no cover: Celery is a dependency
        return None
    request = getattr(current_task, "request", None)
    task_id = getattr(request, "id", None)
    return task_id if isinstance(task_id, str) else None


class _FormatOnly(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")
    log_format: LogFormat = "json"


def configured_format() -> LogFormat:
    """`LOG_FORMAT` from the environment or `.env`, for processes that log before the whole
    `Settings` can be read (gunicorn's master). A bad value falls back to `json` here; the
    app's `Settings` then refuses it with a message naming the variable."""
    try:
        return _FormatOnly().log_format
    except ValidationError:
        return "json"


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def use_format(log_format: LogFormat, loggers: tuple[logging.Logger, ...] = ()) -> None:
    """Give every handler of the root logger (and of `loggers`) the format's formatter."""
    chosen = formatter(log_format)
    for logger in (logging.getLogger(), *loggers):
        for handler in logger.handlers:
            handler.setFormatter(chosen)


def configure(
    log_format: LogFormat, level: int = logging.INFO, *, capture_warnings: bool = False
) -> None:
    """One handler on stderr with the format's formatter, for a process whose logging nobody
    has set up yet; `capture_warnings` logs Python's warnings (Celery's, say) as lines too."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    root.setLevel(level)
    use_format(log_format)
    logging.captureWarnings(capture_warnings)


def route_celery_notices() -> None:
    """Celery prints its shutdown notices ("worker: Warm shutdown (MainProcess)") straight
    to the terminal, not through logging; with JSON lines they become log lines too."""
    from celery.apps import worker as celery_worker

    notices = logging.getLogger("celery.apps.worker")

    def say(message: str, *_: Any) -> None:
        notices.warning("%s", message.strip())

    celery_worker.safe_say = say
