"""kombu's Redis transport with one fix: a channel keeps its connection parameters after the
connection object is gone, so a worker survives its broker Redis restarting.

The upstream bug (seen in kombu 5.7.0, the latest release when this was written): when the consumer
loses its broker connection, Celery calls ``Connection.collect()`` and then ``Connection.close()``.
During ``collect()`` the task channel's close fails half-way (it first reads the reply of its
outstanding ``BRPOP`` from the dead socket) and the transport's sweep over its channels stops at the
next failure (deleting the pidbox's auto-delete fanout queue), so the task channel stays open; then
``collect()`` detaches the transport (``transport.client = None``). ``close()`` closes the task
channel again, which restores its unacknowledged messages through a new pool built by
``Channel._connparams`` from ``self.connection.client.hostname``: ``AttributeError`` on ``None``. That
is not a connection error, so Celery logs "Unrecoverable error" and stops the worker. The late ack
(``task_acks_late``) of a task still running on that channel raises the same error inside the event
loop, which stops the worker too.

Here ``_connparams`` remembers what it computed while the connection was attached and uses that once
it is detached. The old channel's restores and late acks then reach Redis as they would have on a
live channel (or fail with a Redis ``ConnectionError``, which kombu and Celery treat as the outage
it is). chatq does not depend on either: a wake-up restored twice finds its session leased or empty,
and one never restored is covered by the sweeper.

Selected with Celery's ``broker_transport`` setting for redis:// broker URLs (``transport_for``; a
rediss:// URL keeps kombu's own transport, whose TLS defaults hang on the scheme's name), and for
Sentinel brokers (``sentinel://``, what ``redis_pool.celery_broker`` makes of a ``redis+sentinel://``
URL) as ``SentinelTransport``: kombu's sentinel channel builds its pool from the same parameters
plus the sentinels' addresses, read from the connection too, so it keeps both. It can go
when kombu keeps a channel's connection parameters, or no longer closes a channel after detaching
its transport: ``test_a_consumer_channel_survives_its_redis_dying_with_a_message_unacked`` in
``tests/test_redis_outage.py`` asserts the stock transport still fails and this one does not.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
from kombu.transport import redis as kombu_redis


def transport_for(broker_url: str) -> str | None:
    """This module's transport for a redis:// or sentinel:// broker; ``None`` leaves kombu's choice."""
    scheme = urlsplit(broker_url).scheme
    return {"redis": f"{__name__}:Transport", "sentinel": f"{__name__}:SentinelTransport"}.get(scheme)


class _KeepsConnparams(kombu_redis.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._attached_connparams: dict[bool, dict[str, Any]] = {}
        super().__init__(*args, **kwargs)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection is None or self.connection.client is None or isinstance(self.connection, _Detached):
            saved = self._attached_connparams.get(asynchronous)
            if saved is None:
                raise redis.ConnectionError("the broker connection of this channel is closed")
            return dict(saved)
        params = super()._connparams(asynchronous=asynchronous)
        self._attached_connparams[asynchronous] = dict(params)
        return params


class Channel(_KeepsConnparams):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_KeepsConnparams, kombu_redis.SentinelChannel):
    """kombu's sentinel channel, which also reads the sentinels' addresses from the connection
    (``connection.client.alt``) whenever it builds a pool: kept, like the parameters."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._attached_client: Any = None
        super().__init__(*args, **kwargs)

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        if self.connection is not None and self.connection.client is not None:
            self._attached_client = self.connection.client
            return super()._sentinel_managed_pool(asynchronous)
        if self._attached_client is None:
            raise redis.ConnectionError("the broker connection of this channel is closed")
        # Detached: the same pool, built against the client the channel had (kombu reads only
        # ``alt`` from it; the rest comes from the kept parameters).
        connection = self.connection
        self.connection = _Detached(self._attached_client, connection)  # type: ignore[assignment]
        try:
            return super()._sentinel_managed_pool(asynchronous)
        finally:
            self.connection = connection


class _Detached:
    """A stand-in transport for ``SentinelChannel._sentinel_managed_pool`` once detached: the old
    client's sentinel list and the transport's default port, nothing else."""

    def __init__(self, client: Any, transport: Any):
        self.client = _Sentinels(client.alt)
        self.default_port = getattr(transport, "default_port", None) or 26379


class _Sentinels:
    def __init__(self, alt: list[str]):
        self.alt = list(alt)


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
