"""kombu's Redis transports (plain and Sentinel), with a worker that survives losing Redis.

When the broker's connection drops (Redis restarted, a Sentinel failover), Celery closes the
connection, and closing a channel hands back the messages it had delivered but not yet
acknowledged (`QoS.restore_unacked`). If the transport has already let go of its client by
then, kombu fails with AttributeError ("'NoneType' object has no attribute 'hostname'",
kombu#582 and #970), which Celery's `ignore_errors` does not catch: the worker stops with
"Unrecoverable error", and with it every call in flight. It did in 2 of the first 3 Sentinel
failovers of `tests/ha/test_sentinel_failover.py`.

Nothing is lost by not handing those messages back at that moment: kombu wrote each one to
Redis's unacknowledged hash when it delivered it, and the visibility-timeout sweep
(`unacked_restore_interval`) puts them back in the queue. So where the client is gone, the
channel leaves them there, says so, and closes; the worker reconnects as it should.

`install` makes kombu's `redis`, `rediss` and `sentinel` schemes name these classes in this
process. Celery's `broker_transport` setting would not do: kombu goes back to the URL's
scheme whenever it switches to the next URL of a fail-over list, which it does on every
failed connection attempt, so after the first failover the worker ran on kombu's own class.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu.transport as kombu_transport
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    def _client_gone(self) -> bool:
        transport = getattr(self.channel, "connection", None)
        return transport is None or getattr(transport, "client", None) is None

    def restore_unacked(self, client: Any = None) -> Any:
        if client is None and self._client_gone():
            log.warning(
                "the broker connection is gone: %d unacknowledged message(s) stay in Redis "
                "for the visibility-timeout sweep to restore",
                len(self._delivered),
            )
            return None
        return super().restore_unacked(client)  # type: ignore[no-untyped-call]

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> Any:
        if client is None and self._client_gone():
            log.warning(
                "the broker connection is gone: message %s stays in Redis for the "
                "visibility-timeout sweep to restore",
                tag,
            )
            return None
        return super().restore_by_tag(tag, client, leftmost)  # type: ignore[no-untyped-call]


class Channel(kombu_redis.Channel):
    QoS = QoS


class SentinelChannel(kombu_redis.SentinelChannel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


SCHEMES = {
    "redis": f"{__name__}:Transport",
    "rediss": f"{__name__}:Transport",
    "sentinel": f"{__name__}:SentinelTransport",
}


def install() -> None:
    """Point kombu's Redis schemes at these transports, in this process: every connection
    made after, and every reconnection, uses them. kombu caches a scheme's class once
    resolved, so the cache is cleared of them too."""
    TRANSPORT_ALIASES.update(SCHEMES)
    for scheme in SCHEMES:
        kombu_transport._transport_cache.pop(scheme, None)
