from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.settings import load_settings

BASE = {"redis_url": "redis://127.0.0.1:1/0", "_env_file": None}


def test_missing_redis_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match="REDIS_URL: is not set"):
        load_settings(_env_file=None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"webhook_tokens": "short"}, "WEBHOOK_TOKENS: every token must be at least 16"),
        ({"salesforce_org_ids": "00D5g000004XyZqEAB"}, r"SALESFORCE_ORG_IDS: .*checksum"),
        ({"salesforce_org_ids": "0031I0000081tbP"}, r"SALESFORCE_ORG_IDS: .*start with 00D"),
        ({"salesforce_id_prefixes": "00U,toolong"}, "SALESFORCE_ID_PREFIXES"),
        ({"salesforce_event_id_field": "Id; drop"}, "SALESFORCE_EVENT_ID_FIELD"),
        ({"chilipiper_transport": "carrier-pigeon"}, "CHILIPIPER_TRANSPORT"),
        ({"max_body_bytes": "-1"}, "MAX_BODY_BYTES"),
        ({"chilipiper_rate_limit": "fast"}, "CHILIPIPER_RATE_LIMIT: 'fast' is not a rate"),
        ({"circuit_failure_rate_percent": "150"}, "CIRCUIT_FAILURE_RATE_PERCENT"),
        (
            {"circuit_failure_threshold": "5"},
            "CIRCUIT_FAILURE_THRESHOLD: was replaced.*CIRCUIT_FAILURE_RATE_PERCENT",
        ),
    ],
)
def test_malformed_value_names_the_variable(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**BASE, **overrides)


def test_secrets_never_appear_in_errors_or_repr() -> None:
    secret = "short-secret"
    with pytest.raises(ConfigError) as caught:
        load_settings(**BASE, webhook_tokens=secret)
    assert secret not in str(caught.value)
    settings = load_settings(**BASE, webhook_tokens="x" * 20, chilipiper_api_token="y" * 20)
    assert "x" * 20 not in repr(settings)
    assert "y" * 20 not in repr(settings)


def test_comma_separated_lists_are_split_and_trimmed() -> None:
    settings = load_settings(
        **BASE,
        webhook_tokens=" a" * 10 + " , ," + "b" * 16,
        salesforce_org_ids="00D5g000004XyZq, 00De0000000pmu1EAA",
        salesforce_id_prefixes="00U, a0X",
    )
    assert len(settings.webhook_tokens) == 2
    assert settings.salesforce_org_ids == ("00D5g000004XyZqEAK", "00De0000000pmu1EAA")
    assert settings.salesforce_id_prefixes == ("00U", "a0X")


def test_web_needs_tokens_and_org_ids() -> None:
    with pytest.raises(ConfigError, match=r"WEBHOOK_TOKENS.*SALESFORCE_ORG_IDS"):
        load_settings(**BASE).require_web()


def test_worker_needs_a_chilipiper_token_for_mcp() -> None:
    with pytest.raises(ConfigError, match="CHILIPIPER_API_TOKEN"):
        load_settings(**BASE, chilipiper_transport="mcp").require_worker()
    load_settings(**BASE, chilipiper_transport="sandbox").require_worker()


def test_dotenv_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("REDIS_URL=redis://from-dotenv:6379/0\nSALESFORCE_ID_PREFIXES=a0X\n")
    monkeypatch.setenv("SALESFORCE_ID_PREFIXES", "00U,a0Y")
    monkeypatch.delenv("REDIS_URL", raising=False)
    settings = load_settings(_env_file=env_file)
    assert settings.redis_url == "redis://from-dotenv:6379/0"
    assert settings.salesforce_id_prefixes == ("00U", "a0Y")


def test_broker_defaults_to_redis() -> None:
    assert load_settings(**BASE).broker_url == BASE["redis_url"]
    other = load_settings(**BASE, celery_broker_url="amqp://guest@127.0.0.1//")
    assert other.broker_url == "amqp://guest@127.0.0.1//"


def test_default_timings_nest() -> None:
    settings = load_settings(**BASE, chilipiper_transport="sandbox")
    assert (settings.claim_lease_seconds, settings.claim_heartbeat_seconds) == (60, 15)
    assert settings.chilipiper_call_deadline_seconds == 120
    assert settings.chilipiper_settle_seconds == 150
    settings.require_worker()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"claim_heartbeat_seconds": 30},
            r"CLAIM_LEASE_SECONDS \(60\) must outlive two missed heartbeats: more than "
            r"2 x CLAIM_HEARTBEAT_SECONDS \(30\) \+ 2 s = 62 s",
        ),
        (
            {"chilipiper_settle_seconds": 125},
            r"CHILIPIPER_SETTLE_SECONDS \(125\) must be at least .* "
            r"CHILIPIPER_CALL_DEADLINE_SECONDS \(120\) \+ 2 x 5 s \(a pool wait and a connect "
            r"begun before the deadline\) \+ CHILIPIPER_TIMEOUT_SECONDS \(10, then one write or "
            r"read\) \+ 2 s = 142 s",
        ),
        ({"chilipiper_call_deadline_seconds": 140}, r"= 162 s"),
        ({"requeue_after_seconds": 150}, r"REQUEUE_AFTER_SECONDS \(150\) must exceed twice"),
    ],
)
def test_worker_refuses_timings_that_break_the_invariant(
    overrides: dict[str, int], message: str
) -> None:
    settings = load_settings(**BASE, chilipiper_transport="sandbox", **overrides)
    with pytest.raises(ConfigError, match=message):
        settings.require_worker()


def test_a_visibility_timeout_shorter_than_a_slow_call_is_allowed() -> None:
    """A redelivered copy meets the live lease: the broker's timeout no longer has to
    cover a call."""
    settings = load_settings(
        **BASE, chilipiper_transport="sandbox", broker_visibility_timeout_seconds=30
    )
    settings.require_worker()


def test_the_rate_limit_is_an_optional_ceiling() -> None:
    assert load_settings(**BASE).rate_ceiling is None
    assert load_settings(**BASE, chilipiper_rate_limit="").rate_ceiling is None
    assert load_settings(**BASE, chilipiper_rate_limit="30/s").rate_ceiling == 30
    assert load_settings(**BASE, chilipiper_rate_limit="90/m").rate_ceiling == 1.5


SENTINELS = {"redis_sentinels": "10.0.0.1:26379, 10.0.0.2:26380", "_env_file": None}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"redis_sentinels": "10.0.0.1:26379"}, "REDIS_SENTINEL_MASTER: is not set"),
        ({"redis_sentinel_master": "crmhook", "redis_url": "redis://x/0"}, "REDIS_SENTINELS:"),
        ({**SENTINELS, "redis_sentinel_master": "m", "redis_sentinels": "h:x"}, "'h:x' is not"),
        ({**SENTINELS, "redis_sentinel_master": "m", "redis_sentinels": "h:0"}, "'h:0' is not"),
        ({**SENTINELS, "redis_sentinel_master": "m", "redis_sentinels": ":26379"}, "is not"),
        (
            {**SENTINELS, "redis_sentinel_master": "m", "redis_url": "rediss://:pw@h:1/0"},
            "TLS through Sentinel is not supported",
        ),
    ],
)
def test_sentinel_settings_come_whole(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, str], message: str
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match=message):
        load_settings(**{"_env_file": None, **overrides})


def test_with_sentinels_the_redis_url_is_optional_and_gives_the_masters_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    plain = load_settings(**SENTINELS, redis_sentinel_master="crmhook")
    assert plain.sentinel_addresses == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert plain.broker_url == "sentinel://10.0.0.1:26379/0;sentinel://10.0.0.2:26380/0"
    secured = load_settings(
        **SENTINELS,
        redis_sentinel_master="crmhook",
        redis_url="redis://:p%40ss:w@ignored:1/3",
    )
    # kombu reads the master's password and database from each sentinel:// URL.
    assert secured.broker_url == (
        "sentinel://:p%40ss%3Aw@10.0.0.1:26379/3;sentinel://:p%40ss%3Aw@10.0.0.2:26380/3"
    )
    assert not secured.broker_is_amqp
    assert secured.countdown_limit_seconds > 0


def test_an_amqp_broker_parks_every_retry_in_the_store() -> None:
    rabbit = load_settings(**BASE, celery_broker_url="amqp://guest:guest@127.0.0.1:5672//")
    assert rabbit.broker_is_amqp
    assert rabbit.countdown_limit_seconds == 0  # quorum queues keep no countdowns
    assert not load_settings(**BASE).broker_is_amqp
