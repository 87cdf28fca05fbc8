"""The replica phase's plumbing on real redis-servers: the replica it attaches is online as
the service counts replicas and confirms writes, and is gone afterwards, the master as found,
even when the measurement fails. (The phase's figures come from `test_bench`'s quick run.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from bench.__main__ import PHASES, main
from bench.phases import attached_replica
from worker.dev.redis_server import RedisServer
from worker.store.durability import connected_replicas


@pytest.fixture
def master() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def _delay(client: redis.Redis) -> str:
    return str(client.config_get("repl-diskless-sync-delay")["repl-diskless-sync-delay"])


def test_the_replica_confirms_writes_then_leaves_the_master_as_found(master: RedisServer) -> None:
    with redis.Redis.from_url(master.url) as client:
        delay = _delay(client)
        with attached_replica(master) as replica:
            assert connected_replicas(client) == 1
            client.set("written", "1")
            assert int(client.execute_command("WAIT", 1, 1000)) == 1  # as Durability waits
            with redis.Redis.from_url(replica.url) as copy:
                assert copy.info("persistence")["aof_rewrite_in_progress"] == 0
                assert copy.get("written") == b"1"
            directory = replica.directory
            assert _delay(client) == "0"  # the first copy streamed without the 5 s delay
        assert connected_replicas(client) == 0
        assert _delay(client) == delay
        assert replica.process is None
        assert not Path(directory).exists()
        assert client.execute_command("WAIT", 1, 100) == 0


def test_a_failed_measurement_still_removes_the_replica(master: RedisServer) -> None:
    attached: list[RedisServer] = []

    def measure_and_fail() -> None:
        with attached_replica(master) as replica:
            attached.append(replica)
            raise RuntimeError("measurement failed")

    with redis.Redis.from_url(master.url) as client:
        with pytest.raises(RuntimeError, match="measurement failed"):
            measure_and_fail()
        assert [replica.process for replica in attached] == [None]
        assert connected_replicas(client) == 0


def test_the_phase_is_listed_and_selectable() -> None:
    assert "replica" in PHASES
    result = CliRunner().invoke(main, ["--phases", "replica,nonesuch"])
    assert result.exit_code == 2
    assert "['nonesuch']" in result.output
    assert "replica" in result.output.rpartition("known:")[2]
