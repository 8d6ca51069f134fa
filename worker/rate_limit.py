"""A per-model requests/tokens-per-minute limit shared by every worker through Redis.

Fixed one-minute windows: cheap (one script call per provider call) and strict enough to keep a
fleet under the provider's limit instead of drowning in 429s.
"""

from __future__ import annotations

import time

import redis

_ACQUIRE = """
-- KEYS: requests, tokens ; ARGV: rpm, tpm, tokens, ttl_s ; returns 0 if admitted
local rpm, tpm, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local used_r = tonumber(redis.call('GET', KEYS[1]) or '0')
local used_t = tonumber(redis.call('GET', KEYS[2]) or '0')
if rpm > 0 and used_r + 1 > rpm then return 1 end
if tpm > 0 and used_t > 0 and used_t + n > tpm then return 1 end
redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('INCRBY', KEYS[2], n); redis.call('EXPIRE', KEYS[2], ARGV[4])
return 0
"""


class RateLimiter:
    def __init__(self, r: redis.Redis, namespace: str):
        self.r = r
        self.ns = namespace
        self._acquire = r.register_script(_ACQUIRE)

    def acquire(self, model: str, rpm: int | None, tpm: int | None, tokens: int,
                sleep=time.sleep, clock=time.time) -> float:
        """Block until a call of ``tokens`` fits this minute's budget; returns seconds waited."""
        if not rpm and not tpm:
            return 0.0
        waited = 0.0
        while True:
            now = clock()
            window = int(now // 60)
            keys = [f"{self.ns}:rl:{model}:{window}:r", f"{self.ns}:rl:{model}:{window}:t"]
            if self._acquire(keys=keys, args=[rpm or 0, tpm or 0, tokens, 120]) == 0:
                return waited
            pause = (window + 1) * 60 - now + 0.01
            sleep(pause)
            waited += pause
