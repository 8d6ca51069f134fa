"""Small tools that ship with chatq, for demos and first steps."""

from __future__ import annotations

from datetime import datetime, timezone

from .tools import tool


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@tool(name="current_time")
def now_utc() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat()
