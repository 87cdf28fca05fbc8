"""Sentinel deployments of real processes, and the service's settings pointed at them.

A failover changes a deployment for good, so each test gets its own (start-up takes about a
second)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.ha.sentinel import SentinelCluster
from worker.settings import Settings, load_settings

MASTER_PASSWORD = "master-password-0123"
SENTINEL_PASSWORD = "sentinel-password-4567"
PROTECTED_DB = 2

# Whatever the machine's environment says about Redis must not reach the settings under test.
REDIS_VARIABLES = (
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
    "REDIS_SENTINEL_PASSWORD",
)


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    """Master, replica and three sentinels; no passwords, database 0."""
    with SentinelCluster() as started:
        yield started


@pytest.fixture
def protected_cluster() -> Iterator[SentinelCluster]:
    """The same with a password on the Redis nodes, another on the sentinels, and the
    service on database 2."""
    with SentinelCluster(
        master_password=MASTER_PASSWORD, sentinel_password=SENTINEL_PASSWORD, db=PROTECTED_DB
    ) as started:
        yield started


@pytest.fixture
def settings_for(monkeypatch: pytest.MonkeyPatch) -> Callable[[SentinelCluster], Settings]:
    """The service's Settings read from the environment `cluster.settings_env()` gives, as
    the processes would read it (no `.env` file)."""

    def build(cluster: SentinelCluster) -> Settings:
        for name in REDIS_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in cluster.settings_env().items():
            monkeypatch.setenv(name, value)
        return load_settings(_env_file=None)

    return build


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Print a scenario's figures to the terminal, whatever pytest captures."""

    def emit(line: str) -> None:
        with capsys.disabled():
            print(f"\n[ha] {line}", flush=True)

    return emit
