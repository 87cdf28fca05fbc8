"""The counting proxy: its RESP parser alone, then round trips against a real redis-server."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest
import redis

from bench.redis_proxy import CountingProxy, Counts, RespParser, round_trip_shape
from tests.conftest import wait_for
from worker.dev.redis_server import RedisServer

REQUESTS = (
    b"*1\r\n$4\r\nPING\r\n"
    b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$12\r\nwith\r\ncrlf!!\r\n"
    b"PING inline\r\n"
    b"\r\n"  # an empty inline line: Redis runs nothing
    b"*0\r\n"  # an empty array: Redis runs nothing
    b"*4\r\n$7\r\nEVALSHA\r\n$40\r\n" + b"a" * 40 + b"\r\n$1\r\n0\r\n$0\r\n\r\n"
    b"echo bare-lf\n"
)
# An EVALSHA is named with the SHA1 of its script.
REQUEST_NAMES = ["PING", "SET", "PING", "EVALSHA " + "A" * 40, "ECHO"]

REPLIES = (
    b"+OK\r\n"
    b"-ERR wrong\r\n"
    b":42\r\n"
    b"$-1\r\n"
    b"*-1\r\n"
    b"*0\r\n"
    b"$5\r\nhe\r\no\r\n"
    b"*3\r\n*2\r\n:1\r\n$-1\r\n*0\r\n*1\r\n*1\r\n+deep\r\n"
    b"%2\r\n+a\r\n:1\r\n+b\r\n~2\r\n,1.5\r\n#t\r\n"
    b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nhi!\r\n"
    b"|1\r\n+ttl\r\n:3\r\n(3492890328409238509324850943850943825024385\r\n"
    b"_\r\n"
    b"=15\r\ntxt:Some string\r\n"
    b"!21\r\nSYNTAX invalid syntax\r\n"
)
REPLY_COUNT = 14


def feed_in_chunks(parser: RespParser, stream: bytes, cuts: list[int]) -> list[str]:
    names: list[str] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        names += parser.feed(stream[start:end])
    return names


@pytest.mark.parametrize(
    ("requests", "stream", "expected"),
    [(True, REQUESTS, REQUEST_NAMES), (False, REPLIES, [""] * REPLY_COUNT)],
    ids=["requests", "replies"],
)
def test_a_stream_cut_anywhere_counts_as_it_does_whole(
    requests: bool, stream: bytes, expected: list[str]
) -> None:
    assert RespParser(requests=requests).feed(stream) == expected
    for cut in range(1, len(stream)):
        assert feed_in_chunks(RespParser(requests=requests), stream, [cut]) == expected, cut
    byte_by_byte = feed_in_chunks(RespParser(requests=requests), stream, [*range(1, len(stream))])
    assert byte_by_byte == expected


@pytest.mark.parametrize(
    ("raw", "count"),
    [
        (b"*2\r\n*2\r\n:1\r\n:2\r\n*1\r\n*0\r\n", 1),  # nested arrays are one value
        (b"$-1\r\n*-1\r\n_\r\n", 3),  # nils are values
        (b"%2\r\n$1\r\na\r\n*2\r\n:1\r\n:2\r\n+b\r\n%1\r\n:1\r\n:2\r\n", 1),  # nested maps
        (b"%0\r\n~0\r\n", 2),
        (b"|1\r\n+key\r\n+value\r\n", 0),  # an attribute alone is no reply yet
        (b"|1\r\n+key\r\n+value\r\n:7\r\n", 1),  # ... it annotates the next one
        (b"*2\r\n|1\r\n+k\r\n+v\r\n:1\r\n:2\r\n", 1),  # attributes inside an aggregate too
        (b"*2\r\n:1\r\n", 0),  # incomplete
    ],
)
def test_reply_values(raw: bytes, count: int) -> None:
    assert len(RespParser(requests=False).feed(raw)) == count


def test_an_array_from_a_client_is_named_by_its_first_element_only() -> None:
    parser = RespParser(requests=True)
    assert parser.feed(b"*3\r\n$6\r\nclient\r\n$7\r\nsetname\r\n$1\r\nx\r\n") == ["CLIENT"]
    assert parser.feed(b"*2\r\n*1\r\n$3\r\nGET\r\n$1\r\nk\r\n") == [""]  # not a name: ""


def test_bytes_that_are_not_resp_stop_the_count_not_the_caller() -> None:
    parser = RespParser(requests=False)
    assert parser.feed(b"+OK\r\n?what\r\n+OK\r\n") == [""]  # what came before counts
    assert parser.broken
    assert parser.feed(b"+OK\r\n") == []


def test_counts_subtract_field_by_field() -> None:
    earlier = Counts(round_trips=2, commands=5, replies=5, connections=1, by_command={"GET": 5})
    later = Counts(
        round_trips=3, commands=8, replies=9, connections=2, by_command={"GET": 5, "SET": 3}
    )
    assert later - earlier == Counts(
        round_trips=1, commands=3, replies=4, connections=1, by_command={"SET": 3}
    )


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[CountingProxy]:
    with CountingProxy("127.0.0.1", server.port) as proxy:
        yield proxy


@pytest.fixture
def client(proxy: CountingProxy) -> Iterator[redis.Redis]:
    """Connected through the proxy, with its connection set-up already done and not counted."""
    client = redis.Redis.from_url(proxy.url())
    client.ping()  # one pooled connection, which pipelines and later commands reuse
    proxy.reset()
    yield client
    client.close()


@pytest.fixture
def direct(server: RedisServer) -> Iterator[redis.Redis]:
    """Straight to the server: uncounted."""
    client = redis.Redis(port=server.port)
    yield client
    client.close()


def test_a_get_is_one_round_trip(proxy: CountingProxy, client: redis.Redis) -> None:
    client.get("missing")
    assert proxy.counts() == Counts(
        round_trips=1, commands=1, replies=1, by_command={"GET": 1}, by_round_trip={"GET": 1}
    )


def test_a_pipeline_is_one_round_trip_of_many_commands(
    proxy: CountingProxy, client: redis.Redis
) -> None:
    with client.pipeline(transaction=False) as pipe:
        for i in range(50):
            pipe.set(f"pipelined:{i}", i)
        pipe.execute()
    assert proxy.counts() == Counts(
        round_trips=1,
        commands=50,
        replies=50,
        by_command={"SET": 50},
        by_round_trip={"SET x50": 1},
    )


def test_a_transaction_counts_multi_and_exec(proxy: CountingProxy, client: redis.Redis) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.set("tx:a", 1)
        pipe.incr("tx:a")
        pipe.get("tx:a")
        assert pipe.execute() == [True, 2, b"2"]
    counts = proxy.counts()
    assert (counts.round_trips, counts.commands, counts.replies) == (1, 5, 5)
    assert counts.by_command == {"MULTI": 1, "SET": 1, "INCRBY": 1, "GET": 1, "EXEC": 1}
    assert counts.by_round_trip == {"MULTI SET INCRBY GET EXEC": 1}


def test_a_script_is_one_command_here_and_three_in_commandstats(
    proxy: CountingProxy, client: redis.Redis, direct: redis.Redis
) -> None:
    script = (
        "redis.call('SET', KEYS[1], 1); redis.call('INCR', KEYS[1]); redis.call('INCR', KEYS[1])"
    )
    stats_before = direct.info("commandstats")
    assert client.eval(script, 1, "scripted") is None

    assert proxy.counts() == Counts(
        round_trips=1, commands=1, replies=1, by_command={"EVAL": 1}, by_round_trip={"EVAL": 1}
    )
    stats = direct.info("commandstats")

    def calls(name: str, info: dict[str, dict[str, int]]) -> int:
        return info.get(f"cmdstat_{name}", {}).get("calls", 0)

    assert calls("set", stats) - calls("set", stats_before) == 1
    assert calls("incr", stats) - calls("incr", stats_before) == 2


def test_pub_sub_pushes_are_replies_but_no_round_trips(
    proxy: CountingProxy, client: redis.Redis
) -> None:
    subscriber = redis.Redis.from_url(proxy.url()).pubsub()
    try:
        subscriber.subscribe("news")
        assert wait_for(lambda: subscriber.get_message(timeout=0.1))["type"] == "subscribe"
        before = proxy.counts()
        for i in range(5):
            client.publish("news", f"item {i}")
        received = [wait_for(lambda: subscriber.get_message(timeout=0.1)) for _ in range(5)]
        assert [m["data"] for m in received] == [f"item {i}".encode() for i in range(5)]
        spent = proxy.counts() - before
        # Five PUBLISH round trips and their five replies, plus five pushes, no more round trips.
        assert spent == Counts(
            round_trips=5,
            commands=5,
            replies=10,
            by_command={"PUBLISH": 5},
            by_round_trip={"PUBLISH": 5},
        )
    finally:
        subscriber.close()


def test_a_blocking_pop_is_one_round_trip_however_long_it_waits(
    proxy: CountingProxy, client: redis.Redis, direct: redis.Redis
) -> None:
    popped: list[object] = []
    waiter = threading.Thread(target=lambda: popped.append(client.brpop(["jobs"], timeout=1)))
    waiter.start()
    wait_for(lambda: direct.info("clients")["blocked_clients"] == 1, timeout=2)
    direct.lpush("jobs", "job-1")
    waiter.join()
    assert popped == [(b"jobs", b"job-1")]
    assert client.brpop(["jobs"], timeout=0.05) is None  # a nil array, after the timeout

    assert proxy.counts() == Counts(
        round_trips=2, commands=2, replies=2, by_command={"BRPOP": 2}, by_round_trip={"BRPOP": 2}
    )


def test_a_large_value_crosses_byte_exact(
    proxy: CountingProxy, client: redis.Redis, direct: redis.Redis
) -> None:
    value = os.urandom(1024 * 1024 - 7) + b"\r\n$-1\r\n*"  # RESP-looking bytes inside, too
    client.set("large", value)
    assert client.get("large") == value
    assert direct.get("large") == value
    assert proxy.counts() == Counts(
        round_trips=2,
        commands=2,
        replies=2,
        by_command={"SET": 1, "GET": 1},
        by_round_trip={"SET": 1, "GET": 1},
    )


def test_reset_zeroes_the_counts_but_keeps_connections_open(
    proxy: CountingProxy, client: redis.Redis
) -> None:
    client.set("k", "v")
    proxy.reset()
    assert proxy.counts() == Counts()
    assert client.get("k") == b"v"  # the same connection still works
    assert proxy.counts() == Counts(
        round_trips=1, commands=1, replies=1, by_command={"GET": 1}, by_round_trip={"GET": 1}
    )


def test_hundreds_of_connections_at_once(proxy: CountingProxy) -> None:
    sockets = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(200)]
    try:
        for sock in sockets:
            sock.sendall(b"*1\r\n$4\r\nPING\r\nPING\r\n")  # one round trip, two commands
        for sock in sockets:
            received = b""
            while received != b"+PONG\r\n+PONG\r\n":
                received += sock.recv(64)
    finally:
        for sock in sockets:
            sock.close()
    assert proxy.counts() == Counts(
        round_trips=200,
        commands=400,
        replies=400,
        connections=200,
        by_command={"PING": 400},
        by_round_trip={"PING x2": 200},
    )


def test_closing_the_proxy_closes_both_sides(server: RedisServer, direct: redis.Redis) -> None:
    baseline = direct.info("clients")["connected_clients"]
    with CountingProxy("127.0.0.1", server.port) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
        assert direct.info("clients")["connected_clients"] == baseline + 1
    assert sock.recv(64) == b""  # the client sees the close
    sock.close()
    wait_for(lambda: direct.info("clients")["connected_clients"] == baseline, timeout=2)


def test_a_client_that_leaves_closes_its_upstream(
    server: RedisServer, proxy: CountingProxy, direct: redis.Redis
) -> None:
    baseline = direct.info("clients")["connected_clients"]
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
    wait_for(lambda: direct.info("clients")["connected_clients"] == baseline, timeout=2)


def test_a_client_that_stops_sending_still_gets_its_replies(proxy: CountingProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"PING\r\nECHO half-closed\r\n")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(64):
            received += chunk
    assert received == b"+PONG\r\n$11\r\nhalf-closed\r\n"


def test_url_points_at_the_proxy(proxy: CountingProxy) -> None:
    assert proxy.url() == f"redis://127.0.0.1:{proxy.port}/0"
    assert proxy.url(3, password="p@ss/word") == f"redis://:p%40ss%2Fword@127.0.0.1:{proxy.port}/3"


@pytest.mark.parametrize(
    ("names", "shape"),
    [
        (["GET"], "GET"),
        (["LPUSH", "LPUSH", "LPUSH"], "LPUSH x3"),
        (["MULTI", "HSET", "HSET", "EXEC"], "MULTI HSET x2 EXEC"),
        (["A", "B", "A"], "A B A"),
    ],
)
def test_a_round_trip_is_named_by_its_commands(names: list[str], shape: str) -> None:
    assert round_trip_shape(names) == shape
