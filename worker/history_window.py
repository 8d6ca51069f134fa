"""Which history fits the agent's token budget: the newest turns, tool calls kept with their results."""

from __future__ import annotations

from chatq.tasks.models import Message

from .tokens import estimate_tokens


def units(history: list[Message]) -> list[list[Message]]:
    """Split history into indivisible units: an assistant tool-call message owns the tool results after it."""
    out: list[list[Message]] = []
    for m in history:
        if m.role == "tool" and out and (out[-1][0].tool_calls and out[-1][0].role == "assistant"):
            out[-1].append(m)
        else:
            out.append([m])
    return out


def window(history: list[Message], current: list[Message], budget: int) -> list[Message]:
    """The newest units of ``history`` that fit ``budget`` next to the current turn (always sent whole).

    The result starts at a user message (or an instruction: system, developer) when one fits, so the
    provider never sees a dangling reply.
    """
    used = sum(estimate_tokens(m.to_provider()) for m in current)
    picked: list[list[Message]] = []
    for unit in reversed(units(history)):
        cost = sum(estimate_tokens(m.to_provider()) for m in unit)
        if used + cost > budget:
            break
        picked.append(unit)
        used += cost
    picked.reverse()
    while picked and picked[0][0].role not in ("user", "system", "developer"):
        picked.pop(0)
    return [m for unit in picked for m in unit]
