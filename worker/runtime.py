"""The worker process's runtime: one asyncio event loop, in its own thread, on which every session
the process runs is a coroutine.

A turn spends nearly all its time waiting on the provider, and a waiting coroutine costs a socket
and a few kilobytes, where a waiting thread cost a stack, GIL hand-offs and its own timers; so one
process holds thousands of calls in flight (``CHATQ_CONCURRENCY``, ``-c``) at a cost per job that does
not grow with them. Celery stays the scheduler: its ``run_session`` task only hands the session to
the loop (``accept``) and returns, blocking only while the process is full, so the broker holds the
rest of a backlog. Producers hand sessions to a process with room directly (``handoff.py``), with no
Celery message at all. Per process, not per session: one lease renewal round trip (``LeaseKeeper``,
in a thread of its own), one hand-off listener, one sweeper thread.

Warm shutdown: ``stop`` (Celery's ``worker_shutting_down``) stops taking sessions and hands back
what Celery still offers; ``join`` (``worker_shutdown``, once Celery's own pool has stopped) waits
until every running turn has finished and each session's remaining FIFO is released to other workers.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import threading
from collections.abc import Coroutine
from typing import Any

from chatq.tasks import tracing
from chatq.tasks.keys import Keys
from chatq.tasks import redis_pool
from chatq.tasks.redis_pool import UNREACHABLE, get_async_redis, get_redis
from chatq.tasks.request_params import encode_policy
from chatq.tasks.session_machine import SessionMachine
from chatq.tasks.session_store import SessionStore
from chatq.tasks.settings import Settings
from chatq.tasks.wakeups import WakePublisher

from .handoff import Handoff
from .metrics import WorkerMetrics
from .runner import SessionRunner
from .sweeper import Sweeper

log = logging.getLogger(__name__)


GC_THRESHOLDS = (100_000, 20, 20)
"""Python's cyclic GC for a process of thousands of live coroutines (default: 700, 10, 10).

Every collection of the older generations walks every live object, and each call in flight holds
hundreds (its request, response, parser and task objects): at the default thresholds a job's CPU
grew with the calls in flight (1 s backlogs, one node: 1.67 ms per job at 600 sessions × 5 messages,
2.32 at 3,000 × 1). Collecting young objects every 100,000 allocations instead of 700, with what
start-up built frozen out of every collection, measured 1.36 and 1.68 ms (``bench/RESULTS.md``).
Reference cycles still go, later: the memory it costs is counted in the benchmark's peak RSS."""


def tune_gc() -> None:
    """Freeze what start-up built (modules, the app, clients: never garbage) and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Runtime:
    """One per worker process; built by ``chatq.worker.celery`` at ``worker_init``."""

    def __init__(self, settings: Settings, wakeups: WakePublisher, queue: str | None = None):
        s = self.settings = settings
        tracing.configure("worker")  # before any job: the SDK's import is not the first job's cost
        self.capacity = s.concurrency
        self.queue = queue or s.queue
        self.wakeups = wakeups
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.sync_r = get_redis(s.redis_url, s.redis_max_connections, s.redis_socket_timeout)
        # Commands get the configured socket timeout, plus a hand-off wait's own time for its BLPOP.
        self.r = get_async_redis(s.redis_url, s.redis_max_connections, s.redis_socket_timeout)
        # The event flusher's: one pipeline in flight at a time, bounded as a whole, no timer per reply.
        self.events_r = get_async_redis(s.redis_url, 2, None)
        self.metrics = WorkerMetrics()
        self.metrics.watch(lambda: self._in_flight, self.capacity)
        self.runner = SessionRunner(s, self.r, self.sync_r, wakeups, self.identity, max_connections=self.capacity,
                                    metrics=self.metrics, events_r=self.events_r)
        # The listener's BLPOP holds a connection: its own client, never waiting behind the sessions'.
        self.handoff = (Handoff(get_async_redis(s.redis_url, 2, s.redis_socket_timeout + s.idle_wait),
                                self.runner.keys, self.identity, self.queue, s.idle_wait)
                        if s.idle_wait > 0 else None)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="chatq-runtime", daemon=True)
        self._slots = threading.Condition()
        self._in_flight = 0
        self._room = asyncio.Event()
        self._drains: set[asyncio.Task] = set()
        self._services: list[asyncio.Task] = []
        self.stopping = False

    # -- start and stop ----------------------------------------------------------------------------

    def start(self) -> None:
        """What a worker process starts once, before it consumes: producers learn its agents, the
        sweeper recovers sessions nobody holds, the loop renews leases and listens for hand-offs."""
        self.register_agents()
        tune_gc()
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
            log.info("metrics on http://%s:%d/metrics", self.settings.metrics_host, self.settings.metrics_port)
        self.start_sweeper()
        self.runner.leases.start()
        self._thread.start()
        self.call(self._start_services()).result()

    def register_agents(self) -> None:
        """Tell producers which agents this fleet serves, so they can refuse unknown names, and
        which request parameters each allows, so they can refuse the others at the door (the
        runner refuses them again: a producer may read this before the worker wrote it)."""
        profiles = self.runner.profiles
        if profiles:
            pipe = self.sync_r.pipeline(transaction=False)
            pipe.sadd(self.runner.keys.agents, *profiles)
            pipe.hset(self.runner.keys.agent_overrides,
                      mapping={name: encode_policy(p.allow_overrides) for name, p in profiles.items()})
            pipe.execute()

    def start_sweeper(self) -> Sweeper:
        home = self.runner.keys
        s = self.settings

        made: dict[str, tuple[SessionMachine, SessionStore]] = {}  # one per namespace, not per sweep

        def space(ns: str) -> tuple[SessionMachine, SessionStore]:
            if ns not in made:
                keys = Keys(ns)
                made[ns] = (SessionMachine(self.sync_r, keys, s.result_ttl, s.session_ttl),
                            SessionStore(self.sync_r, keys, s.session_ttl))
            return made[ns]

        def spaces() -> list[tuple[SessionMachine, SessionStore]]:
            return [space(ns) for ns in [s.namespace, *sorted(self.sync_r.smembers(home.namespaces))]]

        return Sweeper(self.sync_r, home, spaces, self.wakeups.wake, s.sweep_interval).start()

    async def _start_services(self) -> None:
        self._room.set()
        self._services.append(asyncio.create_task(self._listen_signals(), name="chatq-signals"))
        if self.handoff is not None:
            self._services.append(asyncio.create_task(self._listen(), name="chatq-handoff"))

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, Any]):
        """Run a coroutine on the loop from another thread; returns its concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Warm shutdown begins (any thread, never blocks): no new sessions, running ones release
        their FIFO after their current turn."""
        with self._slots:
            if self.stopping:  # Celery signals both the start and the end of a shutdown
                return
            self.stopping = True
            self._slots.notify_all()
        self.loop.call_soon_threadsafe(self._stop_on_loop)

    def _stop_on_loop(self) -> None:
        self.runner.stopping = True
        self._room.set()
        if self.handoff is not None:
            task = asyncio.create_task(self._stop_handoff())
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    async def _stop_handoff(self) -> None:
        try:
            await self.handoff.stop()  # type: ignore[union-attr]
        except UNREACHABLE as exc:
            log.warning("could not deregister from hand-offs (%s); they expire in %s s", exc, self.settings.idle_wait)

    def join(self, timeout: float | None = None) -> bool:
        """After ``stop``: wait until every session coroutine has ended, then close the loop's
        clients. Whether all ended in time."""
        if not self._thread.is_alive():
            return True
        try:
            ended = self.call(self._drained(timeout)).result()
        except Exception:
            log.exception("the runtime did not stop cleanly")
            return False
        return ended

    async def _drained(self, timeout: float | None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while self._drains:
                    await asyncio.gather(*list(self._drains), return_exceptions=True)
        except TimeoutError:
            return False
        for task in self._services:
            task.cancel()
        await asyncio.gather(*self._services, return_exceptions=True)
        await self.runner.provider.aclose()
        await self.r.aclose()
        await self.events_r.aclose()
        if self.handoff is not None:
            await self.handoff.r.aclose()
        return True

    # -- taking sessions -----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def accept(self, session_id: str, namespace: str | None, job_id: str | None) -> bool:
        """From a Celery thread: start draining the session on the loop, once the process has room.
        Returns False if a warm shutdown began first (the session is woken for another worker)."""
        with self._slots:
            while self._in_flight >= self.capacity and not self.stopping:
                self._slots.wait()
            if self.stopping:
                refused = True
            else:
                refused = False
                self._in_flight += 1
        if refused:
            self.wakeups.wake(session_id, namespace or self.settings.namespace, job_id)
            return False
        self.loop.call_soon_threadsafe(self._spawn, session_id, namespace, job_id)
        return True

    def _spawn(self, session_id: str, namespace: str | None, job_id: str | None) -> None:
        """On the loop, with a slot already counted: run the session's drain as a task."""
        task = self.loop.create_task(self.runner.drain(session_id, namespace, job_id))
        self._drains.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        self._drains.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a session's drain crashed", exc_info=task.exception())
        with self._slots:
            self._in_flight -= 1
            self._slots.notify()
        self._room.set()

    async def _listen_signals(self) -> None:
        """What the fleet tells every process about running jobs: stop requests (``ChatClient.cancel``,
        interrupting submits) and readers that start following one (``chatq.tasks.events``); the
        process running the job acts on it. After each (re)subscription the running jobs' flags are
        read once, so a signal sent while deaf is not missed."""
        stops, follows = self.runner.keys.cancel_channel, self.runner.keys.follow_channel
        while True:
            try:
                async with await redis_pool.pubsub(self.r, ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(stops, follows)
                    await self.runner.check_signals()
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is None or not isinstance(message.get("data"), str):
                            continue
                        if message.get("channel") == follows:
                            self.runner.follow_job(message["data"])
                        else:
                            job_id, _, mode = message["data"].partition(" ")
                            self.runner.stop_job(job_id, mode)
            except UNREACHABLE as exc:
                log.warning("listening for stop and follow signals failed (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _wake_elsewhere(self, session_id: str, namespace: str, job_id: str | None) -> None:
        try:
            await asyncio.to_thread(self.wakeups.wake, session_id, namespace, job_id)
        except Exception as exc:  # the session is queued in Redis: the sweeper wakes it
            log.warning("could not wake session %s for another process (%s); the sweeper will", session_id, exc)

    async def _listen(self) -> None:
        """The hand-off listener: while the process has room, wait for handed sessions, start each."""
        assert self.handoff is not None
        while not self.stopping:
            room = self.capacity - self._in_flight
            try:
                if room <= 0:
                    await self.handoff.pause()
                    self._room.clear()
                    await self._room.wait()
                    continue
                handed = await self.handoff.next_sessions(room)
            except UNREACHABLE as exc:  # a session lost in transit is the sweeper's
                log.warning("waiting for hand-offs failed (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            for h in handed:
                with self._slots:
                    room_left = self._in_flight < self.capacity
                    if room_left:
                        self._in_flight += 1
                if room_left:
                    self._spawn(h.session_id, h.namespace, h.job_id)
                else:  # Celery's threads filled the room while this waited: back through the broker
                    await self._wake_elsewhere(h.session_id, h.namespace or self.settings.namespace, h.job_id)
