"""What makes a list of messages a conversation a chat-completions provider accepts: known roles, and
every assistant tool call answered by a tool message before the conversation goes on.

Checked at the door for seeded sessions and forks (``ChatClient.create_session``), so a session
never holds a history its next provider call would be refused for; the project's test server uses
the same rule to answer 400 as the real API does.
"""

from __future__ import annotations

from typing import Any

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def conversation_problem(messages: Any) -> tuple[str, str | None] | None:
    """Why ``messages`` (provider-shaped dicts) is not a valid conversation, and where; None if it is."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array", "messages"
    pending: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"messages[{i}]: invalid message or role", f"messages.[{i}].role"
        if m["role"] == "tool":
            if m.get("tool_call_id") not in pending:
                return ("Invalid parameter: messages with role 'tool' must be a response to a preceding "
                        f"message with 'tool_calls' (tool_call_id {m.get('tool_call_id')!r})",
                        f"messages.[{i}].role")
            pending.remove(m["tool_call_id"])
            continue
        if pending:
            break
        if m["role"] == "assistant" and m.get("tool_calls"):
            pending = [tc.get("id") for tc in m["tool_calls"] if isinstance(tc, dict)]
    if pending:
        return ("An assistant message with 'tool_calls' must be followed by tool messages responding to "
                "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                + ", ".join(map(str, pending)), "messages")
    return None
