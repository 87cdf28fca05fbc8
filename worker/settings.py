"""The one settings object: environment variables (and `.env`), validated once at start-up.

A missing or malformed value raises `ConfigError` naming the variable, so `web` and `worker`
stop with one clear line instead of crash-looping on a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.domain.salesforce_ids import canonical_id
from worker.errors import ConfigError, InvalidSalesforceId

CommaList = Annotated[tuple[str, ...], NoDecode]
SecretList = Annotated[tuple[SecretStr, ...], NoDecode]

_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_KEY_PREFIX = re.compile(r"[A-Za-z0-9]{3}")
_USERINFO_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")
MIN_SECRET_LENGTH = 16
DEFAULT_MCP_URL = "https://fire.chilipiper.com/api/fire-edge/v1/org/mcp"
SANDBOX_PORT = 8765
DEFAULT_SANDBOX_URL = f"http://127.0.0.1:{SANDBOX_PORT}/mcp"


def _split(value: object) -> object:
    """`a, b,,c` → ("a", "b", "c"): comma-separated variables, blanks ignored."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """Typed view of the environment. Field names are the variables' names in lower case."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # The store's Redis (and the broker's, unless CELERY_BROKER_URL says otherwise). With
    # REDIS_SENTINELS, its password and database number (if given) are used on the master
    # the sentinels name; the URL may then be left out.
    redis_url: str | None = None
    celery_broker_url: str | None = None
    # High availability (issue 15): `host:port,host:port` of Redis Sentinels and the name of
    # the master they watch; store and broker follow whichever node is master now.
    redis_sentinels: CommaList = ()
    redis_sentinel_master: str | None = None
    redis_sentinel_password: SecretStr | None = None

    # Required by the web process only (see `require_web`).
    webhook_tokens: SecretList = ()
    # `[name:[scope:]]secret`, comma-separated; see `admin_credentials`.
    admin_tokens: SecretList = ()
    salesforce_org_ids: CommaList = ()
    salesforce_id_prefixes: CommaList = ("00U",)
    salesforce_event_id_field: str = "Id"
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)

    chilipiper_transport: Literal["mcp", "scalekit", "sandbox"] = "mcp"
    chilipiper_mcp_url: str = DEFAULT_MCP_URL
    chilipiper_api_token: SecretStr | None = None
    chilipiper_sandbox_url: str = DEFAULT_SANDBOX_URL
    chilipiper_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    chilipiper_attempts: int = Field(default=3, ge=1, le=10)
    chilipiper_max_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    # One call, its in-call retries and a slowly streamed answer included, ends by then.
    chilipiper_call_deadline_seconds: float = Field(default=120.0, gt=0, le=3600)
    # An abandoned irreversible call is reconciled (crm-get) no sooner than this after it
    # began: by then it can no longer take effect (see `timing_problems`).
    chilipiper_settle_seconds: float = Field(default=150.0, gt=0)
    # Shared by every worker process and host: ChiliPiper sees one account. The rate adapts
    # to ChiliPiper's 429s; this optional ceiling caps it (unset: no ceiling).
    chilipiper_rate_limit: str | None = None
    circuit_failure_rate_percent: float = Field(default=50.0, gt=0, le=100)
    circuit_window_calls: int = Field(default=100, ge=10)
    circuit_trial_calls: int = Field(default=3, ge=1)
    circuit_cooldown_seconds: float = Field(default=30.0, gt=0)
    # Replaced by the failure-rate settings above; refused with a message when still set.
    circuit_failure_threshold: str | None = None

    scalekit_env_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("scalekit_env_url", "scalekit_environment_url"),
    )
    scalekit_client_id: str | None = None
    scalekit_client_secret: SecretStr | None = None
    scalekit_connection_name: str = "chilipipermcp"
    # The connector's tool-name prefix; teams that rename their connection keep this one.
    scalekit_tool_prefix: str = "chilipipermcp"
    scalekit_identifier: str | None = None

    action_key_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=24 * 3600)
    get_key_ttl_seconds: int = Field(default=72 * 3600, ge=72 * 3600)
    notification_ttl_seconds: int = Field(default=72 * 3600, ge=24 * 3600)
    quarantine_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=3600)
    claim_lease_seconds: int = Field(default=60, ge=2)
    claim_heartbeat_seconds: float = Field(default=15.0, gt=0)
    broker_visibility_timeout_seconds: int = Field(default=90, ge=5)
    task_max_attempts: int = Field(default=12, ge=1)
    task_max_age_seconds: int = Field(default=24 * 3600, ge=60)
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    requeue_after_seconds: int = Field(default=900, ge=10)

    # Operations (issue 14). `json`: one object per line (the Procfile's and compose's
    # default); `text` for a terminal (`crmhook dev` sets it).
    log_format: Literal["json", "text"] = "json"
    # The worker serves Prometheus text at /metrics on this port (unset: no server).
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # SIGTERM: calls in flight get this long to finish; then what is left goes back to the
    # queue. Below the host's own grace (Heroku: 30 s; compose: stop_grace_period).
    worker_shutdown_grace_seconds: float = Field(default=25.0, ge=0, le=3600)
    # The blast-radius guard: more cancels and no-shows than this within any minute, and
    # the excess is held for an operator (`crmhook release-held`). Unset: no guard.
    irreversible_guard_per_minute: int | None = Field(default=None, ge=1)

    _split_lists = field_validator(
        "redis_sentinels",
        "webhook_tokens",
        "admin_tokens",
        "salesforce_org_ids",
        "salesforce_id_prefixes",
        mode="before",
    )(_split)

    @field_validator("worker_metrics_port", "irreversible_guard_per_minute", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """`NAME=` in `.env` means unset, as for the other optional settings."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels_are_addresses(cls, sentinels: tuple[str, ...]) -> tuple[str, ...]:
        for sentinel in sentinels:
            parse_address(sentinel)
        return sentinels

    @field_validator("redis_sentinel_master", "redis_sentinel_password", mode="before")
    @classmethod
    def _blank_text_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _redis_is_reachable(self) -> Settings:
        """REDIS_URL, or the sentinels and their master's name: one of the two, whole."""
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError(
                "REDIS_SENTINEL_MASTER: is not set (the master name the sentinels in "
                "REDIS_SENTINELS watch)"
            )
        if self.redis_sentinel_master and not self.redis_sentinels:
            raise ValueError("REDIS_SENTINELS: is not set (host:port,host:port of the sentinels)")
        if (
            self.redis_sentinels
            and self.redis_url
            and not self.redis_url.lower().startswith("redis://")
        ):
            raise ValueError(
                "REDIS_URL: with REDIS_SENTINELS it gives only the master's password and "
                "database, as redis://[:password@]any-host/db; TLS through Sentinel is not "
                "supported"
            )
        if not self.redis_url and not self.redis_sentinels:
            raise ValueError(
                "REDIS_URL: is not set (or set REDIS_SENTINELS and REDIS_SENTINEL_MASTER)"
            )
        return self

    @field_validator("webhook_tokens")
    @classmethod
    def _tokens_are_strong(cls, tokens: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(len(token.get_secret_value()) < MIN_SECRET_LENGTH for token in tokens):
            raise ValueError(f"every token must be at least {MIN_SECRET_LENGTH} characters")
        return tokens

    @field_validator("admin_tokens")
    @classmethod
    def _admin_tokens_parse(cls, tokens: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        names = [parse_admin_token(token, index).name for index, token in enumerate(tokens)]
        if len(set(names)) != len(names):
            raise ValueError("token names must be unique (they name the actor in the audit)")
        return tokens

    @property
    def admin_credentials(self) -> tuple[AdminToken, ...]:
        return tuple(
            parse_admin_token(token, index) for index, token in enumerate(self.admin_tokens)
        )

    @field_validator("salesforce_org_ids")
    @classmethod
    def _org_ids_are_ids(cls, org_ids: tuple[str, ...]) -> tuple[str, ...]:
        canonical = []
        for org_id in org_ids:
            try:
                value = canonical_id(org_id)
            except InvalidSalesforceId as exc:
                raise ValueError(str(exc)) from None
            if not value.startswith("00D"):
                raise ValueError(f"{org_id!r} is not an Organization ID (they start with 00D)")
            canonical.append(value)
        return tuple(canonical)

    @field_validator("salesforce_id_prefixes")
    @classmethod
    def _prefixes_are_three_chars(cls, prefixes: tuple[str, ...]) -> tuple[str, ...]:
        if not prefixes or any(not _KEY_PREFIX.fullmatch(prefix) for prefix in prefixes):
            raise ValueError("give 3-character key prefixes such as 00U, comma-separated")
        return prefixes

    @field_validator("chilipiper_rate_limit")
    @classmethod
    def _rate_is_a_rate(cls, rate: str | None) -> str | None:
        if rate is not None and rate.strip():
            parse_rate(rate)
            return rate
        return None

    @field_validator("circuit_failure_threshold")
    @classmethod
    def _threshold_was_replaced(cls, value: str | None) -> None:
        if value is not None:
            raise ValueError(
                "was replaced: the circuit now opens on a failure rate; set "
                "CIRCUIT_FAILURE_RATE_PERCENT (default 50) and CIRCUIT_WINDOW_CALLS "
                "(default 100) instead, and unset CIRCUIT_FAILURE_THRESHOLD"
            )

    @field_validator("scalekit_env_url", "chilipiper_mcp_url", "chilipiper_sandbox_url")
    @classmethod
    def _url_is_http(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"https?://[^/\s]+", url):
            shown = _USERINFO_PASSWORD.sub(r"\1…@", url)  # never echo a password
            raise ValueError(f"{shown!r} is not an http(s) URL")
        return url.rstrip("/") if url is not None else None

    @field_validator("salesforce_event_id_field")
    @classmethod
    def _field_is_a_name(cls, name: str) -> str:
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not an sObject field name")
        return name

    def require_web(self) -> Settings:
        """The web process authenticates senders: it needs tokens and an org allow-list."""
        missing = [
            name
            for name, value in (
                ("WEBHOOK_TOKENS", self.webhook_tokens),
                ("SALESFORCE_ORG_IDS", self.salesforce_org_ids),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                "invalid configuration: "
                + "; ".join(f"{name}: is not set (comma-separated list)" for name in missing)
            )
        return self

    def require_worker(self) -> Settings:
        """The worker calls ChiliPiper: the MCP transport needs its token, and the timings
        must hold the claim protocol's invariant (see `timing_problems`)."""
        if self.chilipiper_transport == "mcp" and self.chilipiper_api_token is None:
            raise ConfigError(
                "invalid configuration: CHILIPIPER_API_TOKEN: is not set (required when "
                "CHILIPIPER_TRANSPORT=mcp; CHILIPIPER_TRANSPORT=sandbox uses the local stand-in)"
            )
        if self.chilipiper_transport == "scalekit":
            missing = [
                name
                for name, value in (
                    ("SCALEKIT_ENV_URL (or SCALEKIT_ENVIRONMENT_URL)", self.scalekit_env_url),
                    ("SCALEKIT_CLIENT_ID", self.scalekit_client_id),
                    ("SCALEKIT_CLIENT_SECRET", self.scalekit_client_secret),
                    ("SCALEKIT_IDENTIFIER", self.scalekit_identifier),
                )
                if not value
            ]
            if missing:
                raise ConfigError(
                    "invalid configuration: "
                    + "; ".join(
                        f"{name}: is not set (CHILIPIPER_TRANSPORT=scalekit)" for name in missing
                    )
                )
        problems = timing_problems(self)
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        return self

    @property
    def rate_ceiling(self) -> float | None:
        """CHILIPIPER_RATE_LIMIT in calls per second; None when unset (no ceiling)."""
        return parse_rate(self.chilipiper_rate_limit) if self.chilipiper_rate_limit else None

    @property
    def countdown_limit_seconds(self) -> float:
        """Retries due sooner wait in the broker as Celery countdowns; later ones wait in
        Redis by due time, since a countdown held past the visibility timeout is delivered
        again and again (kombu#337). On RabbitMQ every retry waits in Redis: quorum queues
        keep no countdowns of their own (Celery holds them unacknowledged in the worker, or
        needs its native delayed delivery's extra exchanges), so none is asked of them."""
        if self.broker_is_amqp:
            return 0.0
        return self.broker_visibility_timeout_seconds / 3

    @property
    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(parse_address(sentinel) for sentinel in self.redis_sentinels)

    @property
    def broker_url(self) -> str:
        """CELERY_BROKER_URL; else the store's Redis: through the sentinels when given
        (kombu's `sentinel://` transport, one URL per sentinel joined by `;`, carrying the
        master's password and database from REDIS_URL), else REDIS_URL itself."""
        if self.celery_broker_url:
            return self.celery_broker_url
        if not self.redis_sentinels:
            assert self.redis_url is not None  # the model validator saw to it
            return self.redis_url
        credentials = redis_url_credentials(self.redis_url)
        userinfo = ""
        if credentials.password:
            userinfo = f"{quote(credentials.username or '', safe='')}:"
            userinfo += f"{quote(credentials.password, safe='')}@"
        return ";".join(
            f"sentinel://{userinfo}{address}/{credentials.db}" for address in self.redis_sentinels
        )

    @property
    def broker_is_amqp(self) -> bool:
        """Whether the broker is RabbitMQ (AMQP): quorum queues, no broker countdowns."""
        return self.broker_url.split("://", 1)[0].lower() in AMQP_SCHEMES

    @property
    def chilipiper_url(self) -> str:
        if self.chilipiper_transport == "sandbox":
            return self.chilipiper_sandbox_url
        return self.chilipiper_mcp_url


AdminScope = Literal["read", "write"]
ADMIN_SCOPES: tuple[AdminScope, ...] = ("read", "write")


@dataclass(frozen=True)
class AdminToken:
    """One admin API credential: its name (the actor in the audit trail), what it may do
    (`read`: listings and status; `write`: replays and manual tasks too), and the secret."""

    name: str
    scope: AdminScope
    secret: SecretStr

    def allows(self, scope: AdminScope) -> bool:
        return self.scope == "write" or scope == "read"


def parse_admin_token(entry: SecretStr, index: int) -> AdminToken:
    """`secret`, `name:secret` or `name:scope:secret`; a bare secret is `admin-N` with
    the write scope (the contract's plain comma-separated tokens keep working). Errors
    name the entry by position, never by its value."""
    parts = entry.get_secret_value().split(":", 2)
    if len(parts) == 1:
        name, scope, secret = f"admin-{index + 1}", "write", parts[0]
    elif len(parts) == 2:
        name, scope, secret = parts[0], "write", parts[1]
    else:
        name, scope, secret = parts
    where = f"entry {index + 1}"
    if not _FIELD_NAME.fullmatch(name.replace("-", "_")):
        raise ValueError(f"{where}: a token name is letters, digits, - and _")
    if scope not in ADMIN_SCOPES:
        raise ValueError(f"{where}: the scope must be read or write")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"{where}: the secret must be at least {MIN_SECRET_LENGTH} characters")
    return AdminToken(name, scope, SecretStr(secret))


TIMING_MARGIN_SECONDS = 2.0
MAX_CONNECT_SECONDS = 5.0
# A worker thread waits at most this long for the shared rate limit; longer, the task is
# re-scheduled (without spending an attempt) instead of holding the thread.
RATE_LIMIT_MAX_BLOCK_SECONDS = 1.0
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*", re.I)
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) as a pair; ValueError names the bad entry."""
    host, _, port = address.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


@dataclass(frozen=True)
class RedisCredentials:
    """What a Redis URL says beyond its address: with sentinels, REDIS_URL gives these for
    the master (none and database 0 when it is not set)."""

    username: str | None = None
    password: str | None = None
    db: int = 0


def redis_url_credentials(url: str | None) -> RedisCredentials:
    if not url:
        return RedisCredentials()
    # Imported here, not above: gunicorn's master loads this module (through its logger
    # class) before the gevent worker patches sockets, and redis must be imported after.
    from redis.connection import parse_url

    parsed = parse_url(url)  # type: ignore[no-untyped-call]
    return RedisCredentials(
        parsed.get("username"), parsed.get("password"), int(parsed.get("db", 0))
    )


def parse_rate(text: str) -> float:
    """`10/s`, `600/m`, `2/h` as calls per second."""
    match = _RATE.fullmatch(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate such as 10/s or 600/m")
    return float(match.group(1)) / _PER[match.group(2).lower()]


def connect_timeout(timeout: float) -> float:
    """How long to wait for a connection (from the pool, then TCP): short, since a refused
    or unreachable ChiliPiper is a plain retry."""
    return min(MAX_CONNECT_SECONDS, timeout)


def on_the_wire_seconds(settings: Settings) -> float:
    """The longest one call can keep a request of its own on the wire: no request starts
    after the deadline, but one begun just before it may still wait for a connection from
    the pool, then connect, then write or read (each capped at the time left, and at its
    own timeout)."""
    read = settings.chilipiper_timeout_seconds
    return settings.chilipiper_call_deadline_seconds + 2 * connect_timeout(read) + read


def timing_problems(settings: Settings) -> list[str]:
    """What breaks the claim protocol's timing invariant (ARCHITECTURE.md, "Exactly-once").

    - The lease outlives two missed heartbeats: a heartbeat lost to a Redis blip must not
      let a second execution in while the first is still calling.
    - The settle time exceeds the longest a call can still be on the wire
      (`on_the_wire_seconds`), plus a margin. Reconciled any sooner, a cancel still on its
      way could land after crm-get said "booked".
    - The sweeper waits longer than the broker's own redelivery.

    The broker's visibility timeout is free to be shorter than a slow call: a copy that
    the broker hands out again meets the live lease and comes back after it.
    """
    lease = settings.claim_lease_seconds
    heartbeat = settings.claim_heartbeat_seconds
    deadline = settings.chilipiper_call_deadline_seconds
    read = settings.chilipiper_timeout_seconds
    connect = connect_timeout(read)
    settle = settings.chilipiper_settle_seconds
    visibility = settings.broker_visibility_timeout_seconds
    margin = TIMING_MARGIN_SECONDS
    problems = []
    if 2 * heartbeat + margin >= lease:
        problems.append(
            f"CLAIM_LEASE_SECONDS ({lease:g}) must outlive two missed heartbeats: more than "
            f"2 x CLAIM_HEARTBEAT_SECONDS ({heartbeat:g}) + {margin:g} s = "
            f"{2 * heartbeat + margin:g} s"
        )
    wire = on_the_wire_seconds(settings)
    if settle < wire + margin:
        problems.append(
            f"CHILIPIPER_SETTLE_SECONDS ({settle:g}) must be at least the longest a call can "
            f"still be on the wire: CHILIPIPER_CALL_DEADLINE_SECONDS ({deadline:g}) + 2 x "
            f"{connect:g} s (a pool wait and a connect begun before the deadline) + "
            f"CHILIPIPER_TIMEOUT_SECONDS ({read:g}, then one write or read) + {margin:g} s = "
            f"{wire + margin:g} s"
        )
    if settings.requeue_after_seconds <= 2 * visibility:
        problems.append(
            f"REQUEUE_AFTER_SECONDS ({settings.requeue_after_seconds}) must exceed twice "
            f"BROKER_VISIBILITY_TIMEOUT_SECONDS ({visibility}): the broker redelivers first"
        )
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and `.env`), with `overrides` on top (tests, `dev`)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    """One line per problem, each naming the environment variable, never echoing secrets."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is not set"
        if error["loc"]:
            message = f"{str(error['loc'][0]).upper()}: {message}"
        lines.append(message)  # a check across variables names them itself
    return "invalid configuration: " + "; ".join(lines)
