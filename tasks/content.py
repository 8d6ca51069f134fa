"""A user message's content as the chat-completions API has it: a string, or a list of content parts.

Each part is checked against the ``openai`` SDK's own type for its ``type`` (the members of
``ChatCompletionContentPartParam``: text, image_url, input_audio, file), strictly and with no
unknown keys, so what is stored is exactly what the provider will receive: nothing coerced, nothing
dropped. A part type the SDK does not define is refused by name; a provider-specific one would be
refused by OpenAI too, and a queue should say so at the door, not a minute later.

Sizes: text parts count against ``CHATQ_MAX_MESSAGE_CHARS`` like a string message; every other
string of a part (URLs, ``data:`` URLs, base64 audio or file data, file names and IDs) counts
against ``CHATQ_MAX_INLINE_BYTES``. Inline data is stored in Redis with the job, again in the
history, and sent again with every later turn of the session, so large media should go by URL
or uploaded file ID, which cost a few bytes.
"""

from __future__ import annotations

import binascii
import re
from functools import cache
from typing import Any, get_args, get_type_hints

from pydantic import ConfigDict, TypeAdapter, ValidationError

from .errors import InvalidRequest, shown

MAX_PARTS = 100
DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)((?:;[\w.+-]+=[\w.+-]+)*);base64,", re.A)


@cache
def part_types() -> dict[str, TypeAdapter]:
    """``type`` value -> a strict adapter for a list of the SDK's TypedDict of that part, with no
    unknown keys (a TypedDict takes no config of its own; a list of it does). The SDK is imported
    here, on first use: a producer that sends only strings never pays for importing ``openai``
    (about half a second)."""
    from openai.types.chat import ChatCompletionContentPartParam

    adapters = {}
    for cls in get_args(ChatCompletionContentPartParam):
        (literal,) = get_args(get_type_hints(cls)["type"])
        adapters[literal] = TypeAdapter(list[cls], config=ConfigDict(extra="forbid", strict=True))  # type: ignore[valid-type]
    return adapters


def first_error(exc: ValidationError, where: str, skip: int = 0) -> str:
    """The first violation of a validation error, as ``where.loc: msg`` (``skip``: leading parts of
    the location that ``where`` already says)."""
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"][skip:])
    if err["type"] == "extra_forbidden":
        return f"{where}{loc} is not a field the API defines there"
    return f"{where}{loc}: {err['msg']}"


def validate_content(content: object, what: str = "message") -> list[dict[str, Any]]:
    """A list of content parts, each valid for its SDK type, or ``InvalidRequest`` naming the first
    fault. Returns the list as given (the checks copy nothing into it)."""
    if not isinstance(content, list):
        raise InvalidRequest(f"{what} must be a string or a list of content parts, not {type(content).__name__}")
    if not content:
        raise InvalidRequest(f"{what} is an empty list of content parts")
    if len(content) > MAX_PARTS:
        raise InvalidRequest(f"{what} has {len(content)} content parts; the limit is {MAX_PARTS}")
    adapters = part_types()
    for i, part in enumerate(content):
        where = f"{what}[{i}]"
        if not isinstance(part, dict):
            raise InvalidRequest(f"{where} must be a content part (an object with a 'type'), not {type(part).__name__}")
        kind = part.get("type")
        adapter = adapters.get(kind) if isinstance(kind, str) else None
        if adapter is None:
            raise InvalidRequest(f"{where} has type {shown(kind)}: a user message's content parts are "
                                 f"{', '.join(adapters)} (the chat-completions API's, as the openai SDK defines them)")
        try:
            adapter.validate_python([part])
        except ValidationError as exc:
            raise InvalidRequest(first_error(exc, where, 1)) from None
        _check_media(part, where)
    return content


def _check_media(part: dict[str, Any], where: str) -> None:
    """What the types cannot say: an image is fetched by http(s) or inlined as a base64 ``data:``
    URL, inline data is base64, and a file names its data or an uploaded file."""
    kind = part["type"]
    if kind == "image_url":
        url = part["image_url"]["url"]
        if url.startswith("data:"):
            _check_data_url(url, f"{where}.image_url.url")
        elif not re.match(r"^https?://\S+$", url, re.I):
            raise InvalidRequest(f"{where}.image_url.url must be an http(s) URL or a base64 data: URL, "
                                 f"not {shown(url)}")
    elif kind == "input_audio":
        _check_base64(part["input_audio"]["data"], f"{where}.input_audio.data")
    elif kind == "file":
        file = part["file"]
        if not file.get("file_data") and not file.get("file_id"):
            raise InvalidRequest(f"{where}.file needs file_data (base64 or a data: URL) or file_id")
        if data := file.get("file_data"):
            if data.startswith("data:"):
                _check_data_url(data, f"{where}.file.file_data")
            else:
                _check_base64(data, f"{where}.file.file_data")


def _check_data_url(url: str, where: str) -> None:
    m = DATA_URL.match(url)
    if m is None:
        raise InvalidRequest(f"{where} is a data: URL but not data:<media type>;base64,<data>: {shown(url, 40)}")
    _check_base64(url[m.end():], where)


def _check_base64(data: str, where: str) -> None:
    try:
        binascii.a2b_base64(data.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise InvalidRequest(f"{where} is not base64 ({exc})") from None


def text_chars(content: str | list[dict[str, Any]] | None) -> int:
    """Characters of text: a string's, or the sum of a part list's text parts."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    return sum(len(p["text"]) for p in content if p.get("type") == "text")


def inline_chars(content: str | list[dict[str, Any]] | None) -> int:
    """Characters of every string in the non-text parts: URLs, inline data, file names and IDs."""
    if not isinstance(content, list):
        return 0
    return sum(_strings(p) for p in content if p.get("type") != "text")


def _strings(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_strings(v) for k, v in value.items() if k != "type")
    if isinstance(value, list):
        return sum(_strings(v) for v in value)
    return 0


def is_blank(content: str | list[dict[str, Any]]) -> bool:
    """No text and no other part: nothing for a model to answer."""
    if isinstance(content, str):
        return not content.strip()
    return all(p.get("type") == "text" and not p["text"].strip() for p in content)
