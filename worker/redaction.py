"""Secrets out of every log line: the configured secret values and the known shapes of a
secret (a `token=` parameter, an `Authorization` header, a Salesforce `SessionId`, a password
in a URL) are masked in each log record, once, when the record is made.

Why a log record factory (`logging.setLogRecordFactory`) rather than filters: a filter on a
logger does not see the records its children propagate, and gunicorn and Celery add their
handlers after our code runs, so filters would have to be attached to handlers we do not
create, at moments we do not control. The factory is process-wide and runs before any
logger, filter, handler or formatter, whoever configured them, so every record of every
logger (gunicorn's error and access logs, Celery's, kombu's, ours, tracebacks) is born
redacted. It works on the record's data, not on its rendering, so it holds whatever the
format (text today, JSON later): what a formatter can render (message, exception text,
stack, `extra` fields) is already redacted. `extra` fields are set after the factory runs,
so `Logger.makeRecord` is wrapped for them.

Not covered: text a process writes without `logging` (Celery's start-up banner, which masks
the broker's password itself; `print`), and CLI output: `crmhook check` redacts its own
report, and the listings print stored records, which hold no secret to begin with.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, unquote, urlsplit

from worker.settings import Settings, parse_admin_token

MASK = "[redacted]"
# Shorter configured values are not masked wherever they occur (a password "abc" would
# mask every "abc" in every line); the URL shape below still masks them inside URLs.
SHORTEST_MASKED = 6

_NAMES = r"[\w.-]*?(?:token|secret|password|passwd|api[_-]?key|session[_-]?id)"
SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # A password in a URL: scheme://user:password@host (REDIS_URL, CELERY_BROKER_URL).
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/?#@]*:)[^\s/?#@]+(?=@)", re.I), rf"\1{MASK}"),
    # An `Authorization` (or `Proxy-Authorization`) header or mapping entry, any scheme.
    (
        re.compile(
            r"""(\b(?:proxy-)?authorization["']?[ \t]*[:=][ \t]*["']?(?:[a-z][\w-]*[ \t]+)?)"""
            r"""[^\s"',;}\]]+""",
            re.I,
        ),
        rf"\1{MASK}",
    ),
    # A bearer credential anywhere else (RFC 6750's b64token); 8 characters at least, so
    # that prose ("a bearer token") is left alone.
    (re.compile(r"(\bbearer\s+)[\w\-.~+/]{8,}=*", re.I), rf"\1{MASK}"),
    # `token=…`, `client_secret=…`, `password=…` in a query string, form or log line.
    (re.compile(rf"(\b{_NAMES}=)[^&\s\"'<>#]+", re.I), rf"\1{MASK}"),
    # The same names as quoted keys: JSON, Python reprs (`"access_token": "…"`).
    (re.compile(rf"""(["']{_NAMES}["']\s*[:=]\s*["'])[^"']*(?=["'])""", re.I), rf"\1{MASK}"),
    # A Salesforce SessionId element, in any namespace and case, even cut off at the end.
    (
        re.compile(
            r"(<(?:[\w.-]+:)?session_?id(?:\s[^<>]*)?(?<!/)>).*?(?=</(?:[\w.-]+:)?session_?id\s*>|\Z)",
            re.I | re.S,
        ),
        rf"\1{MASK}",
    ),
    # A Salesforce session ID on its own: the org's ID, "!", then the opaque rest.
    (re.compile(r"\b00D[A-Za-z0-9]{12,15}![\w.]{16,}"), MASK),
)


_ENCODED_ALNUM = re.compile(r"%(3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa])")
# What every shape above needs to match (a literal of each, or a percent escape that could
# spell one; for a session ID its org and "!", as an org ID alone, in every Outbound
# Message, is no secret), found in one pass: a line with none of these (most lines: "Task
# ... received") cannot hold a shape, so only the configured values are looked for in it.
# Every line of every process passes through here, so this is the worker's hot path.
_SHAPE_TRIGGERS = r"://|authoriz|bearer|token|secret|passw|api[_-]?key|session|00d\w{12,15}!|%"


class Redactor:
    """Masks the given secret values (as written, and as they look URL-encoded) and every
    known secret shape in a text. Immutable: more secrets make a new one."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # A secret's percent-escapes of letters and digits are read as the text's are (see
        # `__call__`), so it is looked for as it will be seen.
        values = {
            spelling
            for secret in secrets
            for spelling in (secret, quote(secret, safe=""), quote_plus(secret), _decoded(secret))
            if len(spelling) >= SHORTEST_MASKED
        }
        self.values = frozenset(values)
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(values, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._triggers = re.compile(_SHAPE_TRIGGERS, re.I)

    def adding(self, secrets: Iterable[str]) -> Redactor:
        return Redactor(self.values | set(secrets))

    def __call__(self, text: str) -> str:
        if self._triggers.search(text) is None:
            return text if self._values is None else self._values.sub(MASK, text)
        # Letters and digits percent-encoded (`tok%65n=…`) read as themselves, so that an
        # encoded name or secret cannot slip past the shapes; other escapes (a `%0A` that
        # would split a log line) stay as they are.
        text = _decoded(text)
        if self._values is not None:
            text = self._values.sub(MASK, text)
        for shape, replacement in SHAPES:
            text = shape.sub(replacement, text)
        return text


def _decoded(text: str) -> str:
    """`text` with letters and digits that were percent-encoded read as themselves."""
    return _ENCODED_ALNUM.sub(lambda match: chr(int(match.group(1), 16)), text)


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold: webhook tokens, admin token secrets, the ChiliPiper
    token, the Scalekit client secret, the sentinels' password, and the passwords of the
    Redis and broker URLs."""
    values = [token.get_secret_value() for token in settings.webhook_tokens]
    values += [
        parse_admin_token(entry, index).secret.get_secret_value()
        for index, entry in enumerate(settings.admin_tokens)
    ]
    for secret in (
        settings.chilipiper_api_token,
        settings.scalekit_client_secret,
        settings.redis_sentinel_password,
    ):
        if secret is not None:
            values.append(secret.get_secret_value())
    # The broker URL built for the sentinels quotes REDIS_URL's password its own way.
    for url in (settings.redis_url, settings.celery_broker_url, settings.broker_url):
        values += url_passwords(url or "")
    return [value for value in values if value]


def url_passwords(urls: str) -> list[str]:
    """The passwords of a URL, or of kombu's `;`-separated fail-over list, as written and
    decoded: in its userinfo (`redis://:secret@host`) or in its query (`?password=secret`,
    which redis-py accepts too)."""
    found = []
    for url in urls.split(";"):
        try:
            parts = urlsplit(url.strip())
            password = parts.password
        except ValueError:  # not a URL at all: nothing to find
            continue
        if password:
            found += [password, unquote(password)]
        found += [value for value in parse_qs(parts.query).get("password", []) if value]
    return found


_lock = threading.Lock()
_redactor = Redactor()


def redact(text: str) -> str:
    """`text` with every secret known to this process, and every secret shape, masked."""
    return _redactor(text)


def install(settings: Settings | None = None, secrets: Iterable[str] = ()) -> None:
    """Redact every log record this process makes from now on: the secrets of `settings`,
    `secrets` (those learnt at run time) and the known shapes.

    Call it as soon as the settings are loaded (web app factory, Celery app, CLI). Calling
    it again adds secrets (a process that loads several settings, such as the tests); the
    factory is installed once, on top of whichever factory was there before."""
    global _redactor
    found = [*(secret_values(settings) if settings is not None else ()), *secrets]
    with _lock:
        _redactor = _redactor.adding(found)
        current = logging.getLogRecordFactory()
        if not isinstance(current, _RedactingFactory):
            logging.setLogRecordFactory(_RedactingFactory(current))
        if not getattr(logging.Logger.makeRecord, "redacts_extra", False):
            logging.Logger.makeRecord = _redacting_make_record(logging.Logger.makeRecord)  # type: ignore[method-assign]


class _RedactingFactory:
    """Makes the record as the previous factory would, then redacts it (`scrub`)."""

    def __init__(self, previous: Callable[..., logging.LogRecord]) -> None:
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        scrub(record, redact)
        return record


def _redacting_make_record(make_record: Callable[..., logging.LogRecord]) -> Any:
    """`Logger.makeRecord` sets a call's `extra` fields on the record after the factory
    made it, so the factory never sees them; formatters do (JSON ones print them all).
    Wrapping the method (the base class's, so every logger, gunicorn's and Celery's
    included, is covered) redacts them too."""

    def redacting(
        self: logging.Logger,
        name: str,
        level: int,
        fn: str,
        lno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        extra: dict[str, Any] | None = None,
        sinfo: str | None = None,
    ) -> logging.LogRecord:
        record = make_record(self, name, level, fn, lno, msg, args, exc_info, func, extra, sinfo)
        for field in extra or ():
            if field in vars(record):
                setattr(record, field, _deep(getattr(record, field), redact))
        return record

    redacting.redacts_extra = True  # type: ignore[attr-defined]
    return redacting


# The attributes every record has; any other is an `extra` field, which formatters (a JSON
# formatter above all) render too.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_TRACEBACKS = logging.Formatter()


def scrub(record: logging.LogRecord, redactor: Callable[[str], str]) -> None:
    """Redact `record` in place. Fails closed: a record that cannot be redacted is replaced
    by a line saying so, never printed as it was."""
    try:
        _scrub(record, redactor)
    except Exception as exc:  # logging must neither raise nor leak
        record.msg = f"[log record withheld: redaction failed ({type(exc).__name__})]"
        record.args = ()
        record.exc_info = record.exc_text = record.stack_info = None


def _scrub(record: logging.LogRecord, redactor: Callable[[str], str]) -> None:
    if isinstance(record.msg, dict) and not record.args:
        record.msg = _deep(record.msg, redactor)  # a structured message stays structured
    else:
        try:
            message = record.getMessage()
        except Exception:  # else the handler would print msg and args raw
            message = f"{record.msg} (arguments that do not fit it: {record.args!r})"
        # Formatted once, here: what is printed is exactly what was redacted.
        record.msg, record.args = redactor(message), ()
    if record.exc_info:
        if record.exc_info[0] is not None:
            record.exc_text = redactor(_TRACEBACKS.formatException(record.exc_info))
        # Formatters that render the exception themselves (JSON ones do) would print it
        # unredacted, and an exception carries more than its text (its frames' locals):
        # from here on, the redacted text is the exception.
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = redactor(record.exc_text)
    if record.stack_info:
        record.stack_info = redactor(record.stack_info)
    for name, value in list(vars(record).items()):
        if name not in _STANDARD:
            setattr(record, name, _deep(value, redactor))


def _deep(value: Any, redactor: Callable[[str], str]) -> Any:
    """Strings redacted inside dicts, lists and tuples; other objects left as they are."""
    if isinstance(value, str):
        return redactor(value)
    if isinstance(value, dict):
        return {key: _deep(item, redactor) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_deep(item, redactor) for item in value)
    return value
