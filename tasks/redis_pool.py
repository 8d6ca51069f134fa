"""Process-wide Redis clients with blocking pools sized for hundreds of threads, and the start-up wait.

A blocking pool makes a burst of threads wait for a connection instead of failing with
``Too many connections``. Every connection is bounded in time and retried the way redis-py's own
``Retry`` does it, so an outage surfaces as a ``ConnectionError``/``TimeoutError`` that callers
ride out, never as a call that blocks forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

_clients: dict[tuple[str, int, float], redis.Redis] = {}
_lock = threading.Lock()

#: Errors that mean "Redis is not answering right now" (down, restarting, stalled), as opposed to
#: errors that mean it answered "no" (``ResponseError``, wrong password): the first are waited out.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)

#: Schemes redis-py's ``from_url`` takes; anything else is a configuration error, not an outage.
REDIS_SCHEMES = ("redis", "rediss", "unix")


class RedisUnusable(Exception):
    """Redis answered but cannot be used as configured (bad URL, wrong password, no such database):
    waiting will not help, so a worker exits non-zero instead."""


_RETRY = (ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3, (redis.ConnectionError,))
"""Backoff, retries and retried errors, for both clients' ``Retry``."""


def _pool_options(max_connections: int, socket_timeout: float) -> dict[str, object]:
    return dict(max_connections=max_connections, timeout=30, decode_responses=True,
                socket_timeout=socket_timeout, socket_connect_timeout=min(socket_timeout, 5.0),
                socket_keepalive=True, health_check_interval=30)


def get_redis(url: str, max_connections: int = 64, socket_timeout: float = 5.0) -> redis.Redis:
    """The process's client for ``url``.

    ``socket_timeout`` bounds every command (redis-py's default, explicit here): a stalled Redis
    raises ``TimeoutError`` instead of hanging a thread; callers that block on purpose (``BLPOP``)
    pass their own wait on top. Timeouts are not retried: the command may still run once Redis
    resumes, and retrying would only multiply the stall. Connection errors are retried a few times
    with jittered backoff, which turns the dead pooled sockets left by a Redis restart into fresh
    connections without the caller seeing an error. A command that reached Redis just before it
    died may so run twice; chatq's scripts make that harmless (the commit is fenced, a duplicate
    queue entry is skipped, a lost wake-up is the sweeper's).
    """
    key = (url, max_connections, socket_timeout)
    with _lock:
        client = _clients.get(key)
        if client is None:
            pool = redis.BlockingConnectionPool.from_url(
                url, retry=Retry(*_RETRY), **_pool_options(max_connections, socket_timeout))
            client = _clients[key] = redis.Redis(connection_pool=pool)
        return client


def get_async_redis(url: str, max_connections: int = 64, socket_timeout: float = 5.0) -> aioredis.Redis:
    """A ``redis.asyncio`` client for one event loop, bounded and retried as ``get_redis``'s.

    Not cached: an asyncio client belongs to the loop that uses it, and the worker's runtime makes
    one per loop. Thousands of coroutines share ``max_connections``: a command holds a connection
    only for its round trip, so a burst waits briefly for one instead of opening thousands.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url, retry=AsyncRetry(*_RETRY), **_pool_options(max_connections, socket_timeout))
    return aioredis.Redis(connection_pool=pool)


def is_redis_url(url: str) -> bool:
    return urlsplit(url).scheme in REDIS_SCHEMES


def redact(url: str) -> str:
    """The URL without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


def wait_for_redis(url: str, *, what: str = "Redis", log_every: float = 5.0, timeout: float | None = None,
                   sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> float:
    """Block until Redis at ``url`` answers ``PING``; returns the seconds waited.

    A worker started before its Redis (a host reboot, ``docker compose up``) waits here instead of
    dying with a traceback, logging one line every ``log_every`` seconds. Errors waiting cannot fix
    (an unparseable URL, a rejected password, a database index Redis refuses) raise
    ``RedisUnusable``; so does ``timeout`` running out.
    """
    if not is_redis_url(url):
        raise RedisUnusable(f"{what} URL {redact(url)!r} is not a redis://, rediss:// or unix:// URL")
    try:
        client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    except ValueError as exc:
        raise RedisUnusable(f"{what} URL {redact(url)!r} is invalid: {exc}") from exc
    started = clock()
    next_log = started
    try:
        while True:
            try:
                client.ping()
                waited = clock() - started
                if waited > 0 and next_log > started:
                    log.warning("%s at %s answers after %.0f s", what, redact(url), waited)
                return waited
            except (redis.AuthenticationError, redis.exceptions.AuthorizationError, redis.ResponseError) as exc:
                raise RedisUnusable(f"{what} at {redact(url)} refuses this client: {exc}") from exc
            except UNREACHABLE as exc:
                now = clock()
                if timeout is not None and now - started >= timeout:
                    raise RedisUnusable(f"{what} at {redact(url)} unreachable for {now - started:.0f} s: {exc}") from exc
                if now >= next_log:
                    log.warning("waiting for %s at %s (%s)", what, redact(url), exc)
                    next_log = now + log_every
                sleep(min(1.0, log_every))
    finally:
        client.close()
