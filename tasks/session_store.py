"""Sessions: a meta hash (timestamps, running usage, retention) and a list of JSON messages each,
plus the namespace's listing (a ZSET scored by creation time, under the fleet tag).

The listing is kept beside the sessions, not with them (see ``session_machine``): creating adds
an entry before the session exists, deleting removes it after, and ``prune`` drops entries whose
session expired, by compare-and-delete on the score it read, so an entry re-asserted meanwhile
stays. Listing prunes what it reads; the sweeper walks the rest, a chunk per sweep.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import redis

from .keys import Keys
from .models import Message, Session, Usage, utcnow
from .redis_pool import is_cluster
from .scripts import load
from .session_machine import Calls, listing_score, ttl_arg


class CreateOutcome(StrEnum):
    created = "created"
    exists = "exists"


class DeleteOutcome(StrEnum):
    deleted = "deleted"
    unknown = "unknown"
    busy = "busy"  # work queued or running: nothing deleted


class SessionStore:
    def __init__(self, r: redis.Redis, keys: Keys, session_ttl: int | None = None):
        self.r = r
        self.keys = keys
        self.session_ttl = session_ttl
        self.default_ttl = str(session_ttl or 0)
        self._create = load(r, "create")
        self._seed = load(r, "seed")
        self._delete = load(r, "delete")
        self._unindex = load(r, "unindex")

    def get(self, session_id: str) -> Session | None:
        k = self.keys
        pipe = self.r.pipeline(transaction=True)  # one session's keys: one slot
        pipe.hgetall(k.session(session_id))
        pipe.lrange(k.messages(session_id), 0, -1)
        pipe.lrange(k.fifo(session_id), 0, -1)
        meta, raw_messages, pending = pipe.execute()
        if not meta:
            return None
        own = meta.get("ttl")
        ttl = int(own) if own is not None else self.session_ttl
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
            ttl=ttl or None,
            system_prompt=meta.get("system_prompt"),
        )

    def create(self, session_id: str, ttl: int | None = None) -> bool:
        """Get-or-create: True when this call made it. Atomic, so racing creators make one session.

        ``ttl``: the session's own retention in seconds (0 keeps it), None leaves it as it is.
        """
        k = self.keys
        now = utcnow()
        pipe = self.r.pipeline(transaction=False)
        # The listing's entry first (a crash leaves an entry without a session, which pruning
        # drops); on a cluster its own round trip, as nodes do not order a pipeline's commands.
        (self.r if is_cluster(self.r) else pipe).zadd(k.sessions, {session_id: now.timestamp()}, nx=True)
        self._create(keys=[k.session(session_id), k.messages(session_id), k.fifo(session_id)],
                     args=[now.isoformat(), ttl_arg(ttl), self.default_ttl], client=pipe)
        return CreateOutcome(pipe.execute()[-1][0]) is CreateOutcome.created

    def seed(self, session_id: str, messages: list[Message], system_prompt: str | None = None,
             ttl: int | None = None, client: redis.client.Pipeline | None = None, now: datetime | None = None,
             fleet: redis.client.Pipeline | None = None) -> bool | None:
        """Make the session with a history of its own (checked by the caller: ``conversation.py``);
        False, changing nothing, if it has history or work already. With ``client`` (a pipeline:
        a batch's) only queued into it, after the listing's entry (into ``fleet`` if given: a
        pipeline the caller sends first), and None is returned."""
        k = self.keys
        now = now or utcnow()
        pipe = client if client is not None else self.r.pipeline(transaction=False)
        first = fleet if fleet is not None else self.r if client is None and is_cluster(self.r) else pipe
        first.zadd(k.sessions, {session_id: now.timestamp()}, nx=True)
        keys, args = Calls(k, 0, self.default_ttl).seed(session_id, messages, system_prompt, ttl, now)
        self._seed(keys=keys, args=args, client=pipe)
        if client is not None:
            return None
        return CreateOutcome(pipe.execute()[-1][0]) is CreateOutcome.created

    def list(self) -> list[str]:
        return self.page(0, -1)[0]

    def page(self, offset: int, limit: int) -> tuple[list[str], int]:
        """Session IDs by creation time from ``offset`` (``limit`` -1: all) and how many are listed;
        entries of expired sessions read on the way are dropped."""
        entries = self.r.zrange(self.keys.sessions, offset, -1 if limit < 0 else offset + limit - 1,
                                withscores=True)
        live = self._prune(entries)[0]
        return live, len(live) if limit < 0 and offset == 0 else self.r.zcard(self.keys.sessions)

    def prune(self, start: int, count: int) -> int:
        """Drop the listing's entries of expired sessions among ``count`` from rank ``start``;
        returns where the next call goes on (0: from the beginning again)."""
        entries = self.r.zrange(self.keys.sessions, start, start + count - 1, withscores=True)
        if len(entries) < count:
            self._prune(entries)
            return 0
        return start + count - self._prune(entries)[1]

    def _prune(self, entries: list[tuple[str, float]]) -> tuple[list[str], int]:
        if not entries:
            return [], 0
        pipe = self.r.pipeline(transaction=False)
        for sid, _ in entries:
            pipe.exists(self.keys.session(sid))
        found = pipe.execute()
        gone = [x for (sid, score), exists in zip(entries, found) if not exists for x in (sid, score)]
        if gone:
            self._unindex(keys=[self.keys.sessions], args=gone)
        return [sid for (sid, _), exists in zip(entries, found) if exists], len(gone) // 2

    def delete(self, session_id: str) -> bool | None:
        """True if deleted, False if unknown, None if jobs are still queued or running for it."""
        k = self.keys
        res = self._delete(keys=[k.session(session_id), k.messages(session_id), k.fifo(session_id)])
        outcome = DeleteOutcome(res[0])
        if outcome is DeleteOutcome.busy:
            return None
        if outcome is DeleteOutcome.deleted and res[1]:
            self._unindex(keys=[k.sessions], args=[session_id, listing_score(res[1])])
        return outcome is DeleteOutcome.deleted
