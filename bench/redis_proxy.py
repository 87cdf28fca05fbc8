"""A TCP proxy in front of Redis that counts round trips, commands and replies per operation.

Round trips are what cost latency, and Redis cannot count them: `INFO commandstats` counts
commands, including those a Lua script runs, but a pipeline of 100 commands and an EVAL of 3
calls are each one wait for the network. So the benchmark points every process's REDIS_URL at
this proxy (`proxy.url(db)`) and counts at the client side of the wire.

    with CountingProxy("127.0.0.1", server.port) as proxy:
        before = proxy.counts()
        ...  # one operation, by any number of processes
        print(proxy.counts() - before)

A round trip begins each time a connection goes from nothing outstanding to at least one
command outstanding; replies without a command (pub/sub pushes) begin none.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from urllib.parse import quote

__all__ = ["CountingProxy", "Counts", "RespParser"]

log = logging.getLogger(__name__)

_CRLF = b"\r\n"
# Type bytes whose whole value is the line itself: simple string, error, integer, and RESP3's
# null, double, boolean and big number.
_LINE_TYPES = frozenset(b"+-:_,#(")
# Types whose line gives the length of a payload that follows: bulk string, RESP3's verbatim
# string and blob error.
_BULK_TYPES = frozenset(b"$=!")
# Types whose line gives a count of elements: array, set, push (map and attribute count pairs).
_AGGREGATE_TYPES = frozenset(b"*~>")
_PAIR_TYPES = frozenset(b"%|")
_ARRAY = ord("*")
_ATTRIBUTE = ord("|")
_NAME_LIMIT = 64  # bytes of a command name kept; real names are under 30
_LINE_LIMIT = 64 * 1024  # Redis itself refuses longer inline commands
# Hundreds of clients may connect at once (gunicorn and Celery start together); asyncio's
# default of 100 would drop the rest's SYNs, costing each a 1 s retransmit.
_BACKLOG = 1024


class ProtocolError(ValueError):
    """The bytes are not RESP; the parser stops counting that stream (forwarding goes on)."""


class RespParser:
    """Counts complete top-level RESP2/RESP3 values in a byte stream fed in arbitrary chunks.

    Nothing is decoded or kept but the line in progress and the first few bytes of a request's
    first element (its command name), so a 1 MiB value costs no more than a short one. With
    `requests=True` the stream is read as Redis reads a client's: a top-level line that does not
    start with `*` is an inline command, and `*0`/`*-1` are no command at all.
    """

    def __init__(self, *, requests: bool) -> None:
        self.requests = requests
        self.broken = False
        self._partial = b""  # an incomplete line carried to the next chunk
        self._skip = 0  # bytes of a bulk payload (and its CRLF) still to pass over
        self._capture = 0  # bytes of that payload still to add to the command name
        self._name = bytearray()
        self._expect_name = False  # the top-level request array's first element is next
        self._script_next = False  # an EVALSHA's name is kept with its script's SHA1
        # Open aggregates, innermost last: [elements still to come, 1 if an attribute].
        self._stack: list[list[int]] = []

    def feed(self, data: bytes) -> list[str]:
        """The values that `data` completes, in order: for requests the upper-cased command
        names ("" when there is none), for replies "" each."""
        done: list[str] = []
        if self.broken:
            return done
        try:
            self._parse(data, done)
        except ValueError as exc:  # ProtocolError, or a length that is no number
            self.broken = True
            log.warning("not RESP (%s); this connection is no longer counted", exc)
        return done

    def _parse(self, data: bytes, done: list[str]) -> None:
        if self._partial:
            data = self._partial + data
            self._partial = b""
        pos = 0
        end = len(data)
        stack = self._stack
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                if self._capture:
                    grab = min(take, self._capture)
                    self._name += data[pos : pos + grab]
                    self._capture -= grab
                self._skip -= take
                pos += take
                if self._skip:
                    return
                self._complete(done)
                continue
            kind = data[pos]
            if self.requests and not stack and kind != _ARRAY:
                newline = data.find(b"\n", pos)  # Redis accepts a bare LF after inline commands
                if newline < 0:
                    self._keep(data, pos)
                    return
                words = data[pos:newline].split(None, 1)
                pos = newline + 1
                if words:  # Redis ignores empty lines: no command, no reply
                    done.append(words[0][:_NAME_LIMIT].decode("latin-1").upper())
                continue
            crlf = data.find(_CRLF, pos)
            if crlf < 0:
                self._keep(data, pos)
                return
            header = data[pos + 1 : crlf]
            pos = crlf + 2
            if kind in _BULK_TYPES:  # first: most of what crosses is bulk strings
                length = int(header)
                if length < 0:
                    self._complete(done)  # nil bulk string
                    continue
                if self._expect_name and len(stack) == 1:
                    self._capture = min(length, _NAME_LIMIT)
                after = pos + length + 2
                if after > end:
                    self._skip = length + 2  # the rest comes in later chunks
                    continue
                if self._capture:
                    self._name += data[pos : pos + self._capture]
                    self._capture = 0
                pos = after
                self._complete(done)
            elif kind in _LINE_TYPES:
                self._complete(done)
            elif kind in _AGGREGATE_TYPES or kind in _PAIR_TYPES:
                count = int(header)
                if kind in _PAIR_TYPES:
                    count *= 2
                if count > 0:
                    if self.requests and not stack:
                        self._expect_name = True
                        self._script_next = False
                        self._name.clear()
                    stack.append([count, kind == _ATTRIBUTE])
                elif kind == _ATTRIBUTE or (self.requests and not stack):
                    continue  # an empty attribute, or `*0` from a client: nothing to count
                else:
                    self._complete(done)  # empty or nil aggregate
            else:
                raise ProtocolError(f"unknown type byte {bytes([kind])!r}")

    def _keep(self, data: bytes, pos: int) -> None:
        if len(data) - pos > _LINE_LIMIT:
            raise ProtocolError(f"no line end in {_LINE_LIMIT} bytes")
        self._partial = data[pos:]

    def _complete(self, done: list[str]) -> None:
        """One value is complete: close every aggregate it completes, and count it if it is
        top-level."""
        stack = self._stack
        while stack:
            top = stack[-1]
            if len(stack) == 1 and self._expect_name:
                self._expect_name = False
                if not self._script_next and self._name.upper() == b"EVALSHA":
                    # Keep the SHA1 too (`EVALSHA 1a2b3c4d`): it says which script ran.
                    self._name += b" "
                    self._expect_name = self._script_next = True
            top[0] -= 1
            if top[0]:
                return
            stack.pop()
            if top[1]:
                return  # an attribute annotates the value after it and is no value itself
        if self.requests:
            done.append(self._name.decode("latin-1").upper())
            self._name.clear()
        else:
            done.append("")


@dataclass(frozen=True)
class Counts:
    """What crossed the proxy; `later - earlier` is what one phase cost."""

    round_trips: int = 0
    commands: int = 0
    replies: int = 0
    connections: int = 0
    by_command: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # Each round trip by its commands in order ("MULTI HSET ZADD EXEC"), runs of one command
    # folded ("LPUSH x100"): which call sites the round trips come from.
    by_round_trip: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            round_trips=self.round_trips - other.round_trips,
            commands=self.commands - other.commands,
            replies=self.replies - other.replies,
            connections=self.connections - other.connections,
            by_command=_difference(self.by_command, other.by_command),
            by_round_trip=_difference(self.by_round_trip, other.by_round_trip),
        )


def _difference(later: Mapping[str, int], earlier: Mapping[str, int]) -> Mapping[str, int]:
    names = sorted(set(later) | set(earlier))
    counts = {name: later.get(name, 0) - earlier.get(name, 0) for name in names}
    return MappingProxyType({name: count for name, count in counts.items() if count})


def round_trip_shape(names: list[str]) -> str:
    """`["LPUSH", "LPUSH", "EXEC"]` as "LPUSH x2 EXEC"."""
    parts: list[str] = []
    run = 0
    for index, name in enumerate(names):
        run += 1
        if index + 1 < len(names) and names[index + 1] == name:
            continue
        parts.append(name if run == 1 else f"{name} x{run}")
        run = 0
    return " ".join(parts)


class _Tally:
    """The counters, written by the event loop's thread and read by the caller's."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.round_trips = 0
        self.commands = 0
        self.replies = 0
        self.connections = 0
        self.by_command: Counter[str] = Counter()
        self.by_round_trip: Counter[str] = Counter()

    def snapshot(self) -> Counts:
        with self.lock:
            return Counts(
                round_trips=self.round_trips,
                commands=self.commands,
                replies=self.replies,
                connections=self.connections,
                by_command=MappingProxyType(dict(sorted(self.by_command.items()))),
                by_round_trip=MappingProxyType(dict(sorted(self.by_round_trip.items()))),
            )

    def reset(self) -> None:
        with self.lock:
            self.round_trips = self.commands = self.replies = self.connections = 0
            self.by_command.clear()
            self.by_round_trip.clear()


class _Link:
    """One client connection and its own connection upstream, with what is outstanding on it."""

    def __init__(self, proxy: CountingProxy) -> None:
        self.proxy = proxy
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.requests = RespParser(requests=True)
        self.replies = RespParser(requests=False)
        self.outstanding = 0
        self.trip: list[str] = []  # the commands of the round trip in progress
        self.closed = False

    def sent(self, data: bytes) -> None:
        names = self.requests.feed(data)
        if not names:
            return
        tally = self.proxy.tally
        with tally.lock:
            if self.outstanding == 0:
                tally.round_trips += 1
            tally.commands += len(names)
            tally.by_command.update(names)
        self.outstanding += len(names)
        self.trip.extend(names)

    def received(self, data: bytes) -> None:
        replies = len(self.replies.feed(data))
        if not replies:
            return
        # More replies than commands: pub/sub pushes, or one SUBSCRIBE answering per channel.
        self.outstanding = max(0, self.outstanding - replies)
        with self.proxy.tally.lock:
            self.proxy.tally.replies += replies
            if self.outstanding == 0 and self.trip:
                self.proxy.tally.by_round_trip[round_trip_shape(self.trip)] += 1
                self.trip = []

    def close(self, *, abort: bool = False) -> None:
        """Close both sides; `close` first sends what is buffered, `abort` drops it."""
        self.closed = True
        self.proxy.links.discard(self)
        for transport in (self.client, self.upstream):
            if transport is not None and not transport.is_closing():
                if abort:
                    transport.abort()
                else:
                    transport.close()


class _ClientSide(asyncio.Protocol):
    def __init__(self, proxy: CountingProxy) -> None:
        self.link = _Link(proxy)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        link = self.link
        link.client = transport
        link.proxy.links.add(link)
        with link.proxy.tally.lock:
            link.proxy.tally.connections += 1
        transport.pause_reading()  # until upstream is connected
        task = asyncio.get_running_loop().create_task(self._connect())
        link.proxy.tasks.add(task)
        task.add_done_callback(link.proxy.tasks.discard)

    async def _connect(self) -> None:
        link = self.link
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(
                lambda: _ServerSide(link), link.proxy.upstream_host, link.proxy.upstream_port
            )
        except OSError as exc:
            log.warning("upstream %s unreachable: %s", link.proxy.upstream_address, exc)
            link.close()
            return
        if link.closed:  # the client left while we connected
            transport.close()
            return
        assert isinstance(transport, asyncio.Transport)
        link.upstream = transport
        assert link.client is not None
        link.client.resume_reading()

    def data_received(self, data: bytes) -> None:
        link = self.link
        if link.upstream is not None:
            link.upstream.write(data)  # forward first: counting never delays a byte
        link.sent(data)

    def eof_received(self) -> bool:
        # A client may shut down its sending side and still wait for the replies (`nc -N`):
        # pass the half-close on, and close both once Redis, which closes on EOF, has answered.
        upstream = self.link.upstream
        if upstream is not None and not upstream.is_closing() and upstream.can_write_eof():
            upstream.write_eof()
            return True
        self.link.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close()

    # Backpressure: a client that reads slowly stops us reading from Redis, not our memory.
    def pause_writing(self) -> None:
        if self.link.upstream is not None:
            self.link.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.link.upstream is not None and not self.link.upstream.is_closing():
            self.link.upstream.resume_reading()


class _ServerSide(asyncio.Protocol):
    def __init__(self, link: _Link) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        link = self.link
        assert link.client is not None
        link.client.write(data)
        link.received(data)

    def eof_received(self) -> bool:
        self.link.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close()

    def pause_writing(self) -> None:
        assert self.link.client is not None
        self.link.client.pause_reading()

    def resume_writing(self) -> None:
        client = self.link.client
        if client is not None and not client.is_closing():
            client.resume_reading()


class CountingProxy:
    """A counting TCP proxy on a free loopback port, run by its own event loop in a daemon
    thread so the caller stays synchronous. `with CountingProxy(host, port) as proxy:`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.tally = _Tally()
        self.links: set[_Link] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def upstream_address(self) -> str:
        return f"{self.upstream_host}:{self.upstream_port}"

    def url(self, db: int = 0, password: str | None = None) -> str:
        auth = f":{quote(password, safe='')}@" if password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self) -> CountingProxy:
        if self._thread is not None:
            raise RuntimeError("the proxy is already running")
        loop = asyncio.new_event_loop()
        try:
            # Port 0: the kernel picks a free port, so no other process can race us for it.
            server = loop.run_until_complete(
                loop.create_server(lambda: _ClientSide(self), "127.0.0.1", 0, backlog=_BACKLOG)
            )
        except BaseException:
            loop.close()
            raise
        self.port = server.sockets[0].getsockname()[1]
        self._loop, self._server = loop, server
        self._thread = threading.Thread(
            target=self._run, name=f"redis-proxy-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def close(self) -> None:
        """Stop accepting, drop every connection (both sides), stop the loop, join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._server = self._thread = None

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for link in list(self.links):
            link.close(abort=True)
        for _ in range(3):  # let the transports' connection_lost callbacks run
            await asyncio.sleep(0)
        await asyncio.wait_for(self._server.wait_closed(), timeout=5)

    def counts(self) -> Counts:
        """A snapshot that includes every reply a client has already received: the loop
        forwards a chunk before counting it, so we wait for it to finish what it is doing."""
        loop = self._loop
        if (
            loop is not None
            and loop.is_running()
            and threading.current_thread() is not self._thread
        ):
            done = threading.Event()
            try:
                loop.call_soon_threadsafe(done.set)
            except RuntimeError:  # closed in the meantime
                pass
            else:
                done.wait(timeout=5)
        return self.tally.snapshot()

    def reset(self) -> None:
        """Zero every counter; open connections stay open (and keep what they have outstanding)."""
        self.counts()  # first let the loop finish counting what clients have already seen
        self.tally.reset()

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
