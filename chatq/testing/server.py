"""An OpenAI-compatible HTTP server answering with the offline model, for tests and benchmarks.

It lets the real ``openai`` SDK run end to end without network: asyncio + uvicorn hold hundreds
of in-flight requests while sleeping a configurable latency, directives in the last user message
inject faults per message text (so parallel tests do not interfere), and every request body is
recorded so tests can assert what the provider actually received.

Directives (in the last user message; counters are keyed by that message's text + directive;
they are checked in order and the first that fires decides, except ``stall`` which only delays):
``[[fault:429 n=2 retry_after=1]]``, ``[[fault:quota]]``, ``[[fault:500 n=1]]``, ``[[fault:400]]``
(any status; 429/5xx default to ``n=1``, others to always; ``html=1`` answers with a gateway's HTML error
page instead of the JSON error), ``[[stall:S n=1]]``, ``[[drop n=1]]``.
Bad 200 replies (always, unless ``n=``): ``[[fault:html]]``, ``[[fault:text]]`` (not JSON, though it
says so), ``[[fault:notchat]]`` (JSON, not a completion), ``[[fault:nochoices]]``,
``[[fault:huge bytes=N]]`` (a valid completion of N bytes, chunked), ``[[fault:drip bps=N]]`` (a valid
completion, N bytes a second).

Streaming: a body with ``"stream": true`` is answered as OpenAI does, ``text/event-stream`` with one
``data: {ChatCompletionChunk}`` event per chunk and ``data: [DONE]``; the SDK's assembler rebuilds exactly
the plain reply (``stream_chunks``). The headers go out at once, then ``latency`` passes before the first
chunk (time to first token) and ``chunk_delay`` between chunks. Each streamed response is recorded with
its emission log (``GET /streams``), and a client that hangs up is noticed at once, even mid-sleep.
Stream directives, checked only for stream requests (except ``words``): ``[[stream delay=S]]`` (seconds
between chunks for this message), ``[[stream words=N]]`` (the reply padded to at least N words, streamed
or not, so both paths agree), ``[[nostream]]`` (always, unless ``n=``: the plain JSON completion, as a
provider that cannot stream answers), ``[[cut after=N n=1]]`` (the role chunk and N more, then the
connection drops without ``[DONE]``). ``[[nostream]]`` and ``[[cut]]`` are checked in order after the
faults above, and the first that fires decides.

Structured output: the offline model honours ``response_format`` (JSON that fits a ``json_schema``,
``{"reply": ...}`` for ``json_object``); ``[[schema:break n=1]]`` (always, unless ``n=``) answers such a
request with JSON that breaks the schema (its first required property left out, or a value of the
wrong type) or, for ``json_object`` or a format without a schema, with text that is not JSON.
Streamed or not alike.

Replies come from the embedded offline model, with these directives left out of its echoes
(``complete``, ``echo_reply``): the directives belong to this server, not to the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from chatq.tasks.conversation import conversation_problem
from chatq.worker import offline_model
from chatq.worker.tokens import text_of

DIRECTIVE = re.compile(r"\[\[(fault|stall|drop)(?::([\w.]+))?((?:\s+\w+=[\w.]+)*)\s*\]\]")
STREAM_DIRECTIVE = re.compile(r"\[\[(stream|nostream|cut)((?:\s+\w+=[\w.]+)*)\s*\]\]")
SCHEMA_DIRECTIVE = re.compile(r"\[\[schema:break((?:\s+\w+=[\w.]+)*)\s*\]\]")
PARAM = re.compile(r"(\w+)=([\w.]+)")
STRIPPED = re.compile(r"\[\[(?:fault|stall|drop|stream|nostream|cut|schema)\b[^\]]*\]\]")
WORDS = re.compile(r"\s*\S+|\s+")  # a word with the whitespace before it: the pieces join to the text
TOKENS = re.compile(r"\s*(?:\w+|[^\w\s]+)|\s+")  # finer, for tool-call arguments: '{"', 'q', '":', ' 1', '}'
FILLER = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
          "et dolore magna aliqua").split()
DROP_LOG = "ASGI callable returned without completing response."

ERRORS: dict[int | str, tuple[str, str, str | None]] = {
    400: ("Invalid request (test server)", "invalid_request_error", None),
    401: ("Incorrect API key provided (test server)", "invalid_request_error", "invalid_api_key"),
    403: ("Permission denied (test server)", "invalid_request_error", None),
    404: ("The model does not exist or you do not have access to it (test server)",
          "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached (test server)", "requests", "rate_limit_exceeded"),
    "quota": ("You exceeded your current quota (test server)", "insufficient_quota", "insufficient_quota"),
    500: ("The server had an error while processing your request (test server)", "server_error", None),
    503: ("The server is overloaded, please try again later (test server)", "server_error", None),
}


def strip_directives(text: str) -> str:
    """The user's text without this server's directives, whitespace collapsed: what echoes quote."""
    return offline_model.collapse(STRIPPED.sub(" ", text))


def echo_reply(messages: list[dict[str, Any]]) -> str:
    """The server's echo for these messages: the offline model's, without the directives."""
    return offline_model.echo_reply(messages, strip_directives)


def stream_params(text: str) -> dict[str, str]:
    """The parameters of a message's ``[[stream ...]]`` directives, merged (later ones win)."""
    params: dict[str, str] = {}
    for m in STREAM_DIRECTIVE.finditer(text):
        if m.group(1) == "stream":
            params.update(PARAM.findall(m.group(2)))
    return params


def pad(text: str, words: int) -> str:
    """``text`` with filler words after it until it has at least ``words`` words."""
    missing = words - len(text.split())
    if missing <= 0:
        return text
    return " ".join([*([text] if text else []), *(FILLER[i % len(FILLER)] for i in range(missing))])


def broken_json(response_format: Any) -> str:
    """A reply that breaks what ``response_format`` asks for: for a JSON schema, its smallest
    instance without its first required property (or a value of another type); else not JSON."""
    schema = (response_format.get("json_schema") or {}).get("schema") if isinstance(response_format, dict) \
        and response_format.get("type") == "json_schema" else None
    if schema is None:
        return "this is not JSON {"
    value = offline_model.instance_of(schema, "broken")
    top = offline_model.resolve(schema, schema)
    if isinstance(value, dict) and isinstance(top, dict) and top.get("required"):
        value.pop(top["required"][0], None)
        return json.dumps(value)
    return json.dumps(12345 if isinstance(value, str) else "a string where the schema wants something else")


def complete(body: dict[str, Any], broken: bool = False) -> dict[str, Any]:
    """The server's answer to a request that no directive intercepts, streamed or not.

    ``[[stream words=N]]`` lengthens the text reply here, so a benchmark gets long replies from short
    prompts and the streamed and plain answers stay the same. ``broken``: ``[[schema:break]]`` fired.
    """
    completion = offline_model.complete(body, strip_directives)
    words = int(float(stream_params(last_user_text(body)).get("words", 0)))
    message = completion["choices"][0]["message"]
    if broken and message["content"] is not None:
        message["content"] = broken_json(body.get("response_format"))
    if words and message["content"] is not None:
        message["content"] = pad(message["content"], words)
        usage = completion["usage"]  # recounted as the offline model counts: a token per four characters
        usage["completion_tokens"] = max(1, math.ceil(len(message["content"]) / 4))
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return completion


def stream_chunks(completion: dict[str, Any], include_usage: bool = False) -> tuple[list[dict[str, Any]], int]:
    """The ``ChatCompletionChunk`` bodies OpenAI would stream for ``completion``, and how many of them
    carry the reply (the role chunk and the content or tool-call deltas) before the finish chunk.

    Text comes about a word a chunk; a tool call's first delta names it (index, id, type, name, empty
    arguments) and further deltas append its arguments a token or so at a time. With ``include_usage``
    every chunk says ``"usage": null`` and a last one with no choices carries the usage, as OpenAI's do.
    """
    choice = completion["choices"][0]
    message = choice["message"]
    content, calls = message.get("content"), message.get("tool_calls") or []

    def chunk(delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"],
            "choices": [] if delta is None else [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = completion["usage"] if delta is None else None
        return out

    deltas: list[dict[str, Any]] = [{"content": piece} for piece in WORDS.findall(content or "")]
    for index, call in enumerate(calls):
        function = call["function"]
        deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": call["type"],
                                       "function": {"name": function["name"], "arguments": ""}}]})
        deltas += [{"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                   for piece in TOKENS.findall(function.get("arguments") or "")]
    first: dict[str, Any] = {"role": "assistant", "content": "" if content is not None else None}
    if content is None and deltas:  # OpenAI names the first tool call in the role chunk
        first.update(deltas.pop(0))
    chunks = [chunk(first), *map(chunk, deltas)]
    reply = len(chunks)
    chunks.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        chunks.append(chunk(None))
    return chunks, reply


async def _chunks(data: bytes, size: int, pause: float = 0.0) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        if pause and i:
            await asyncio.sleep(pause)
        yield data[i:i + size]


def bad_reply(kind: str, body: dict[str, Any], params: dict[str, str]) -> Response:
    """The 200 replies a broken gateway or provider sends instead of a chat completion."""
    if kind == "html":
        return Response("<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1>"
                        "</body></html>", media_type="text/html")
    if kind == "text":
        return Response("upstream connect error or disconnect/reset before headers",
                        media_type="application/json")
    if kind == "notchat":
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})
    if kind == "nochoices":
        return JSONResponse({**complete(body), "choices": []})
    if kind == "huge":
        completion = complete(body)
        completion["choices"][0]["message"]["content"] = "x" * int(params.get("bytes", 8 << 20))
        return StreamingResponse(_chunks(json.dumps(completion).encode(), 1 << 16), media_type="application/json")
    bps = float(params.get("bps", 1))  # drip
    data = json.dumps(complete(body)).encode()
    size = max(1, round(bps / 10))  # ten writes a second, or one byte at a time when slower
    return StreamingResponse(_chunks(data, size, size / bps), media_type="application/json",
                             headers={"content-length": str(len(data))})


BAD_REPLIES = {"html", "text", "notchat", "nochoices", "huge", "drip"}

ERROR_PAGE = ("<html><head><title>{status} Error</title></head><body><center><h1>{status} Error</h1></center>"
              + "<!-- a padding comment, as some gateways send -->" * 100 + "</body></html>")


class _DropFilter(logging.Filter):
    """Silence uvicorn's complaint about the response a ``[[drop]]`` leaves unfinished on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != DROP_LOG


_DROP_FILTER = _DropFilter()


@dataclass
class _State:
    latency: float = 0.0
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: int = 0
    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    recorded: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))
    chunk_delay: float = 0.0
    streaming: bool = True
    streams: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))

    def streamed(self, contains: str = "") -> list[dict[str, Any]]:
        """Copies of the streamed responses whose last user message contains ``contains``."""
        return [{**s, "emissions": list(s["emissions"])} for s in list(self.streams) if contains in s["text"]]

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "faults": self.faults}

    def reset(self) -> None:
        self.requests = self.faults = 0
        self.max_in_flight = self.in_flight


def error(status: int, message: str | None = None, kind: int | str | None = None,
          param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-shaped error response."""
    default, type_, code = ERRORS.get(kind or status) or (
        f"HTTP {status} (test server)", "server_error" if status >= 500 else "invalid_request_error", None)
    body = {"error": {"message": message or default, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    for m in reversed(messages if isinstance(messages, list) else []):
        if isinstance(m, dict) and m.get("role") == "user":
            return text_of(m.get("content"))
    return ""


def validate(body: Any) -> tuple[str, str | None] | None:
    """Reject what the real API rejects with 400, notably tool messages that do not pair up."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object", None
    return conversation_problem(body.get("messages"))


async def _disconnect(receive: Receive) -> None:
    """Returns when the client hangs up (uvicorn answers ``receive`` only then, once the body is read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _hung_up_during(receive: Receive, seconds: float) -> bool:
    """Sleep ``seconds`` unless the client hangs up first (a cancelled call): whether it did."""
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait({gone}, timeout=seconds)
        return gone.done()
    finally:
        gone.cancel()


class _Stream:
    """A streamed answer as an ASGI app: the headers at once, then the chunks at their pace.

    A task waits for the client's hang-up while the chunks go out, so a client that closes the stream
    is recorded the moment its connection goes, even mid-sleep (uvicorn's ``send`` to a closed
    connection silently does nothing, so the writes alone would never tell).
    """

    def __init__(self, state: _State, text: str, chunks: list[dict[str, Any]], reply: int,
                 delay: float, cut: int | None):
        self.state, self.text, self.chunks, self.delay = state, text, chunks, delay
        self.stop = len(chunks) if cut is None else min(1 + cut, reply)
        self.cut = cut is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record: dict[str, Any] = {"text": self.text, "started": time.time(), "ended": None,
                                  "outcome": "streaming", "chunks": 0, "emissions": []}
        self.state.streams.append(record)
        gone = asyncio.ensure_future(_disconnect(receive))
        chars = 0
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]})
            for i, chunk in enumerate(self.chunks[:self.stop]):
                pause = self.state.latency if i == 0 else self.delay
                if pause > 0:
                    await asyncio.wait({gone}, timeout=pause)
                else:
                    await asyncio.sleep(0)  # hundreds of streams take turns
                if gone.done():
                    record["outcome"] = "closed"
                    return
                data = json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
                await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True})
                for choice in chunk["choices"]:
                    chars += len(choice["delta"].get("content") or "")
                record["chunks"] += 1
                record["emissions"].append([chars, time.time()])
            if self.cut:  # returning with the response unfinished: uvicorn closes the connection
                record["outcome"] = "cut"
                return
            await asyncio.sleep(0)
            if gone.done():
                record["outcome"] = "closed"
                return
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            record["outcome"] = "done"
        except OSError:
            record["outcome"] = "closed"
        finally:
            gone.cancel()
            record["ended"] = time.time()


async def _drop(send: Send) -> None:
    """Promise a body, then let uvicorn close the connection: the client sees a dropped connection."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})


class ChatCompletions:
    """``POST /v1/chat/completions`` as a raw ASGI app, so a ``[[drop]]`` can abandon the response."""

    def __init__(self, state: _State):
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        st = self.state
        st.requests += 1
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            response = await self.respond(Request(scope, receive))
            if response is None:
                await _drop(send)
            else:
                await response(scope, receive, send)
        finally:
            st.in_flight -= 1

    def stream_plan(self, text: str) -> tuple[float, int | None] | None:
        """For a stream request: the seconds between chunks and the chunks before a cut (None: no cut),
        or None to answer with the plain JSON completion, as a provider that cannot stream does."""
        st = self.state
        if not st.streaming:
            return None
        delay, cut = float(stream_params(text).get("delay", st.chunk_delay)), None
        for m in STREAM_DIRECTIVE.finditer(text):
            kind, params = m.group(1), dict(PARAM.findall(m.group(2)))
            if kind == "stream":
                continue
            key = (text, m.group(0))
            st.counters[key] = st.counters.get(key, 0) + 1
            if st.counters[key] > float(params.get("n", math.inf if kind == "nostream" else 1)):
                continue
            st.faults += 1
            if kind == "nostream":
                return None
            cut = int(float(params.get("after", 0)))
            break
        return delay, cut

    async def respond(self, request: Request) -> Response | _Stream | None:
        st = self.state
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "We could not parse the JSON body of your request (test server)")
        if isinstance(body, dict):
            st.recorded.append(body)
        if problem := validate(body):
            return error(400, problem[0], param=problem[1])
        text = last_user_text(body)
        for m in DIRECTIVE.finditer(text):
            kind, arg, params = m.group(1), m.group(2) or "", dict(PARAM.findall(m.group(3)))
            always = kind == "fault" and not (arg == "429" or arg.startswith("5"))
            key = (text, m.group(0))
            st.counters[key] = st.counters.get(key, 0) + 1
            if st.counters[key] > float(params.get("n", math.inf if always else 1)):
                continue
            if kind == "stall":
                if await _hung_up_during(request.receive, float(arg or 0)):
                    return None  # nobody is left to answer: the call ends now, as in-flight counts
                continue
            st.faults += 1
            if kind == "drop":
                return None
            if arg in BAD_REPLIES:
                return bad_reply(arg, body, params)
            status = 429 if arg == "quota" else int(arg)
            headers = {"Retry-After": params["retry_after"]} if "retry_after" in params else None
            if params.get("html"):  # a gateway's error page, not the provider's JSON error
                return Response(ERROR_PAGE.format(status=status), status_code=status, media_type="text/html")
            return error(status, kind=arg if arg == "quota" else status, headers=headers)
        broken = self.schema_break(text, body)
        if body.get("stream") is True and (plan := self.stream_plan(text)) is not None:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            chunks, reply = stream_chunks(complete(body, broken), include_usage)
            return _Stream(st, text, chunks, reply, *plan)
        if st.latency > 0:
            await asyncio.sleep(st.latency)
        return JSONResponse(complete(body, broken))

    def schema_break(self, text: str, body: dict[str, Any]) -> bool:
        """Whether ``[[schema:break]]`` fires for this request: it asks for JSON, and the directive's
        ``n`` (default: always) is not used up."""
        response_format = body.get("response_format")
        if not (isinstance(response_format, dict) and response_format.get("type") in ("json_schema", "json_object")):
            return False
        st = self.state
        for m in SCHEMA_DIRECTIVE.finditer(text):
            key = (text, m.group(0))
            st.counters[key] = st.counters.get(key, 0) + 1
            if st.counters[key] <= float(dict(PARAM.findall(m.group(1))).get("n", math.inf)):
                st.faults += 1
                return True
        return False


def create_app(state: _State) -> Starlette:
    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": offline_model.OFFLINE_MODEL, "object": "model", "created": 0, "owned_by": "chatq"}]})

    async def healthz(_: Request) -> Response:
        return JSONResponse({"ok": True})

    async def stats(_: Request) -> Response:
        return JSONResponse(state.stats())

    async def control(request: Request) -> Response:
        body = await request.json()
        if "latency" in body:
            state.latency = float(body["latency"])
        if "chunk_delay" in body:
            state.chunk_delay = float(body["chunk_delay"])
        if "streaming" in body:
            state.streaming = bool(body["streaming"])
        if body.get("reset"):
            state.reset()
        return JSONResponse({**state.stats(), "latency": state.latency, "chunk_delay": state.chunk_delay,
                             "streaming": state.streaming})

    async def requests(request: Request) -> Response:
        contains = request.query_params.get("contains", "")
        return JSONResponse([b for b in list(state.recorded) if contains in last_user_text(b)])

    async def streams(request: Request) -> Response:
        return JSONResponse(state.streamed(request.query_params.get("contains", "")))

    return Starlette(routes=[
        Route("/v1/chat/completions", ChatCompletions(state), methods=["POST"]),
        Route("/v1/models", models),
        Route("/healthz", healthz),
        Route("/stats", stats),
        Route("/control", control, methods=["POST"]),
        Route("/requests", requests),
        Route("/streams", streams),
    ])


class TestServer:
    """The test server on a background thread; ``with TestServer(latency=0.1) as s: s.base_url``."""

    __test__ = False

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0,
                 chunk_delay: float = 0.0, streaming: bool = True):
        self.host, self.port = host, port
        self._state = _State(latency=latency, chunk_delay=chunk_delay, streaming=streaming)
        self.app = create_app(self._state)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def latency(self) -> float:
        return self._state.latency

    @latency.setter
    def latency(self, value: float) -> None:
        self._state.latency = value

    @property
    def chunk_delay(self) -> float:
        """Seconds between a streamed answer's chunks (``[[stream delay=S]]`` overrides it per message)."""
        return self._state.chunk_delay

    @chunk_delay.setter
    def chunk_delay(self, value: float) -> None:
        self._state.chunk_delay = value

    @property
    def streaming(self) -> bool:
        """False: stream requests get the plain JSON completion, as from a provider that cannot stream."""
        return self._state.streaming

    @streaming.setter
    def streaming(self, value: bool) -> None:
        self._state.streaming = value

    @property
    def stats(self) -> dict[str, int]:
        return self._state.stats()

    def reset_stats(self) -> None:
        self._state.reset()

    def recorded(self, contains: str = "") -> list[dict[str, Any]]:
        """Request bodies whose last user message contains ``contains`` (same as ``GET /requests``)."""
        return [b for b in list(self._state.recorded) if contains in last_user_text(b)]

    def streams(self, contains: str = "") -> list[dict[str, Any]]:
        """Streamed responses whose last user message contains ``contains`` (same as ``GET /streams``).

        Each: ``text`` (that message), ``outcome`` (``streaming``, ``done`` once ``[DONE]`` is sent,
        ``closed`` when the client hung up first, ``cut`` by ``[[cut]]``), ``chunks`` sent, ``started``
        and ``ended`` (``time.time()``), and ``emissions``: ``[content characters sent so far,
        time.time()]`` as each chunk is written.
        """
        return self._state.streamed(contains)

    def _bind(self) -> socket.socket:
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto says TCP, and
        # without it Nagle holds every response's second write for the client's delayed ACK (~40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        return sock

    def _uvicorn(self, log_config: Any = None) -> uvicorn.Server:
        logging.getLogger("uvicorn.error").addFilter(_DROP_FILTER)
        return uvicorn.Server(uvicorn.Config(
            # httptools, the C parser, when installed: h11 costs ~40% more server CPU per call.
            self.app, loop="asyncio", http="httptools" if find_spec("httptools") else "h11",
            lifespan="off", log_config=log_config,
            log_level="warning", access_log=False, backlog=2048,
            timeout_keep_alive=75, timeout_graceful_shutdown=1,
        ))

    def start(self) -> TestServer:
        sock = self._bind()
        self._server = self._uvicorn()
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"testserver:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server and self._thread:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> TestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chatq.testing.server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8399)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to sleep before each reply")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between a streamed reply's chunks")
    args = parser.parse_args(argv)
    server = TestServer(args.host, args.port, args.latency, args.chunk_delay)
    sock = server._bind()
    print(server.base_url, flush=True)
    server._uvicorn(log_config=uvicorn.config.LOGGING_CONFIG).run(sockets=[sock])


if __name__ == "__main__":
    main()
