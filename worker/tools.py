"""Tools: functions (plain or ``async def``) whose type hints (or one pydantic model argument) give the
OpenAI schema."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic_core import to_json


class ToolImportError(ImportError):
    """A tool named in the agents file does not import: the worker refuses to start."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    args_model: type[BaseModel]
    model_arg: str | None  # set when fn takes a single pydantic model argument

    @cached_property
    def _schema(self) -> dict[str, Any]:
        params = self.args_model.model_json_schema()
        params.pop("title", None)
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": params}}

    def schema(self) -> dict[str, Any]:
        """Built once: generating JSON schemas on every provider call was a worker hot spot."""
        return copy.deepcopy(self._schema)

    async def call(self, arguments: str) -> str:
        """Run with the model's JSON arguments; raises ToolArgumentsError for bad input.

        An ``async def`` tool runs on the worker's event loop; a plain function runs in a thread
        of the loop's executor, so a blocking tool never stalls the other sessions' calls (with the
        job's context variables: its trace, for one)."""
        try:
            raw = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ToolArgumentsError(f"arguments are not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ToolArgumentsError("arguments must be a JSON object")
        try:
            args = self.args_model.model_validate(raw)
        except ValidationError as exc:
            raise ToolArgumentsError(f"invalid arguments: {exc.errors(include_url=False)}") from exc
        if self.model_arg:
            kwargs = {self.model_arg: args}
        else:
            kwargs = {name: getattr(args, name) for name in type(args).model_fields}
        if inspect.iscoroutinefunction(self.fn):
            result = await self.fn(**kwargs)
        else:
            # In the calling task's context (as asyncio.to_thread), so what the tool traces or
            # reads from context variables is the job's: an executor thread has a context of its own.
            run = functools.partial(contextvars.copy_context().run, self.fn, **kwargs)
            result = await asyncio.get_running_loop().run_in_executor(None, run)
        return result if isinstance(result, str) else to_json(result).decode()


class ToolArgumentsError(ValueError):
    pass


def _args_model(fn: Callable[..., Any]) -> tuple[type[BaseModel], str | None]:
    try:
        sig = inspect.signature(fn, eval_str=True)
    except NameError as exc:
        raise ToolImportError(f"tool {fn.__qualname__}: cannot resolve its type hints: {exc}") from exc
    params = list(sig.parameters.values())
    if len(params) == 1 and inspect.isclass(params[0].annotation) and issubclass(params[0].annotation, BaseModel):
        return params[0].annotation, params[0].name
    fields: dict[str, Any] = {}
    for p in params:
        annotation = Any if p.annotation is inspect.Parameter.empty else p.annotation
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (annotation, default)
    model = create_model(f"{fn.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields)
    return model, None


def make_tool(fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> Tool:
    args_model, model_arg = _args_model(fn)
    doc = description or inspect.getdoc(fn) or ""
    return Tool(name or fn.__name__, doc.strip(), fn, args_model, model_arg)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None):
    """Mark a function as a tool, optionally under another registered name."""

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        f.__chatq_tool__ = make_tool(f, name, description)  # type: ignore[attr-defined]
        return f

    return wrap(fn) if fn is not None else wrap


def import_tool(spec: str) -> Tool:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ToolImportError(f"tool {spec!r}: expected 'module:function'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ToolImportError(f"tool {spec!r} does not import: {exc}") from exc
    if isinstance(obj, Tool):
        return obj
    found = getattr(obj, "__chatq_tool__", None)
    if found is not None:
        return found
    if not callable(obj):
        raise ToolImportError(f"tool {spec!r} is not callable")
    return make_tool(obj)


class ToolRegistry:
    """Tools keyed by registered name (what the model calls), not by import path."""

    def __init__(self, tools: list[Tool] | None = None):
        self._tools: dict[str, Tool] = {}
        for t in tools or []:
            self.register(t)

    def register(self, t: Tool) -> None:
        if t.name in self._tools and self._tools[t.name].fn is not t.fn:
            raise ToolImportError(f"two different tools registered as {t.name!r}")
        self._tools[t.name] = t

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """Shared, read-only: the request only serializes them."""
        return [t._schema for t in self._tools.values()]

    @classmethod
    def from_specs(cls, specs: list[str]) -> ToolRegistry:
        return cls([import_tool(s) for s in specs])
