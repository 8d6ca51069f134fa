"""Refuse oversized request bodies with 413 before they are parsed, in a way every client can read.

Starlette's own limiter answers a declared oversized ``Content-Length`` in plain text; this one
answers in chatq's JSON error shape, checks the declared length up front, and counts streamed
(chunked) bodies as they arrive, raising a 413 ``HTTPException`` that FastAPI passes through to
the error handlers.

Before answering it reads and discards the rest of the body (up to ``DRAIN_BYTES`` or twice the
limit, for at most ``DRAIN_SECONDS``), as nginx's lingering close does. The server closes the
connection after a 413; closing a socket with unread data makes the kernel send a reset, and a
client still sending (Python's ``urllib``, most simple clients, which read the response only once
the body is sent) then sees "connection reset" instead of the 413. A client that asked
``Expect: 100-continue`` has sent no body yet: it gets its 413 at once.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

DRAIN_BYTES = 64 << 20
DRAIN_SECONDS = 10.0


def _too_large(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes"


async def _drain(receive: Receive, received: int, cap: int) -> None:
    """Read and discard what the client is still sending, within the bounds."""
    with anyio.move_on_after(DRAIN_SECONDS):
        while received <= cap:
            message = await receive()
            if message["type"] != "http.request":
                return
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


class BodyLimit:
    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        cap = max(DRAIN_BYTES, 2 * limit)
        headers = Headers(scope=scope)
        lingers = headers.get("expect", "").lower() != "100-continue"
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            if lingers and int(declared) <= cap:
                await _drain(receive, 0, cap)
            response = error_response(413, "payload_too_large", _too_large(limit), headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if lingers and message.get("more_body", False):
                        await _drain(receive, received, cap)
                    raise HTTPException(413, _too_large(limit), headers={"Connection": "close"})
            return message

        await self.app(scope, counted, send)
