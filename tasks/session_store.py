"""Sessions: a meta hash (timestamps, running usage) and a list of JSON messages per session."""

from __future__ import annotations

import redis

from .keys import Keys
from .models import Message, Session, Usage, utcnow

_DELETE = """
if redis.call('LLEN', KEYS[3]) > 0 then return -1 end
local existed = redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1])
return existed
"""

_CREATE = """
local created = redis.call('HSETNX', KEYS[1], 'created_at', ARGV[2])
if created == 1 then
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return created
"""


class SessionStore:
    def __init__(self, r: redis.Redis, keys: Keys):
        self.r = r
        self.keys = keys
        self._delete = r.register_script(_DELETE)
        self._create = r.register_script(_CREATE)

    def get(self, session_id: str) -> Session | None:
        k = self.keys
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(k.session(session_id))
        pipe.lrange(k.messages(session_id), 0, -1)
        pipe.lrange(k.queue(session_id), 0, -1)
        meta, raw_messages, pending = pipe.execute()
        if not meta:
            return None
        return Session(
            session_id=session_id,
            created_at=meta["created_at"],
            updated_at=meta.get("updated_at", meta["created_at"]),
            messages=[Message.model_validate_json(m) for m in raw_messages],
            usage=Usage(
                prompt_tokens=int(meta.get("prompt_tokens", 0)),
                completion_tokens=int(meta.get("completion_tokens", 0)),
                total_tokens=int(meta.get("total_tokens", 0)),
                model=meta.get("model"),
            ),
            pending_jobs=pending,
        )

    def create(self, session_id: str) -> bool:
        """Get-or-create: True when this call made it. Atomic, so racing creators make one session."""
        now = utcnow()
        return bool(
            self._create(
                keys=[self.keys.session(session_id), self.keys.sessions],
                args=[session_id, now.isoformat(), now.timestamp()],
            )
        )

    def list(self) -> list[str]:
        return self.r.zrange(self.keys.sessions, 0, -1)

    def delete(self, session_id: str) -> bool | None:
        """True if deleted, False if unknown, None if jobs are still queued or running for it."""
        k = self.keys
        res = self._delete(
            keys=[k.session(session_id), k.messages(session_id), k.queue(session_id), k.sessions],
            args=[session_id],
        )
        return None if res == -1 else bool(res)
