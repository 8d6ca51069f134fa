"""The chat-completions provider: the real ``openai`` SDK, or the embedded offline model.

Retries live here and only here (``OpenAI(max_retries=0)``), in place, so a retried call never
lets a later message of the session overtake and never multiplies with the SDK's own retries.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import openai
from openai._constants import DEFAULT_CONNECTION_LIMITS, RAW_RESPONSE_HEADER
from openai.types.chat import ChatCompletion

from chatq.tasks.models import JobError, ProviderErrorObject, ProviderErrorResponse
from chatq.tasks.settings import Settings

from . import offline_model
from .metrics import WorkerMetrics
from .reply import (BodyReader, ReplyBroken, ReplyError, ReplyTooLarge, SSELines, StreamAssembly, parse_chunk,
                    parse_completion)
from .tracing import provider_call

log = logging.getLogger(__name__)

OnDelta = Callable[[str], None]
"""Told each piece of the reply's text as it streams in (never blocks: the event writer buffers it)."""
Pace = Callable[["asyncio.Transport | None"], Awaitable[None]]
"""Waited for between two reads of a streamed reply, given the reply's socket if it can be reached
(``EventWriter.pace``, which may pause reading it meanwhile)."""
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}

MAX_ERROR_MESSAGE = 500  # an error page's HTML is not worth storing whole in every failed job


class ProviderError(Exception):
    def __init__(self, type: str, message: str, retryable: bool, retry_after: float | None = None,
                 response: ProviderErrorResponse | None = None):
        super().__init__(message)
        self.error = JobError(type=type, message=message, retryable=retryable, provider_response=response)
        self.retry_after = retry_after


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    if ms := headers.get("retry-after-ms"):
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _transport(response: Any) -> asyncio.Transport | None:
    """The socket transport under the SDK's aiohttp response, if it can be reached (the SDK's
    vendored ``httpx_aiohttp`` stream keeps the aiohttp response): None if its layout changes,
    and reads are then paced without pausing the socket."""
    aio = getattr(getattr(response, "stream", None), "_stream", None)
    connection = getattr(getattr(aio, "_aiohttp_response", None), "connection", None)
    transport = getattr(connection, "transport", None)
    return transport if isinstance(transport, asyncio.Transport) else None


def _clip(message: str) -> str:
    return message if len(message) <= MAX_ERROR_MESSAGE else message[:MAX_ERROR_MESSAGE] + "…"


def _text(value: object) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def error_response(exc: openai.APIStatusError) -> ProviderErrorResponse:
    """The status and error object the provider answered with; a body that is not OpenAI's error shape
    (a gateway's HTML page) gives the SDK's message and nothing else."""
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error", body)  # OpenAI's {"error": {...}}; vLLM's error object is the body itself
    err = err if isinstance(err, dict) else {"message": err}
    return ProviderErrorResponse(status_code=exc.status_code, error=ProviderErrorObject(
        message=_clip(_text(err.get("message")) or str(exc)), type=_text(err.get("type")),
        param=_text(err.get("param")), code=_text(err.get("code"))))


def classify(exc: Exception) -> ProviderError:
    """Map an SDK exception or a refused reply to a job error: what to retry, and why it failed."""
    if isinstance(exc, ReplyError):
        return ProviderError(exc.type, str(exc), exc.retryable)
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError("ProviderTimeout", "the provider did not answer in time", True)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError("ProviderConnectionError", f"connection to the provider failed: {exc}", True)
    if isinstance(exc, openai.APIStatusError):
        response = error_response(exc)
        status, message = response.status_code, response.error.message
        if status == 429 and response.error.code == "insufficient_quota":
            return ProviderError("InsufficientQuota", message, False, response=response)
        return ProviderError(
            f"ProviderHTTP{status}", _clip(f"provider returned {status}: {message}"),
            status in RETRYABLE_STATUS, _retry_after(exc.response.headers), response,
        )
    return ProviderError(type(exc).__name__, str(exc), False)


class Provider:
    """Calls the provider from the worker's event loop through one ``AsyncOpenAI`` client.

    Thousands of calls wait on their sockets at no cost. The client runs on the SDK's aiohttp
    transport (``DefaultAioHttpClient``, the ``openai[aiohttp]`` extra) with a connection per call in
    flight: httpx's own pool re-walks every connection each time a request starts or ends, which
    measured 12.6 ms of CPU per call at 1,000 in flight, against 2.8 ms on aiohttp.
    ``OpenAI(max_retries=0)``: retries are ours, in place (``complete``).
    """

    def __init__(self, settings: Settings, max_connections: int = 1000, metrics: WorkerMetrics | None = None):
        self.settings = settings
        self.metrics = metrics
        self.offline = settings.offline
        self.client: openai.AsyncOpenAI | None = None
        if not self.offline:  # fails at start-up, not on the first job, if the SDK rejects the settings
            s = settings
            limits = type(DEFAULT_CONNECTION_LIMITS)(max_connections=max_connections,
                                                     max_keepalive_connections=max_connections)
            # No read timeout: aiohttp re-arms it (a timer) at every packet a stream brings, and the
            # whole call already runs under one ``asyncio.timeout`` (``_call``).
            timeout = openai.Timeout(s.provider_timeout, read=None)
            self.client = openai.AsyncOpenAI(
                api_key=s.openai_api_key.get_secret_value() if s.openai_api_key else "unused",
                base_url=s.openai_base_url or None, max_retries=0, timeout=timeout,
                http_client=openai.DefaultAioHttpClient(timeout=timeout, limits=limits),
            )

    async def _call(self, request: dict[str, Any], on_delta: OnDelta | None = None, pace: Pace | None = None,
                    stream: bool = True) -> ChatCompletion:
        """POST the request as built: it is already plain JSON, and ``chat.completions.create``
        would re-walk every message and tool schema through the SDK's TypedDict transform (a quarter
        of a worker's CPU at zero latency). ``client.post`` is the SDK's documented way to send a
        body as is; auth and error types are the SDK's own.

        The whole call -- connect, the wait for the headers, the body however slowly it trickles in
        -- runs under one ``asyncio.timeout``; the reply comes back unread (the SDK's raw streamed
        response) so its body is read under the size cap, then judged by ``parse_completion``.

        Streamed when told to (``stream``) and given ``on_delta``; a whole reply is told to
        ``on_delta`` at once."""
        if self.client is None:
            completion = ChatCompletion.model_validate(offline_model.complete(request))
            if on_delta and completion.choices[0].message.content:
                on_delta(completion.choices[0].message.content)
            return completion
        s = self.settings
        streamed = on_delta is not None and stream
        if streamed:
            request = {**request, "stream": True, "stream_options": {"include_usage": True}}
        deadline = time.monotonic() + s.provider_timeout
        reader = BodyReader(declared=None, deadline=deadline, timeout=s.provider_timeout,
                            max_bytes=s.provider_max_reply_bytes, clock=time.monotonic)
        try:
            async with asyncio.timeout(s.provider_timeout):
                raw = await self.client.post(
                    "/chat/completions", body=request, cast_to=ChatCompletion,
                    options={"security": {"bearer_auth": True}, "headers": {RAW_RESPONSE_HEADER: "stream"}})
                response = raw.http_response
                try:
                    content_type = response.headers.get("content-type", "")
                    if streamed and content_type.startswith("text/event-stream"):
                        return await self._read_stream(response, reader, on_delta, pace)  # type: ignore[arg-type]
                    length = response.headers.get("content-length")
                    reader.declared = int(length) if length and length.isdigit() else None
                    body = await reader.read(response.aiter_bytes())
                finally:
                    await response.aclose()
        except TimeoutError as exc:  # the deadline, wherever the call was: headers or body
            raise reader.late() from exc
        completion = parse_completion(body, content_type)
        if on_delta and completion.choices[0].message.content:  # asked to stream, answered whole
            on_delta(completion.choices[0].message.content)
        return completion

    async def _read_stream(self, response: Any, reader: BodyReader, on_delta: OnDelta,
                           pace: Pace | None = None) -> ChatCompletion:
        """A streamed reply: its ``data:`` events parsed as they arrive (``SSELines``), the text sent
        to ``on_delta``, the chunks assembled into the completion a non-streamed call returns
        (``StreamAssembly``). The size limit and the deadline count the raw bytes, as for a whole reply.

        Paced: once the reply has begun (its first text or tool call: a provider's opening chunk may
        carry neither, and the first text is not kept waiting), a read waits for ``pace`` (the job's
        event writer: the process's next tick, or a slower one while nobody follows the job), so one
        wake-up takes every chunk that came meanwhile and hands their text over in one piece. The
        wait is given the reply's socket (``_transport``), to pause it during a long wait: the kernel
        then gathers the chunks, where aiohttp would wake the loop for every packet. A stop cancels
        the wait like any other."""
        lines, assembly = SSELines(), StreamAssembly()
        chunks = response.aiter_bytes()
        transport = _transport(response) if pace is not None else None
        while True:
            if pace is not None and (assembly.text or assembly.calls):
                await pace(transport)
            try:
                data = await anext(chunks, None)
            except Exception as exc:  # whatever the transport raises mid-stream
                if time.monotonic() >= reader.deadline:
                    raise reader.late() from exc
                raise ReplyBroken(f"the provider's stream broke after {assembly.chunks} chunks: {exc!r}") from exc
            if data is None:  # some servers end without [DONE]: a finished choice is a finished reply
                if assembly.finish_reason is not None:
                    return assembly.completion()
                raise ReplyBroken(f"the provider's stream ended after {assembly.chunks} chunks, unfinished")
            reader.size += len(data)
            if reader.size > reader.max_bytes:
                raise ReplyTooLarge(f"the provider's streamed reply is over the limit of {reader.max_bytes} "
                                    "bytes (CHATQ_PROVIDER_MAX_REPLY_BYTES); stopped reading it")
            texts = []
            for payload in lines.feed(data):
                if payload.strip() == b"[DONE]":
                    if texts:
                        on_delta("".join(texts))
                    return assembly.completion()
                if text := assembly.add(parse_chunk(payload)):
                    texts.append(text)
            if texts:
                on_delta("".join(texts))

    async def _measured(self, request: dict[str, Any], on_delta: OnDelta | None, attempt: int = 0,
                        pace: Pace | None = None, stream: bool = True) -> ChatCompletion:
        """``_call``, counted: its time and outcome, the time to its first text, calls open; and
        traced, when traces are on (``tracing.provider_call``: ``attempt`` counts the retries)."""
        m = self.metrics
        with provider_call(request, attempt) as span:
            if m is None and span is None:
                return await self._call(request, on_delta, pace, stream)
            model, started, first = str(request.get("model")), time.perf_counter(), True

            def timed(text: str) -> None:
                nonlocal first
                if first:
                    first = False
                    if m is not None:
                        m.first_token.labels(model).observe(time.perf_counter() - started)
                    if span is not None:
                        span.first_token()
                on_delta(text)  # type: ignore[misc]

            outcome = "error"
            if m is not None:
                m.calls_in_flight.inc()
            try:
                completion = await self._call(request, timed if on_delta is not None else None, pace, stream)
                outcome = "ok"
                if span is not None:
                    span.answered(completion)
                return completion
            except (openai.APIError, ReplyError) as exc:
                outcome = classify(exc).error.type
                raise
            finally:
                if m is not None:
                    m.calls_in_flight.dec()
                    m.provider_call.labels(model, outcome).observe(time.perf_counter() - started)
                if span is not None:
                    span.outcome = outcome

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = self.settings.provider_backoff_max
        if retry_after is not None:
            return min(cap, retry_after) + random.uniform(0, 0.1)
        return random.uniform(0, min(cap, 0.5 * 2 ** attempt))

    async def complete(
        self,
        request: dict[str, Any],
        on_retry: Callable[[JobError, float], Awaitable[None]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_delta: OnDelta | None = None,
        pace: Pace | None = None,
        stream: Callable[[], bool] | None = None,
    ) -> ChatCompletion:
        """One completion, retried in place on 429/5xx/timeouts/bad replies with jittered backoff.
        With ``on_delta``, streamed when ``stream()`` says so at the call's start (asked again for
        each retry: a reader may have come meanwhile; without ``stream``, unless ``CHATQ_STREAM`` is
        off); a retry is announced through ``on_retry`` before the new call streams its text again
        from the start. ``pace``: what a streamed read waits for before reading again (``_read_stream``)."""
        attempt = 0
        while True:
            try:
                streamed = stream() if stream is not None else self.settings.stream != "off"
                return await self._measured(request, on_delta, attempt, pace, streamed)
            except (openai.APIError, ReplyError) as exc:
                err = classify(exc)
            if not err.error.retryable or attempt >= self.settings.provider_retries:
                raise err
            if self.metrics is not None:
                self.metrics.retries.labels(str(request.get("model")), err.error.type).inc()
            delay = self.backoff(attempt, err.retry_after)
            log.warning("provider call failed (%s), retry %d in %.2fs", err.error.type, attempt + 1, delay)
            if on_retry:
                await on_retry(err.error, delay)
            await sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.close()
