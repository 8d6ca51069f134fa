"""One blocking ``XREAD`` for every job log a process follows, instead of one per log per event.

Followed alone, each log costs its reader a round trip per event: the ``XREAD`` comes back with the
one event written, and blocks again. The HTTP API follows every live stream it serves, and the
workers write every job's text in the same moments (``chatq.worker.pacer``), so the hub reads them
together: it keeps each follower's place (a ``Subscription``: the log's key and the last seq handed
over), waits on all of them in one ``XREAD``, and hands each follower its entries; a follower waits
on its subscription alone.

A follower that joins while the hub's read is blocked rings a doorbell (an entry added to a stream
of the hub's own, which the read also waits on), so the read comes back at once and the next one
includes it. A subscription that got nothing for ``block_seconds`` is told so (``None``): its cue to
check on the job and send a keep-alive. A failed read fails every subscription it served; the next
to subscribe starts over.

Not on a Redis Cluster: one ``XREAD`` cannot span hash slots, so there each follower reads its log
itself (``AsyncEventLog`` without a hub).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

READ_COUNT = 500
"""Events per read of a log (``chatq.tasks.events`` reads as many)."""
DOORBELL_TTL = 60
"""Seconds a doorbell outlives its last ring (a hub that died leaves nothing behind for long)."""


def _seq(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


class Subscription:
    """One follower's place in one log; ``next`` waits for what comes after it."""

    def __init__(self, hub: EventHub, key: str, after: int, quiet_at: float):
        self.hub = hub
        self.key = key
        self.after = after  # the last seq handed over
        self.quiet_at = quiet_at  # when, without entries, it is told so
        self._entries: list = []
        self._quiet = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None

    async def next(self) -> list | None:
        """The log's next entries (``XREAD``'s ``(id, fields)``, in order, at least one), or None
        after ``block_seconds`` without any; raises what the hub's read met."""
        if not (self._entries or self._quiet or self._error):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._error is not None:
            raise self._error
        if self._entries:
            entries, self._entries = self._entries, []
            return entries
        self._quiet = False
        return None

    def close(self) -> None:
        self.hub._drop(self)

    def _deliver(self, entries: list, now: float) -> None:
        self._entries.extend(entries)
        self.after = _seq(entries[-1][0])
        self.quiet_at = now + self.hub.block_seconds
        self._wake()

    def _tell_quiet(self, now: float) -> None:
        self._quiet = True
        self.quiet_at = now + self.hub.block_seconds
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class EventHub:
    """Reads the logs its subscriptions follow, with one blocking ``XREAD`` at a time on ``r``
    (a single Redis's client, not a cluster's; see the module's docstring)."""

    def __init__(self, r: aioredis.Redis, doorbell: str, block_seconds: float = 2.0, count: int = READ_COUNT):
        self.r = r
        self.doorbell = doorbell
        self.block_seconds = block_seconds
        self.count = count
        self._subs: dict[str, list[Subscription]] = {}  # by key
        self._reading: dict[str, int] | None = None  # what the read in flight covers: key -> after
        self._rung = False  # the read in flight was already rung for
        self._bell = "0-0"  # the doorbell's last entry seen
        self._task: asyncio.Task | None = None

    def subscribe(self, key: str, after: int) -> Subscription:
        """Follow ``key`` after seq ``after``; ``close`` the subscription when done."""
        sub = Subscription(self, key, after, asyncio.get_running_loop().time() + self.block_seconds)
        self._subs.setdefault(key, []).append(sub)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        elif self._reading is not None and self._reading.get(key, after + 1) > after and not self._rung:
            self._rung = True  # the read in flight does not cover it: have it come back now
            asyncio.ensure_future(self._ring())
        return sub

    def _drop(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.key]

    async def _ring(self) -> None:
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.xadd(self.doorbell, {"r": "1"}, maxlen=1, approximate=False)
            pipe.expire(self.doorbell, DOORBELL_TTL)
            await pipe.execute()
        except Exception as exc:  # the read comes back at its block time all the same
            log.warning("could not ring the event hub's doorbell (%s)", exc)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._subs:
                reading = {key: min(s.after for s in subs) for key, subs in self._subs.items()}
                quiet_at = min(s.quiet_at for subs in self._subs.values() for s in subs)
                block = max(1, min(int((quiet_at - loop.time()) * 1000) + 1, int(self.block_seconds * 1000)))
                self._reading, self._rung = reading, False
                try:
                    found = await self.r.xread({**{k: f"{a}-0" for k, a in reading.items()}, self.doorbell: self._bell},
                                               count=self.count, block=block)
                finally:
                    self._reading = None
                now = loop.time()
                for key, entries in found or ():
                    if key == self.doorbell:
                        self._bell = entries[-1][0]
                        continue
                    for sub in self._subs.get(key, ()):
                        if sub.after >= reading[key]:  # the read started at or before its place
                            fresh = [e for e in entries if _seq(e[0]) > sub.after]
                            if fresh:
                                sub._deliver(fresh, now)
                for sub in _all(self._subs.values()):
                    if sub.quiet_at <= now:
                        sub._tell_quiet(now)
        except BaseException as exc:  # every follower learns it (a cancelled hub too); the next subscribe starts over
            for sub in _all(self._subs.values()):
                sub._fail(exc if isinstance(exc, Exception) else ConnectionError("the event hub stopped"))
            self._subs.clear()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._task = None


def _all(groups: Iterable[list[Subscription]]) -> list[Subscription]:
    return [sub for subs in groups for sub in subs]
