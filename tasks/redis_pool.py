"""Process-wide Redis clients with blocking pools sized for hundreds of threads, and the start-up wait.

Every Redis client of the store is built here, for one Redis or a **Redis Cluster**: a URL
``redis+cluster://[user:password@]host:port[,host:port...]/`` (``rediss+cluster://`` for TLS) names a
cluster by some of its nodes; the client discovers the rest and routes each command by its key's hash
slot (redis-py's ``RedisCluster``). chatq's scripts touch one slot per call (``keys.py``), so the store
runs there unchanged; the few places where a cluster behaves differently ask ``is_cluster``. The
Celery broker cannot be a cluster (Celery's Redis transport is not cluster-aware): ``Settings``
refuses one.

Or for a Redis watched by **Sentinel**: a URL
``redis+sentinel://[[user]:password@]host:port[,host:port...]/<master-name>[/<db>][?sentinel_password=...]``
names the sentinels (not the master) and the master's name in their ``sentinel monitor`` line; the
credentials are the master's, ``sentinel_password`` (and ``sentinel_username``) the sentinels' own
when they require one. Every connection asks the sentinels where the master is when it connects, and
a connection to a master that was demoted or died fails and reconnects to the promoted one
(redis-py's ``Sentinel.master_for``), so a failover costs callers the connection errors they already
ride out. The broker may be one too (``celery_broker`` maps the URL to kombu's sentinel transport).

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
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import asyncio
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.cluster import ClusterNode
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from . import pipelines

log = logging.getLogger(__name__)

_clients: dict[tuple[str, int, float], redis.Redis | redis.RedisCluster] = {}
_lock = threading.Lock()

#: Errors that mean "Redis is not answering right now" (down, restarting, stalled), as opposed to
#: errors that mean it answered "no" (``ResponseError``, wrong password): the first are waited out.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)

#: Schemes redis-py's ``from_url`` takes; anything else is a configuration error, not an outage.
REDIS_SCHEMES = ("redis", "rediss", "unix")
#: A Redis Cluster, named by one or more of its nodes (``host:port`` separated by commas).
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: A master watched by Redis Sentinel, named by its sentinels and its master name.
SENTINEL_SCHEME = "redis+sentinel"


class RedisUnusable(Exception):
    """Redis answered but cannot be used as configured (bad URL, wrong password, no such database):
    waiting will not help, so a worker exits non-zero instead."""


_RETRY = (ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3, (redis.ConnectionError,))
"""Backoff, retries and retried errors, for both clients' ``Retry``."""


def _pool_options(max_connections: int, socket_timeout: float | None) -> dict[str, object]:
    return dict(max_connections=max_connections, timeout=30, decode_responses=True,
                socket_timeout=socket_timeout, socket_connect_timeout=min(socket_timeout or 5.0, 5.0),
                socket_keepalive=True, health_check_interval=30)


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def is_cluster(r: object) -> bool:
    """Whether a client (or pipeline) talks to a Redis Cluster: commands to different nodes are then
    not ordered with each other, even in one pipeline."""
    return isinstance(r, (redis.RedisCluster, aioredis.RedisCluster))


def cluster_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """``redis+cluster://u:p@h1:p1,h2:p2/?opts`` as the first node's plain URL (credentials, TLS and
    options for every node; database 0, the only one a cluster has) and every node's address."""
    scheme, _, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    auth, at, hosts = netloc.rpartition("@")
    path, _, query = tail.partition("?")
    if path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only")
    nodes = []
    for item in filter(None, (h.strip() for h in hosts.split(","))):
        host, colon, port = item.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"cluster node {item!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError("no cluster node given (redis+cluster://host:port[,host:port...]/)")
    plain = scheme.removesuffix("+cluster")
    first = f"{plain}://{auth}{at}{nodes[0][0]}:{nodes[0][1]}/0" + (f"?{query}" if query else "")
    return first, nodes


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0] == SENTINEL_SCHEME


class SentinelURL(NamedTuple):
    sentinels: list[tuple[str, int]]
    master: str
    db: int
    username: str | None
    password: str | None
    sentinel_username: str | None
    sentinel_password: str | None


_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


def sentinel_parts(url: str) -> SentinelURL:
    """``redis+sentinel://[[user]:password@]h1:p1[,h2:p2...]/<master-name>[/<db>][?sentinel_password=...]``
    parsed; a malformed one raises ``ValueError`` (a configuration error, not an outage)."""
    scheme, _, rest = url.partition("://")
    if scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    netloc, _, tail = rest.partition("/")
    auth, at, hosts = netloc.rpartition("@")
    path, _, query = tail.partition("?")
    sentinels = []
    for item in filter(None, (h.strip() for h in hosts.split(","))):
        host, colon, port = item.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"sentinel {item!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    if not sentinels:
        raise ValueError("no sentinel given (redis+sentinel://host:port[,host:port...]/<master-name>)")
    master, _, db = path.strip("/").partition("/")
    if not master:
        raise ValueError("no master name (redis+sentinel://host:port/<master-name>[/<db>])")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_SENTINEL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; a sentinel URL takes {', '.join(_SENTINEL_OPTIONS)}")
    user, colon, password = auth.partition(":")
    if not colon:  # a lone credential is the password (Redis before ACLs had nothing else)
        user, password = "", auth
    return SentinelURL(sentinels, unquote(master), int(db or 0), unquote(user) or None,
                       unquote(password) or None, options.get("sentinel_username") or None,
                       options.get("sentinel_password") or None)


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's sentinel pool (connections that find the master through the sentinels) with the
    blocking pool's waiting for a free connection, as on one Redis."""


class _AsyncBlockingSentinelPool(AsyncSentinelPool, aioredis.BlockingConnectionPool):
    """The asyncio counterpart of ``_BlockingSentinelPool``."""


def _sentinel_kwargs(parts: SentinelURL, socket_timeout: float | None) -> dict[str, object]:
    """How the sentinels themselves are reached: bounded like every connection, their own credentials."""
    bound = min(socket_timeout or 5.0, 5.0)
    options: dict[str, object] = dict(socket_timeout=bound, socket_connect_timeout=bound, decode_responses=True)
    if parts.sentinel_password:
        options.update(username=parts.sentinel_username, password=parts.sentinel_password)
    return options


def _sentinel(url: str, max_connections: int, socket_timeout: float) -> redis.Redis:
    """The master's client: each connection asks the sentinels for the master's address when it
    connects; after a failover the old connections fail (refused, or ``READONLY`` from a demoted
    master, which redis-py turns into a ``ConnectionError``) and are retried on the new master."""
    parts = sentinel_parts(url)
    manager = Sentinel(parts.sentinels, sentinel_kwargs=_sentinel_kwargs(parts, socket_timeout))
    return manager.master_for(  # type: ignore[no-any-return]
        parts.master, redis_class=pipelines.Redis, connection_pool_class=_BlockingSentinelPool, db=parts.db,
        username=parts.username, password=parts.password, retry=Retry(*_RETRY),
        **_pool_options(max_connections, socket_timeout))


def _async_sentinel(url: str, max_connections: int, socket_timeout: float | None) -> aioredis.Redis:
    parts = sentinel_parts(url)
    manager = AsyncSentinel(parts.sentinels, sentinel_kwargs=_sentinel_kwargs(parts, socket_timeout))
    return manager.master_for(  # type: ignore[no-any-return]
        parts.master, redis_class=pipelines.AsyncRedis, connection_pool_class=_AsyncBlockingSentinelPool,
        db=parts.db, username=parts.username, password=parts.password, retry=AsyncRetry(*_RETRY),
        **_pool_options(max_connections, socket_timeout))


def celery_broker(url: str) -> tuple[str, dict[str, object]]:
    """The broker URL and transport options to give Celery for chatq's broker setting.

    kombu's Redis transport takes a Sentinel as ``sentinel://[:password@]host:port/db;sentinel://...``
    with the master's name in ``broker_transport_options``; chatq's ``redis+sentinel://`` URL, the
    same for the store and the broker, is mapped to that. Anything else is given as it is."""
    if not is_sentinel_url(url):
        return url, {}
    parts = sentinel_parts(url)
    auth = ""
    if parts.password:
        auth = f"{quote(parts.username or '', safe='')}:{quote(parts.password, safe='')}@"
    first, *rest = parts.sentinels
    hosts = [f"sentinel://{auth}{_host(first)}/{parts.db}", *(f"sentinel://{_host(h)}/{parts.db}" for h in rest)]
    options: dict[str, object] = {"master_name": parts.master}
    if parts.sentinel_password:
        options["sentinel_kwargs"] = {"username": parts.sentinel_username, "password": parts.sentinel_password}
    return ";".join(hosts), options


def sentinel_url_of_celery_broker(broker_url: str, options: dict[str, Any]) -> str | None:
    """``celery_broker``'s inverse: the ``redis+sentinel://`` URL of a kombu sentinel broker, so a
    producer pushes wake-ups with the store's kind of client (None if it is not one)."""
    if not broker_url.startswith("sentinel://") or not options.get("master_name"):
        return None
    hosts, auth, db = [], "", 0
    for n, item in enumerate(broker_url.split(";")):
        parts = urlsplit(item.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            return None
        hosts.append(_host((parts.hostname, parts.port or 26379)))
        if n == 0:
            db = int(parts.path.strip("/") or 0)
            if parts.password:
                auth = f"{parts.username or ''}:{parts.password}@"  # still percent-encoded
    query = ""
    sentinel_kwargs = options.get("sentinel_kwargs") or {}
    if sentinel_kwargs.get("password"):
        query = "?" + urlencode({k: sentinel_kwargs[k.removeprefix("sentinel_")] for k in _SENTINEL_OPTIONS
                                 if sentinel_kwargs.get(k.removeprefix("sentinel_"))})
    return f"{SENTINEL_SCHEME}://{auth}{','.join(hosts)}/{quote(str(options['master_name']), safe='')}/{db}{query}"


def _host(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cluster(url: str, max_connections: int, socket_timeout: float) -> redis.RedisCluster:
    """A blocking cluster client: per node a ``BlockingConnectionPool`` of ``max_connections``. The
    cluster client retries connection errors itself (and follows MOVED/ASK, re-reading the slots)."""
    first, nodes = cluster_nodes(url)
    return redis.RedisCluster(url=first, startup_nodes=[ClusterNode(h, p) for h, p in nodes[1:]],
                              connection_pool_class=redis.BlockingConnectionPool,
                              retry=Retry(_RETRY[0], _RETRY[1]), **_pool_options(max_connections, socket_timeout))


class GatedAsyncCluster(aioredis.RedisCluster):
    """``redis.asyncio.RedisCluster`` whose commands wait for one of ``max_connections`` turns.

    Its per-node pools raise ``MaxConnectionsError`` when full instead of waiting, so thousands of
    coroutines would fail a burst: here a command (or pipeline) first waits for a turn, which bounds
    the connections to any node as the blocking pool does on one Redis."""

    def __init__(self, *args: Any, max_connections: int = 64, **kwargs: Any):
        super().__init__(*args, max_connections=max_connections, **kwargs)
        self._turns = max_connections
        self._gate: asyncio.Semaphore | None = None

    def _turn(self) -> asyncio.Semaphore:
        if self._gate is None:
            self._gate = asyncio.Semaphore(self._turns)
        return self._gate

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        run = pipe.execute

        async def execute(*args: Any, **kwargs: Any) -> Any:
            async with self._turn():
                return await run(*args, **kwargs)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe


def _async_cluster(url: str, max_connections: int, socket_timeout: float | None) -> aioredis.RedisCluster:
    first, nodes = cluster_nodes(url)
    parts = urlsplit(first)
    options = _pool_options(max_connections, socket_timeout)
    del options["timeout"]  # the gate waits instead
    return GatedAsyncCluster(
        startup_nodes=[AsyncClusterNode(h, p) for h, p in nodes], username=parts.username or None,
        password=parts.password or None, ssl=parts.scheme == "rediss", retry=AsyncRetry(_RETRY[0], _RETRY[1]),
        **options)


async def pubsub(r: aioredis.Redis | aioredis.RedisCluster, **kwargs: Any) -> Any:
    """A pub/sub of an asyncio client. On a cluster, plain ``PUBLISH`` reaches every node, so one
    node's subscription hears the whole fleet; the client must know its nodes first."""
    if isinstance(r, aioredis.RedisCluster):
        await r.initialize()
    return r.pubsub(**kwargs)


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
        if client is None and is_cluster_url(url):
            client = _clients[key] = _cluster(url, max_connections, socket_timeout)  # type: ignore[assignment]
        elif client is None and is_sentinel_url(url):
            client = _clients[key] = _sentinel(url, max_connections, socket_timeout)
        elif client is None:
            pool = redis.BlockingConnectionPool.from_url(
                url, retry=Retry(*_RETRY), **_pool_options(max_connections, socket_timeout))
            client = _clients[key] = pipelines.Redis(connection_pool=pool)
        return client  # type: ignore[return-value]


def get_async_redis(url: str, max_connections: int = 64, socket_timeout: float | None = 5.0) -> aioredis.Redis:
    """A ``redis.asyncio`` client for one event loop, bounded and retried as ``get_redis``'s.

    Not cached: an asyncio client belongs to the loop that uses it, and the worker's runtime makes
    one per loop. Thousands of coroutines share ``max_connections``: a command holds a connection
    only for its round trip, so a burst waits briefly for one instead of opening thousands.
    ``socket_timeout=None``: its replies are read without a timer each (redis-py arms one per reply,
    a pipeline's too); the caller bounds its calls itself (the worker's event flusher: one
    ``asyncio.timeout`` per pipeline). Connecting is bounded all the same.
    """
    if is_cluster_url(url):
        return _async_cluster(url, max_connections, socket_timeout)  # type: ignore[return-value]
    if is_sentinel_url(url):
        return _async_sentinel(url, max_connections, socket_timeout)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, retry=AsyncRetry(*_RETRY), **_pool_options(max_connections, socket_timeout))
    return pipelines.AsyncRedis(connection_pool=pool)


def is_redis_url(url: str) -> bool:
    """A single Redis's URL, a cluster's, or a Sentinel-watched master's."""
    return urlsplit(url).scheme in REDIS_SCHEMES or is_cluster_url(url) or is_sentinel_url(url)


def redact(url: str) -> str:
    """The URL without its password, for log lines."""
    if is_sentinel_url(url) and "sentinel_password=" in url:
        base, _, query = url.partition("?")
        url = base + "?" + "&".join(
            f"{k}=***" if k == "sentinel_password" else f"{k}={quote(v, safe='')}"
            for k, v in parse_qsl(query, keep_blank_values=True))
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    auth, netloc = parts.netloc.rsplit("@", 1)
    if ":" not in auth:
        return url
    user = auth.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


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
        raise RedisUnusable(f"{what} URL {redact(url)!r} is not a redis://, rediss://, unix:// or "
                            "redis+cluster:// or redis+sentinel:// URL")
    try:
        client: Any = (_LazyCluster(url) if is_cluster_url(url)
                       else _SentinelPing(url) if is_sentinel_url(url)
                       else redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0))
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
            except (*UNREACHABLE, redis.exceptions.RedisClusterException) as exc:
                now = clock()
                if timeout is not None and now - started >= timeout:
                    raise RedisUnusable(f"{what} at {redact(url)} unreachable for {now - started:.0f} s: {exc}") from exc
                if now >= next_log:
                    log.warning("waiting for %s at %s (%s)", what, redact(url), exc)
                    next_log = now + log_every
                sleep(min(1.0, log_every))
    finally:
        client.close()


class _LazyCluster:
    """A cluster client for the start-up wait: redis-py connects while it builds one (reading the
    slots), so an unreachable cluster fails the build; here that is one more failed ``ping``."""

    def __init__(self, url: str):
        cluster_nodes(url)  # a malformed URL fails now, not as an outage
        self.url = url
        self.client: redis.RedisCluster | None = None

    def ping(self) -> bool:
        if self.client is None:
            self.client = _cluster(self.url, 2, 5.0)
        return bool(self.client.ping())

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class _SentinelPing:
    """The master's client for the start-up wait, closed with the sentinels' clients: no master
    known yet (``MasterNotFoundError``, a ``ConnectionError``) is waited out like a Redis down."""

    def __init__(self, url: str):
        parts = sentinel_parts(url)  # a malformed URL fails now, not as an outage
        self.manager = Sentinel(parts.sentinels, sentinel_kwargs=_sentinel_kwargs(parts, 5.0))
        self.client = self.manager.master_for(parts.master, db=parts.db, username=parts.username,
                                              password=parts.password, socket_timeout=5.0,
                                              socket_connect_timeout=5.0)

    def ping(self) -> bool:
        return bool(self.client.ping())

    def close(self) -> None:
        self.client.close()
        self.manager.close()
