"""Process-wide Redis clients with blocking pools sized for hundreds of threads.

A blocking pool makes a burst of threads wait for a connection instead of failing with
``Too many connections``.
"""

from __future__ import annotations

import threading

import redis

_clients: dict[tuple[str, int], redis.Redis] = {}
_lock = threading.Lock()


def get_redis(url: str, max_connections: int = 64) -> redis.Redis:
    with _lock:
        client = _clients.get((url, max_connections))
        if client is None:
            pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=30, decode_responses=True
            )
            client = _clients[(url, max_connections)] = redis.Redis(connection_pool=pool)
        return client
