"""A per-model requests/tokens-per-minute limit shared by every worker through Redis.

Fixed one-minute windows: cheap (one script call per provider call) and strict enough to keep a
fleet under the provider's limit instead of drowning in 429s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from chatq.tasks.keys import Keys
from chatq.tasks.scripts import load


class RateLimiter:
    def __init__(self, r: aioredis.Redis, namespace: str):
        self.r = r
        self.keys = Keys(namespace)
        self._acquire = load(r, "rate_limit")

    async def acquire(self, model: str, rpm: int | None, tpm: int | None, tokens: int,
                      sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                      clock: Callable[[], float] = time.time) -> float:
        """Wait until a call of ``tokens`` fits this minute's budget; returns seconds waited."""
        if not rpm and not tpm:
            return 0.0
        waited = 0.0
        while True:
            now = clock()
            window = int(now // 60)
            if await self._acquire(keys=list(self.keys.rate(model, window)),
                                   args=[rpm or 0, tpm or 0, tokens, 120]) == 0:
                return waited
            pause = (window + 1) * 60 - now + 0.01
            await sleep(pause)
            waited += pause
