"""Token estimates for budgeting a request before it is sent: the history window and rate limits.

Crude on purpose (about 4 characters per token) and deterministic, so the window a session gets does
not depend on which tokenizer a worker happens to have; the provider's reported usage is the truth.
"""

from __future__ import annotations

import json
import math
from typing import Any


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a content-part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") if isinstance(p, dict) else str(p)
            for p in content
            if not isinstance(p, dict) or p.get("type", "text") == "text"
        )
    return str(content)


PART_TOKENS = 85
"""What a content part that is not text (an image, audio, a file) counts for: an image at low
detail costs OpenAI 85 tokens; the others vary too much to guess better without decoding them."""


def estimate_tokens(message: dict[str, Any]) -> int:
    """Crude, deterministic token count of one message (about 4 characters per token, plus
    ``PART_TOKENS`` for each content part that is not text)."""
    content = message.get("content")
    tokens = 4 + math.ceil(len(text_of(content)) / 4)
    if isinstance(content, list):
        tokens += PART_TOKENS * sum(1 for p in content if isinstance(p, dict) and p.get("type", "text") != "text")
    if message.get("tool_calls"):
        tokens += math.ceil(len(json.dumps(message["tool_calls"], default=str)) / 4)
    return tokens
