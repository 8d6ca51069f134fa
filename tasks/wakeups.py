"""Wake-ups: the one way anything tells Celery that a session has queued work.

A wake-up is ``chatq.run_session(session_id, job_id=..., namespace=...)``, JSON, with no message
content or secrets; ``job_id`` names the head the woken runner's first take expects. Producers
publish one when the submit found no worker process waiting to be handed the session; the sweeper
and warm shutdown publish them for sessions nobody holds. Whoever
publishes decides what a failed publish means: the job is safely queued in Redis either way, and
the sweeper wakes any session with queued work and no lease.

**On a Redis broker a wake-up is one LPUSH.** Celery's ``send_task`` cost 0.4-0.9 ms of CPU per
message (routing and option processing, ``saferepr``, a publish retry wrapper, and inside kombu a
new Redis client object per push), which made a submit to a new session 4-5x one to a session
with work queued (``bench/submit_cost.py``). Here the message Celery would send -- protocol 2
headers, JSON body, in the envelope kombu's Redis transport keeps in the queue's list -- is built
directly and pushed with the process's pooled Redis client: ``celery worker`` consumes it as its
own (``tests/test_units.py`` checks it against ``send_task``'s, field by field). Any other broker,
or a Redis one configured in ways this does not reproduce, goes through ``send_task``. When the
broker is the store's own Redis (``pushes_to``), a submit hands the message to its script, which
pushes it only if the submit created the session (``SessionMachine.submit``).
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterable
from functools import cached_property
from json.encoder import encode_basestring_ascii
from urllib.parse import urlsplit

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename

from .celery_app import RUN_SESSION, make_app
from .redis_pool import get_redis, sentinel_url_of_celery_broker
from .settings import Settings

BATCH = 2000
"""Wake-ups per pipelined flush when publishing many."""

_EMBED = json.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})
_AUTO = object()
_quote = encode_basestring_ascii
"""A string as ``json.dumps`` writes it, without its per-call overhead."""


def redis_broker(app: Celery) -> str | None:
    """The app's broker URL if a wake-up can be pushed there directly, else None.

    Direct pushes reproduce kombu's Redis transport as chatq configures it: no key prefix, no TLS
    options of Celery's own (``rediss://`` URLs carry theirs), task protocol 2, default priority.
    A Sentinel broker is pushed to with a ``redis+sentinel://`` client, which follows the master
    through a failover as the store's does.
    """
    conf = app.conf
    url = conf.broker_write_url or conf.broker_url
    options = conf.broker_transport_options or {}
    if url and (sentinel := sentinel_url_of_celery_broker(url, options)):
        url = sentinel
    elif not url or urlsplit(url).scheme not in ("redis", "rediss"):
        return None
    if options.get("global_keyprefix") or conf.broker_use_ssl or conf.task_protocol != 2 \
            or conf.task_default_priority is not None:
        return None
    return url


class WakePublisher:
    def __init__(self, app: Celery, queue: str, broker: redis.Redis | None | object = _AUTO,
                 broker_url: str | None = None):
        """``broker``: the Redis client to push wake-ups with (None: always through Celery); by
        default the process's client for the app's broker, when ``redis_broker`` allows it.
        ``broker_url``: that client's URL, if given."""
        self.app = app
        self.queue = queue
        if broker is _AUTO:
            broker_url = redis_broker(app)
            broker = get_redis(broker_url) if broker_url else None
        self.broker: redis.Redis | None = broker  # type: ignore[assignment]
        self.broker_url = broker_url if broker is not None else None

    def pushes_to(self, redis_url: str) -> bool:
        """Whether wake-ups are pushed straight to the Redis at ``redis_url`` (the same server and
        database): then a submit script there can push a new session's wake-up itself."""
        return self.broker_url is not None and self.broker_url == redis_url

    def message(self, session_id: str, namespace: str, job_id: str | None = None) -> str:
        """The wake-up as kombu's Redis transport stores it: what ``send_task`` would push."""
        job = "null" if job_id is None else _quote(job_id)
        body = f'[[{_quote(session_id)}], {{"job_id": {job}, "namespace": {_quote(namespace)}}}, {_EMBED}]'
        return self._envelope.format(
            body=_quote(base64.b64encode(body.encode()).decode()), id=_quote(str(uuid.uuid4())),
            argsrepr=_quote(repr([session_id])),
            kwargsrepr=_quote(repr({"job_id": job_id, "namespace": namespace})),
            origin=_quote(anon_nodename()), reply_to=_quote(self.app.thread_oid),
            delivery_tag=_quote(str(uuid.uuid4())))

    @cached_property
    def _envelope(self) -> str:
        """The message's JSON with a ``str.format`` field where each changing value goes, JSON-quoted
        (serializing the whole message per wake-up was a third of what publishing it cost)."""
        mark = {name: f"\0{name}\0" for name in
                ("body", "id", "argsrepr", "kwargsrepr", "origin", "reply_to", "delivery_tag")}
        text = json.dumps({
            "body": mark["body"],
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py", "task": RUN_SESSION, "id": mark["id"], "shadow": None, "eta": None,
                "expires": None, "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
                "root_id": mark["id"], "parent_id": None, "argsrepr": mark["argsrepr"],
                "kwargsrepr": mark["kwargsrepr"], "origin": mark["origin"], "ignore_result": None,
                "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
            },
            "properties": {
                "correlation_id": mark["id"], "reply_to": mark["reply_to"], "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": self.queue}, "priority": 0,
                "body_encoding": "base64", "delivery_tag": mark["delivery_tag"],
            },
        }).replace("{", "{{").replace("}", "}}")
        for name, placeholder in mark.items():
            text = text.replace(json.dumps(placeholder), f"{{{name}}}")
        return text

    def wake(self, session_id: str, namespace: str, job_id: str | None = None) -> None:
        if self.broker is not None:
            self.broker.lpush(self.queue, self.message(session_id, namespace, job_id))
            return
        args, kwargs = [session_id], {"job_id": job_id, "namespace": namespace}
        self.app.send_task(RUN_SESSION, args=args, kwargs=kwargs, queue=self.queue,
                           argsrepr=repr(args), kwargsrepr=repr(kwargs))

    def wake_many(self, sessions: Iterable[tuple[str, str | None]], namespace: str) -> None:
        """One wake-up per ``(session_id, job_id)``, published in bulk.

        On a Redis broker, one LPUSH per ``BATCH``; otherwise one producer, and kombu's
        ``Producer.batch`` pipelines the pushes, with precomputed reprs sparing Celery's ``saferepr``.
        """
        if self.broker is not None:
            chunk: list[str] = []
            for session_id, job_id in sessions:
                chunk.append(self.message(session_id, namespace, job_id))
                if len(chunk) == BATCH:
                    self.broker.lpush(self.queue, *chunk)
                    chunk = []
            if chunk:
                self.broker.lpush(self.queue, *chunk)
            return
        app = self.app
        with app.producer_or_acquire() as producer, producer.batch(max_size=BATCH):
            for session_id, job_id in sessions:
                args, kwargs = [session_id], {"job_id": job_id, "namespace": namespace}
                app.send_task(RUN_SESSION, args=args, kwargs=kwargs, queue=self.queue, producer=producer,
                              argsrepr=repr(args), kwargsrepr=repr(kwargs))

    @classmethod
    def shared(cls, settings: Settings) -> WakePublisher:
        """The process's publisher for this broker and queue.

        A Celery app owns a pool of broker connections, so every client in a process (a web app
        may make one per request; the API one per tenant) shares one rather than opening its own.
        A Redis broker is pushed to with the process's client for it: the store's own when the
        broker is the same Redis.
        """
        key = (settings.broker, settings.queue)
        with _lock:
            found = _shared.get(key)
            if found is None:
                app = make_app(settings)
                url = redis_broker(app)
                broker = get_redis(url, settings.redis_max_connections, settings.redis_socket_timeout) \
                    if url else None
                found = _shared[key] = cls(app, settings.queue, broker, url)
            return found


_shared: dict[tuple[str, str], WakePublisher] = {}
_lock = threading.Lock()
