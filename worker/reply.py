"""A provider's 200 reply: read under one deadline and a size cap, then judged as a chat completion.

Pure functions over the body's chunks and bytes, so the same checks serve the SDK's sync and async
responses. Each refusal is a ``ReplyError`` whose message names what was wrong, never an
``AttributeError`` three frames later in the agent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from openai.types.chat import ChatCompletion
from pydantic import ValidationError

# The agent acts on these fields; a fault anywhere else (a compatible provider's own
# finish_reason, a float ``created``, a missing ``object``) is tolerated as the SDK tolerates it.
_USAGE_TOKENS = {"prompt_tokens", "completion_tokens", "total_tokens"}
_MESSAGE_READ = {"content", "tool_calls"}


class ReplyError(Exception):
    """A 200 reply chatq will not use. ``type`` and ``retryable`` become the job error's."""

    type = "ProviderBadResponse"
    retryable = True


class BadReply(ReplyError):
    """Not a chat completion: retried like a 5xx, since proxies and overloaded gateways send these."""


class ReplyTooLarge(ReplyError):
    """Over the size limit: not retried, since asking again pays for the same oversized answer."""

    type = "ProviderReplyTooLarge"
    retryable = False


class ReplyTimeout(ReplyError):
    type = "ProviderTimeout"


class ReplyBroken(ReplyError):
    type = "ProviderConnectionError"


def read_body(chunks: Iterable[bytes], *, declared: int | None, deadline: float, timeout: float,
              max_bytes: int, clock: Callable[[], float]) -> bytes:
    """The whole body, or a ``ReplyError`` the moment it runs past ``deadline`` or ``max_bytes``.

    ``chunks`` yields as bytes arrive, so however slowly they trickle in the deadline is checked
    at every one; a read that fails (a stall the watchdog cut, a dropped connection) is a timeout
    when the deadline has passed and a broken connection otherwise.
    """
    if declared is not None and declared > max_bytes:
        raise ReplyTooLarge(f"the provider's reply is {declared} bytes, over the limit of {max_bytes} "
                            "(CHATQ_PROVIDER_MAX_REPLY_BYTES)")
    parts: list[bytes] = []
    size = 0
    it = iter(chunks)
    while True:
        try:
            chunk = next(it, None)
        except Exception as exc:  # whatever the transport raises: only the deadline tells them apart
            if clock() >= deadline:
                raise _late(size, timeout) from exc
            raise ReplyBroken(f"the connection to the provider broke while reading its reply: {exc!r}") from exc
        if chunk is None:
            return b"".join(parts)
        size += len(chunk)
        if size > max_bytes:
            raise ReplyTooLarge(f"the provider's reply is over the limit of {max_bytes} bytes "
                                "(CHATQ_PROVIDER_MAX_REPLY_BYTES); stopped reading it")
        if clock() >= deadline:
            raise _late(size, timeout)
        parts.append(chunk)


def _late(size: int, timeout: float) -> ReplyTimeout:
    return ReplyTimeout(f"the provider's reply was not complete within {timeout:g}s "
                        f"(CHATQ_PROVIDER_TIMEOUT, per call): {size} byte{'' if size == 1 else 's'} had arrived")


def parse_completion(body: bytes, content_type: str = "") -> ChatCompletion:
    """The body as a ``ChatCompletion`` validated by the SDK's own type, or a ``BadReply``.

    Pydantic's strict validation (about 10 µs) replaces the SDK's lenient ``construct`` (about
    180 µs, and it turns garbage into a model whose fields are missing or strings).
    """
    try:
        return _with_choices(ChatCompletion.model_validate_json(body))
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
    what = f"{content_type.split(';')[0].strip() or 'no content type'}, {len(body)} bytes"
    if errors[0]["type"] == "json_invalid":
        raise BadReply(f"the provider's 200 reply is not JSON ({what}): {_excerpt(body)}")
    data: Any = json.loads(body)
    if not isinstance(data, dict):
        raise BadReply(f"the provider's 200 reply is JSON but not an object ({type(data).__name__}, {len(body)} bytes)")
    if "choices" not in data and isinstance(data.get("error"), dict | str):
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise BadReply(f"the provider's 200 reply is an error: {str(message)[:300]}")
    fatal = [e for e in errors if _read_by_agent(e["loc"])]
    if fatal:
        more = f" (and {len(fatal) - 3} more)" if len(fatal) > 3 else ""
        named = "; ".join(_describe(e) for e in fatal[:3])
        raise BadReply(f"the provider's 200 reply is not a chat completion: {named}{more}")
    return _with_choices(ChatCompletion.construct(**data))


def _with_choices(completion: ChatCompletion) -> ChatCompletion:
    if not completion.choices:
        raise BadReply("the provider's 200 reply has no choices")
    return completion


def _read_by_agent(loc: tuple[int | str, ...]) -> bool:
    """Whether a validation error's location is a field the agent uses (only the first choice)."""
    head = loc[0] if loc else None
    if head in ("id", "model"):
        return True
    if head == "usage":
        return len(loc) == 1 or loc[1] in _USAGE_TOKENS
    if head == "choices":
        return len(loc) == 1 or loc[1] == 0 and (
            len(loc) == 2 or loc[2] == "message" and (len(loc) == 3 or loc[3] in _MESSAGE_READ))
    return False


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def _excerpt(body: bytes, limit: int = 80) -> str:
    text = " ".join(body[:limit * 4].decode("utf-8", "replace").split())
    return repr(text[:limit] + ("…" if len(text) > limit or len(body) > limit * 4 else ""))
