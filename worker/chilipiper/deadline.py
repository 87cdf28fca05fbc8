"""A total deadline for one call to ChiliPiper, answers streamed byte by byte included.

httpx's timeouts bound each network operation (connect, one write, one read), never the
whole exchange: an answer that trickles in a byte a second never trips a read timeout and
holds a worker thread, and its claim, forever. A `Deadline` starts no request after it, caps
each request's timeouts at the time left, and checks the clock between the chunks of an
answer, so a call is off the wire by the deadline plus one pool wait, one connect and one
write or read (`settings.on_the_wire_seconds`). The settle time before an abandoned call is
reconciled is reckoned from that bound (`settings.timing_problems`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx

from worker import clock

DEFAULT_DEADLINE_SECONDS = 120.0


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires = clock.now() + seconds

    def remaining(self) -> float:
        return self.expires - clock.now()

    def check(self) -> None:
        """Raise httpx.ReadTimeout once the deadline has passed (mapped like any timeout:
        in doubt for an irreversible call whose request has left)."""
        if self.remaining() <= 0:
            raise httpx.ReadTimeout(f"no complete answer within the {self.seconds:g} s deadline")

    def before_request(self) -> None:
        """Raise httpx.ConnectTimeout once the deadline has passed: no request of the call
        starts after it (mapped as never sent), so everything a call sends is over by the
        deadline plus one read."""
        if self.remaining() <= 0:
            raise httpx.ConnectTimeout(f"the {self.seconds:g} s deadline passed before sending")

    def timeout(self, configured: httpx.Timeout) -> httpx.Timeout:
        """`configured`, each part capped at the time left (at least a millisecond)."""
        left = max(0.001, self.remaining())

        def cap(value: float | None) -> float:
            return left if value is None else min(value, left)

        return httpx.Timeout(
            connect=cap(configured.connect),
            read=cap(configured.read),
            write=cap(configured.write),
            pool=cap(configured.pool),
        )

    def read(self, response: httpx.Response) -> bytes:
        """The whole body of a streamed `response`, within the deadline."""
        chunks = []
        for chunk in response.iter_bytes():
            self.check()
            chunks.append(chunk)
        self.check()
        return b"".join(chunks)

    def fetch(self, client: httpx.Client, request: httpx.Request) -> httpx.Response:
        """Send `request` and read its whole answer within the deadline: the answer, its
        body loaded."""
        self.before_request()
        streamed = client.send(request, stream=True)
        try:
            body = self.read(streamed)
        finally:
            streamed.close()
        return httpx.Response(
            streamed.status_code, headers=streamed.headers, content=body, request=request
        )

    def lines(self, response: httpx.Response) -> Iterator[str]:
        """The lines of a streamed text `response` (an SSE stream), within the deadline.
        Lines end with CRLF, LF or CR, as in SSE; a CR at a chunk's end waits for a LF."""
        buffer = ""
        for chunk in response.iter_text():
            self.check()
            buffer += chunk
            while (end := _LINE_END.search(buffer)) and not (
                end.group() == "\r" and end.end() == len(buffer)
            ):
                yield buffer[: end.start()]
                buffer = buffer[end.end() :]
        self.check()
        if buffer:
            yield buffer.rstrip("\r")


_LINE_END = re.compile(r"\r\n|\r|\n")
