"""The benchmark's load generator: posts pre-built bodies to a local HTTP/1.1 server.

It must never be the bottleneck, so it is a minimal asyncio client rather than httpx or aiohttp:
each request is encoded to bytes once, and a response is parsed only as far as framing needs
(status line, headers, then a ``Content-Length``, chunked or read-to-close body). Three shapes of
run: `closed_loop` (N connections, each sends again as soon as it has an answer), `open_loop`
(requests due on a fixed schedule, as wrk2 does, so a stalled server shows up as latency instead
of hiding in the client's queue) and `post_all` (each post exactly once, as fast as possible).

`LoadResult.cpu_seconds` is ``time.process_time()`` over the run: the CPU of the *whole* process,
every thread included, so it is the client's own cost only when nothing else runs in-process
(the server under test being a separate gunicorn). `LoadResult.cpu_share` near 1.0 means the
client saturated a core and its figures understate the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

# Headers this module computes itself; a caller's copy would contradict the body or the target.
_COMPUTED = frozenset({"content-length", "transfer-encoding", "connection"})
# Response headers above this size are a broken server, not a benchmark result.
_HEAD_LIMIT = 1 << 20
# A closed loop against a dead server would otherwise spin through connect() as fast as the
# kernel refuses, filling memory with status-0 samples; a short pause keeps it a trickle.
_FAILURE_PAUSE = 0.01
# Enough of a failed response's body to say why (a 401's reason, a 500's message).
_SNIPPET = 200


@dataclass(frozen=True)
class Post:
    """One request to send: ``POST path`` with these headers and this body."""

    path: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """One request's outcome; times are ``time.monotonic()`` seconds."""

    index: int  # which Post, as an index into the sequence given (cycled posts keep theirs)
    status: int  # the HTTP status, or 0 when the connection failed, timed out or spoke nonsense
    scheduled: float  # when it was due (closed loop and post_all: when the sender was ready)
    sent: float  # when its first byte was written (== done when it never got that far)
    done: float  # when the whole response was read, or the failure happened


@dataclass(frozen=True)
class LoadResult:
    """What a run did; `latency` and `rate` count only 2xx answers."""

    samples: tuple[Sample, ...]
    seconds: float  # wall time of the run, in-flight requests at the end included
    cpu_seconds: float  # the process's CPU time during the run (see the module docstring)
    connections_opened: int = 0  # reconnections after failures or `Connection: close` included
    first_error: str = ""  # the first failure (an exception or a non-2xx answer), for reports

    def ok(self) -> int:
        """How many samples got a 2xx answer."""
        return sum(1 for s in self.samples if 200 <= s.status < 300)

    def statuses(self) -> dict[int, int]:
        """Count of samples per status (0 for failed connections)."""
        counts: dict[int, int] = {}
        for s in self.samples:
            counts[s.status] = counts.get(s.status, 0) + 1
        return dict(sorted(counts.items()))

    def rate(self) -> float:
        """2xx answers per second of wall time."""
        return self.ok() / self.seconds if self.seconds > 0 else 0.0

    def latency(self, quantile: float) -> float:
        """Nearest-rank quantile, in seconds, of ``done - scheduled`` over the 2xx samples.

        Nearest-rank (no interpolation) so every figure reported is a latency that a request
        really had; ``latency(1.0)`` is the maximum, ``latency(0.0)`` the minimum.
        """
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {quantile}")
        ordered = sorted(s.done - s.scheduled for s in self.samples if 200 <= s.status < 300)
        if not ordered:
            raise ValueError("no 2xx samples to take a latency from")
        rank = max(1, math.ceil(quantile * len(ordered)))
        return ordered[rank - 1]

    def cpu_share(self) -> float:
        """The process's CPU over wall time: 1.0 is one core busy for the whole run."""
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0


class NoSuccess(RuntimeError):
    """A closed or open loop in which not one request got a 2xx answer.

    Raised instead of returning a rate of zero, which a report would print as a figure; the
    run's result is kept for inspection.
    """

    def __init__(self, message: str, *, result: LoadResult) -> None:
        super().__init__(message)
        self.result = result


class _BadResponse(Exception):
    """The server's bytes are not an HTTP/1.x response this client can frame."""


# What turns one request into a status-0 sample instead of ending the run. ValueError is a
# Content-Length or chunk size that is not a number.
_FAILURES = (OSError, TimeoutError, EOFError, asyncio.LimitOverrunError, ValueError, _BadResponse)


def encode(host: str, port: int, post: Post) -> bytes:
    """The complete request as bytes: request line, Host, Content-Length, headers, body.

    Content-Type defaults to ``application/octet-stream`` and Host to `host`:`port`; a post's own
    Content-Length, Transfer-Encoding or Connection header is dropped, since the body's length
    and keep-alive are this module's to state.
    """
    authority = f"[{host}]" if ":" in host else host
    headers = {
        "host": ("Host", f"{authority}:{port}"),
        "content-type": ("Content-Type", "application/octet-stream"),
    }
    for name, value in post.headers.items():
        if name.lower() not in _COMPUTED:
            headers[name.lower()] = (name, value)
    headers["content-length"] = ("Content-Length", str(len(post.body)))
    texts = [post.path, *(text for pair in headers.values() for text in pair)]
    if any("\r" in text or "\n" in text for text in texts):
        # A line break inside the path or a header would split the request in two.
        raise ValueError(f"line break inside the path or a header of {post.path!r}")
    lines = [f"POST {post.path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.values())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + post.body


class _Connection:
    """One keep-alive connection: write a request, read its response, say if reusable."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True

    def stale(self) -> bool:
        """The server closed this idle connection (its keep-alive timeout ran out)."""
        return self.reader.at_eof() or self.writer.is_closing()

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request; return its final status and (for failures) a body snippet."""
        self.writer.write(request)
        await self.writer.drain()
        while True:
            status, keep_alive, body = await self._response()
            if status >= 200:  # 1xx answers are interim: the real one follows
                break
        self.reusable = keep_alive
        return status, body[:_SNIPPET] if not 200 <= status < 300 else b""

    async def _response(self) -> tuple[int, bool, bytes]:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise ConnectionResetError("server closed the connection before answering") from exc
            raise _BadResponse(f"response head cut short: {exc.partial[:80]!r}") from exc
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise _BadResponse(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(parts[1])
        length: int | None = None
        chunked = False
        keep_alive = parts[0] != b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding":
                chunked = value.strip().lower().endswith(b"chunked")
            elif name == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
        if status < 200 or status in (204, 304):
            return status, keep_alive, b""
        if chunked:  # takes precedence over Content-Length (RFC 9112, 6.3)
            return status, keep_alive, await self._chunked()
        if length is not None:
            return status, keep_alive, await self.reader.readexactly(length)
        return status, False, await self.reader.read()  # framed by the close itself

    async def _chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)  # drop chunk extensions
            if size == 0:
                break
            body += (await self.reader.readexactly(size + 2))[:-2]
        while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers, up to the blank line
            pass
        return bytes(body)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(*_FAILURES):
            await self.writer.wait_closed()


class _Run:
    """State shared by one run's senders: the target, samples, counters, the first error."""

    def __init__(self, host: str, port: int, posts: Sequence[Post], timeout: float) -> None:
        if not posts:
            raise ValueError("no posts to send")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.requests = [encode(host, port, post) for post in posts]
        self.samples: list[tuple[int, Sample]] = []
        self.opened = 0
        self.first_error = ""

    async def connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=_HEAD_LIMIT)
        self.opened += 1
        return _Connection(reader, writer)

    async def send(
        self,
        number: int,
        scheduled: float,
        acquire: Callable[[], Awaitable[_Connection]],
        release: Callable[[_Connection | None], None],
    ) -> bool:
        """Send request `number` (cycling through the posts) and record its sample.

        `acquire` gets a connection (reused or new, possibly after a wait, all of which counts
        toward the latency); `release` gets it back, or None once it is closed. The timeout runs
        from `scheduled`. Returns whether it got any HTTP answer.
        """
        index = number % len(self.requests)
        conn: _Connection | None = None
        sent = 0.0
        try:
            async with asyncio.timeout(scheduled + self.timeout - time.monotonic()):
                conn = await acquire()
                sent = time.monotonic()
                status, snippet = await conn.exchange(self.requests[index])
        except _FAILURES as exc:
            done = time.monotonic()
            if conn is not None:  # else acquire failed, and holds nothing to give back
                await conn.close()
                release(None)
            self.samples.append((number, Sample(index, 0, scheduled, sent or done, done)))
            if not self.first_error:
                self.first_error = f"request {number}: {type(exc).__name__}: {exc}".rstrip(": ")
            return False
        done = time.monotonic()
        if not conn.reusable:
            await conn.close()
            release(None)
        else:
            release(conn)
        self.samples.append((number, Sample(index, status, scheduled, sent, done)))
        if not 200 <= status < 300 and not self.first_error:
            self.first_error = f"request {number}: HTTP {status}: {snippet!r}"
        return True

    def result(self, seconds: float, cpu_seconds: float) -> LoadResult:
        self.samples.sort(key=lambda pair: pair[0])
        return LoadResult(
            samples=tuple(sample for _, sample in self.samples),
            seconds=seconds,
            cpu_seconds=cpu_seconds,
            connections_opened=self.opened,
            first_error=self.first_error,
        )


class _Own:
    """A sender's single connection, kept across requests and reopened after a close."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.conn: _Connection | None = None

    async def acquire(self) -> _Connection:
        if self.conn is not None and self.conn.stale():
            await self.conn.close()
            self.conn = None
        if self.conn is None:
            self.conn = await self.run.connect()
        return self.conn

    def release(self, conn: _Connection | None) -> None:
        self.conn = conn

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class _Pool:
    """Up to `cap` keep-alive connections, opened lazily, most recently used reused first."""

    def __init__(self, run: _Run, cap: int) -> None:
        self.run = run
        self.idle: list[_Connection] = []
        self.slots = asyncio.Semaphore(cap)

    async def acquire(self) -> _Connection:
        await self.slots.acquire()  # a wait here is the client's queue: it counts as latency
        try:
            while self.idle:
                conn = self.idle.pop()  # the warmest: least likely to have timed out
                if not conn.stale():
                    return conn
                await conn.close()
            return await self.run.connect()
        except BaseException:
            self.slots.release()
            raise

    def release(self, conn: _Connection | None) -> None:
        if conn is not None:
            self.idle.append(conn)
        self.slots.release()

    async def close(self) -> None:
        for conn in self.idle:
            await conn.close()


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


async def _timed(run: _Run, body: Callable[[], Awaitable[None]]) -> LoadResult:
    cpu = time.process_time()
    start = time.monotonic()
    await body()
    seconds = time.monotonic() - start
    return run.result(seconds, time.process_time() - cpu)


def _require_success(result: LoadResult) -> LoadResult:
    if result.ok() == 0:
        raise NoSuccess(
            f"no request succeeded: 0 of {len(result.samples)} got a 2xx answer "
            f"(statuses {result.statuses()}); first error: {result.first_error or 'none'}",
            result=result,
        )
    return result


def closed_loop(
    host: str,
    port: int,
    posts: Sequence[Post],
    connections: int,
    seconds: float,
    timeout: float = 30,
) -> LoadResult:
    """`connections` connections, each sending the next post as soon as its last answer is read.

    Stops starting requests after `seconds`; those in flight then are completed and counted.
    Raises `NoSuccess` when no request got a 2xx answer.
    """
    _positive(connections=connections, seconds=seconds)
    run = _Run(host, port, posts, timeout)
    numbers = itertools.count()

    async def sender(deadline: float) -> None:
        own = _Own(run)
        try:
            while (now := time.monotonic()) < deadline:
                if not await run.send(next(numbers), now, own.acquire, own.release):
                    await asyncio.sleep(_FAILURE_PAUSE)
        finally:
            await own.close()

    async def body() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(sender(deadline) for _ in range(connections)))

    return _require_success(asyncio.run(_timed(run, body)))


def open_loop(
    host: str,
    port: int,
    posts: Sequence[Post],
    rate: float,
    seconds: float,
    connections: int = 64,
    timeout: float = 30,
) -> LoadResult:
    """Request i is due at ``start + i / rate`` for ``i < ceil(rate * seconds)``, come what may.

    Latency runs from the due time, so time spent waiting for a free connection (all
    `connections` busy with a stalled server) counts: no coordinated omission. Connections are
    opened lazily, up to `connections`; the timeout also runs from the due time. Raises
    `NoSuccess` when no request got a 2xx answer.
    """
    _positive(rate=rate, seconds=seconds, connections=connections)
    run = _Run(host, port, posts, timeout)
    count = math.ceil(rate * seconds)

    async def body() -> None:
        pool = _Pool(run, connections)
        tasks: list[asyncio.Task[bool]] = []
        start = time.monotonic()
        try:
            for number in range(count):
                due = start + number / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                # Late firing (a busy loop) is harmless: the sample still counts from `due`.
                tasks.append(asyncio.create_task(run.send(number, due, pool.acquire, pool.release)))
            await asyncio.gather(*tasks)
        finally:
            await pool.close()

    return _require_success(asyncio.run(_timed(run, body)))


def post_all(
    host: str,
    port: int,
    posts: Sequence[Post],
    connections: int,
    timeout: float = 30,
) -> LoadResult:
    """Each post exactly once (no retries), over `connections` connections, as fast as possible.

    Samples come in the order of `posts`. Failures are status-0 samples; nothing is raised.
    """
    _positive(connections=connections)
    run = _Run(host, port, posts, timeout)
    pending: Iterator[int] = iter(range(len(posts)))

    async def sender() -> None:
        own = _Own(run)
        try:
            for number in pending:
                await run.send(number, time.monotonic(), own.acquire, own.release)
        finally:
            await own.close()

    async def body() -> None:
        await asyncio.gather(*(sender() for _ in range(min(connections, len(posts)))))

    return asyncio.run(_timed(run, body))
