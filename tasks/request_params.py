"""Per-request parameters: the chat-completions parameters a request may set over its agent's.

The allow-list (``OVERRIDABLE``) is the parameters that shape one reply without changing how chatq
runs the turn; each value is checked against the ``openai`` SDK's own type for it
(``openai.types.chat.completion_create_params.CompletionCreateParamsBase``), strictly, plus the
ranges the API documents. Everything else the API defines is refused by name: chatq sets
``messages``, ``tools``, ``stream`` and ``stream_options`` itself, and ``n``, ``logprobs`` and the
like have no place in a job's result. ``extra_body`` carries provider-specific fields (vLLM,
Ollama...) merged into the request body; a chat-completions parameter is refused there, so it
cannot slip past its own check or the agent's policy.

A ``None`` value clears the agent's setting for that parameter (the provider's default applies).

An agent's ``allow_overrides`` (``true``, ``false`` or a list of these names) is its policy:
producers check it at the door when they know it (``check_allowed``), and workers check it again
before running a job, since a producer may not know every agent's profile.
"""

from __future__ import annotations

import json
from functools import cache
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from .content import first_error
from .errors import InvalidRequest, shown
from .structured_output import check_response_format

OVERRIDABLE = ("model", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
               "response_format", "tool_choice", "parallel_tool_calls", "reasoning_effort", "extra_body")
CHATQ_SETS = ("messages", "tools", "functions", "function_call", "stream", "stream_options")
"""Parameters chatq itself fills in from the session and the agent: never a request's."""
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0, 2), "top_p": (0, 1), "max_tokens": (1, 2**31 - 1), "max_completion_tokens": (1, 2**31 - 1),
    "seed": (-(2**63), 2**63 - 1),  # what OpenAI takes; larger integers are not JSON numbers every parser keeps
}
MAX_MODEL_CHARS = 256
Policy = bool | list[str]
"""An agent's ``allow_overrides``: every parameter of ``OVERRIDABLE``, none, or these."""


@cache
def api_parameters() -> dict[str, Any]:
    """Every chat-completions parameter the SDK defines, with its type (the SDK imported on first
    use, as in ``chatq.tasks.content``)."""
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase

    return get_type_hints(CompletionCreateParamsBase)


@cache
def _adapter(name: str) -> TypeAdapter:
    return TypeAdapter(api_parameters()[name], config=ConfigDict(strict=True, extra="forbid"))


def _check_value(name: str, value: Any) -> None:
    """``value`` is of the SDK's type for ``name``; when the type is a union of objects told apart
    by ``type`` (``response_format``, ``tool_choice``) the error is the matching member's, not the
    whole union's."""
    try:
        _adapter(name).validate_python(value)
        return
    except ValidationError as exc:
        error = exc
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        members = [m for m in _union_members(api_parameters()[name]) if _type_literal(m) == value["type"]]
        if members:
            try:
                TypeAdapter(list[members[0]], config=ConfigDict(strict=True, extra="forbid")).validate_python([value])
            except ValidationError as exc:
                raise InvalidRequest(first_error(exc, f"params.{name}", 1)) from None
        else:
            kinds = [t for t in map(_type_literal, _union_members(api_parameters()[name])) if t]
            if kinds:
                raise InvalidRequest(f"params.{name}.type is {shown(value['type'])}; the API's are {', '.join(kinds)}")
    raise InvalidRequest(_union_error(error, f"params.{name}"))


def _union_members(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, UnionType):
        return [m for arg in get_args(annotation) for m in _union_members(arg)]
    return [annotation]


def _type_literal(member: Any) -> str | None:
    """The ``type`` a TypedDict member of a union stands for, if it has one."""
    try:
        hints = get_type_hints(member)
    except TypeError:
        return None
    args = get_args(hints.get("type"))
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


FORMS = {
    "stop": "a string, a list of strings, or null",
    "tool_choice": "'none', 'auto', 'required' or an object naming a tool "
                   "({\"type\": \"function\", \"function\": {\"name\": ...}})",
    "response_format": "an object with a type: text, json_object or json_schema",
}
"""What a parameter whose type is a union may be, said plainly (the union's own errors list every member)."""


def _union_error(exc: ValidationError, where: str) -> str:
    name = where.removeprefix("params.")
    if name in FORMS:
        return f"{where} must be {FORMS[name]}"
    return first_error(exc, where)


def response_format_of(value: Any) -> Any:
    """A pydantic model class becomes the ``json_schema`` format the SDK's own ``parse`` sends
    (strict schema, named after the class); anything else is left for the checks."""
    if isinstance(value, type) and issubclass(value, BaseModel):
        from openai.lib._parsing import type_to_response_format_param

        return type_to_response_format_param(value)
    return value


def validate_params(params: object) -> dict[str, Any]:
    """The request's parameters, as given, or ``InvalidRequest`` naming the first fault. A pydantic
    model class as ``response_format`` is converted first (the one change made)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidRequest(f"params must be an object of chat-completions parameters, not {type(params).__name__}")
    out: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(name, str):
            raise InvalidRequest(f"params has the key {shown(name)}: keys must be strings")
        if name == "response_format":
            value = response_format_of(value)
        if name in CHATQ_SETS:
            raise InvalidRequest(f"params.{name} is chatq's to set (from the session and the agent), not a request's")
        if name not in OVERRIDABLE:
            what = "a chat-completions parameter chatq does not take per request" if name in api_parameters() else \
                "not a chat-completions parameter"
            raise InvalidRequest(f"params.{name if name.isidentifier() else shown(name)} is {what}; a request may set "
                                 f"{', '.join(OVERRIDABLE)} (provider-specific fields go in extra_body)")
        if name == "extra_body":
            _check_extra_body(value)
        elif name == "model":
            if not (isinstance(value, str) and 0 < len(value) <= MAX_MODEL_CHARS and value.isprintable()
                    and not any(c.isspace() for c in value)):
                raise InvalidRequest(f"params.model must be a model name (1-{MAX_MODEL_CHARS} printable characters, "
                                     f"no spaces), not {shown(value)}")
        else:
            _check_value(name, value)
            _check_range(name, value)
            if name == "stop" and isinstance(value, list) and not value:
                raise InvalidRequest("params.stop is an empty list; give a string or 1-4 strings, or null")
            if name == "response_format":
                check_response_format(value)
        out[name] = value
    if out.get("max_tokens") is not None and out.get("max_completion_tokens") is not None:
        raise InvalidRequest("params has both max_tokens and max_completion_tokens; give one")
    return out


def _check_range(name: str, value: Any) -> None:
    if name in RANGES and value is not None:
        low, high = RANGES[name]
        if not low <= value <= high:
            raise InvalidRequest(f"params.{name} is {value}; it must be from {low} to {high}")


def _check_extra_body(value: object) -> None:
    if not isinstance(value, dict):
        raise InvalidRequest(f"params.extra_body must be an object of provider-specific fields, not "
                             f"{type(value).__name__}")
    known = api_parameters()
    for key in value:
        if key in known or key in CHATQ_SETS:
            raise InvalidRequest(f"params.extra_body.{key} is a chat-completions parameter: "
                                 + (f"give it as params.{key}" if key in OVERRIDABLE else
                                    "chatq does not take it per request"))


def check_policy(policy: object) -> Policy:
    """An agent's ``allow_overrides`` as the agents file gives it: ``true``, ``false`` or a list of
    names from ``OVERRIDABLE``."""
    if isinstance(policy, bool):
        return policy
    if isinstance(policy, list) and all(isinstance(n, str) for n in policy):
        unknown = [n for n in policy if n not in OVERRIDABLE]
        if unknown:
            raise ValueError(f"allow_overrides names {', '.join(map(repr, unknown))}; overridable parameters are "
                             f"{', '.join(OVERRIDABLE)}")
        return policy
    raise ValueError("allow_overrides must be true, false or a list of parameter names")


def forbidden(params: dict[str, Any], policy: Policy) -> list[str]:
    """The parameters ``params`` sets that ``policy`` does not allow."""
    if policy is True:
        return []
    allowed = set(policy) if isinstance(policy, list) else set()
    return [name for name in params if name not in allowed]


def check_allowed(params: dict[str, Any], policy: Policy, agent: str) -> None:
    """``InvalidRequest`` if the agent's policy does not allow every parameter set."""
    refused = forbidden(params, policy)
    if refused:
        allowed = "none" if policy is False or not policy else ", ".join(policy)  # type: ignore[arg-type]
        raise InvalidRequest(f"agent {agent!r} does not allow overriding {', '.join(refused)} "
                             f"(its allow_overrides: {allowed})")


def encode_policy(policy: Policy) -> str:
    return json.dumps(policy)


def decode_policy(raw: str) -> Policy | None:
    """A policy published by a worker, or None if unreadable (the worker enforces it anyway)."""
    try:
        return check_policy(json.loads(raw))
    except (ValueError, TypeError):
        return None


def apply(request: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The provider request with the job's parameters over the agent's: ``None`` removes one;
    ``max_tokens`` and ``max_completion_tokens`` replace each other; ``extra_body`` is merged in."""
    out = dict(request)
    for name, value in params.items():
        if name == "extra_body":
            continue
        if name in ("max_tokens", "max_completion_tokens"):
            out.pop("max_tokens", None)
            out.pop("max_completion_tokens", None)
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    out.update(params.get("extra_body") or {})
    return out
