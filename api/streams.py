"""A job's event log as Server-Sent Events (sse-starlette): ``id:`` the seq, ``event:`` the type,
``data:`` the event's data as JSON; the stream ends after the terminal event.

What a status code can still say is found before the stream starts (``open_stream``, through
``AsyncEventLog.opening``): an unknown job is 404, a job whose log expired (or was trimmed past the
reader's seq) 410, and a reader that asks after the terminal event gets 204, which is how a
browser's ``EventSource`` is told not to reconnect. Past that point an error can only be said in the stream: it is its last event,
``event: error`` with the API's error shape as data, and the reader resumes from the last ``id:``.

A quiet stream sends a comment (``: keep-alive``) after each wait of about two seconds, so proxies
keep it open and a reader gone away is noticed on the next write (sse-starlette's own ``: ping``
comment, every 15 s, stays on: turning it off with ``ping=0`` spins in its releases before 3.x).

The streams share one ``redis.asyncio`` client per app (``StreamRedis``), made on first use in
the server's event loop and closed at shutdown, and wait for their next events together: one
blocking ``XREAD`` for all of them (``chatq.tasks.event_hub``; on a Redis Cluster, one per stream),
so a thousand live streams cost a round trip each time the workers write, not one per event each.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio as aioredis
from fastapi import Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from chatq.tasks.errors import EventsGone, JobNotFound
from chatq.tasks.event_hub import EventHub
from chatq.tasks.events import AsyncEventLog
from chatq.tasks.keys import Keys
from chatq.tasks.models import EVENT_TYPES
from chatq.tasks.redis_pool import get_async_redis, is_cluster
from chatq.tasks.settings import Settings

from .errors import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

KEEP_ALIVE = "keep-alive"
ERROR_EVENT = "error"

DESCRIPTION = (
    "Server-Sent Events, one per event of the job's log: `id:` its seq (1, 2, 3, ... with no gaps), "
    "`event:` its type (`job.started`, `job.restarted`, `message.delta`, `provider.retry`, `tool.call`, "
    "`tool.result`, then one of `job.succeeded`, `job.failed`, `job.cancelled`, whose data is the finished "
    "job), `data:` its data as JSON. The stream ends after the terminal event. Comment lines "
    "(`: keep-alive`, `: ping`) keep a quiet stream open; ignore them. An error after the stream started is its last "
    "event, `event: error` with `{\"error\": {\"type\", \"message\"}}`: resume with `Last-Event-ID`.")
SSE_EVENT = {
    "type": "object", "required": ["event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[1-9][0-9]*$", "description": "The event's seq (not on `error`)."},
        "event": {"type": "string", "enum": [*EVENT_TYPES, ERROR_EVENT]},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "description": "The event's data, a JSON object."},
    },
}
SSE_CONTENT = {"text/event-stream": {"schema": SSE_EVENT}}
"""One event of the stream, as a reader parses it (the wire format is text: `id:`, `event:`, `data:` lines)."""


class StreamRedis:
    """The app's one ``redis.asyncio`` client for event streams, made on first use (in the server's
    event loop, which an asyncio client belongs to) and closed at shutdown; and, unless the store is
    a cluster, the app's one ``EventHub`` on it, which waits for every stream's next events at once."""

    def __init__(self, settings: Settings, max_connections: int):
        self.settings = settings
        self.max_connections = max_connections
        self._client: aioredis.Redis | None = None
        self._hub: EventHub | None = None

    @property
    def block_seconds(self) -> float:
        """A stream's longest wait per read: under the socket timeout, as the blocking client's."""
        return min(2.0, self.settings.redis_socket_timeout / 2)

    def client(self) -> aioredis.Redis:
        if self._client is None:
            s = self.settings
            self._client = get_async_redis(s.redis_url, self.max_connections, s.redis_socket_timeout)
        return self._client

    def hub(self) -> EventHub | None:
        client = self.client()
        if self._hub is None and not is_cluster(client):
            doorbell = Keys(self.settings.namespace).doorbell(uuid.uuid4().hex)
            self._hub = EventHub(client, doorbell, self.block_seconds)
        return self._hub

    def log(self, keys: Keys) -> AsyncEventLog:
        return AsyncEventLog(self.client(), keys, self.block_seconds, self.hub(), fleet=Keys(self.settings.namespace))

    async def close(self) -> None:
        self._hub = None
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()


def error_event(type_: str, message: str) -> ServerSentEvent:
    body = ErrorResponse(error=ErrorDetail(type=type_, message=message)).model_dump(mode="json", exclude_none=True)
    return ServerSentEvent(json.dumps(body, separators=(",", ":")), event=ERROR_EVENT)


async def events(log_: AsyncEventLog, job_id: str, after: int) -> AsyncIterator[ServerSentEvent]:
    """The job's events after ``after`` as SSE, a keep-alive comment on each quiet cue, and an
    ``error`` event if reading fails once the stream has started."""
    try:
        async for event in log_.follow(job_id, after, raw=True):  # the data as stored: JSON already
            if event is None:
                yield ServerSentEvent(comment=KEEP_ALIVE)
            else:
                yield ServerSentEvent(event.data, id=str(event.seq), event=event.type)
    except EventsGone as exc:
        yield error_event("gone", str(exc))
    except JobNotFound as exc:
        yield error_event("not_found", str(exc))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("event stream of job %s cut: Redis unreachable (%s)", job_id, exc)
        yield error_event("unavailable", "the store is unavailable; resume with Last-Event-ID later")


async def open_stream(streams: StreamRedis, keys: Keys, job_id: str, after: int,
                      headers: dict[str, Any] | None = None) -> Response:
    """The job's event stream after seq ``after``; raises its errors before it starts (404, 410), or
    204 if nothing can follow."""
    if not await streams.log(keys).opening(job_id, after):
        return Response(status_code=204, headers=headers)
    # no-store, whatever the sse-starlette release's default: an event stream is never to be replayed from a cache
    return EventSourceResponse(events(streams.log(keys), job_id, after),
                               headers={"Cache-Control": "no-store", **(headers or {})})
