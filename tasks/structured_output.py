"""Structured output: a reply asked for as JSON (``response_format``), parsed and checked.

The producer checks the request's schema at the door (``check_response_format``); the worker parses
the final reply (``parse_reply``) and puts the value in the job's result as ``parsed``, or fails the
job with ``StructuredOutputInvalid`` naming the first violation, once the agent's retries for it are
spent. Schemas are checked with ``jsonschema``, in the draft the schema names (2020-12 if none),
imported on first use like the SDK's types (``chatq.tasks.content``).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from .errors import InvalidRequest

SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
STRUCTURED = ("json_schema", "json_object")
"""The ``response_format`` types whose reply chatq parses (``text`` is the default: nothing to parse)."""


class StructuredOutputInvalid(Exception):
    """The reply is not the JSON the request asked for; the message names the first violation."""

    type = "StructuredOutputInvalid"


def wants_json(response_format: Any) -> bool:
    return isinstance(response_format, dict) and response_format.get("type") in STRUCTURED


def check_response_format(response_format: dict[str, Any]) -> None:
    """A ``json_schema`` format's name is what OpenAI accepts, and its schema is a valid JSON Schema
    (the SDK's types only say it is an object); ``InvalidRequest`` otherwise."""
    if response_format.get("type") != "json_schema":
        return
    spec = response_format["json_schema"]
    if not SCHEMA_NAME.fullmatch(spec["name"]):
        raise InvalidRequest("params.response_format.json_schema.name must be 1-64 letters, digits, _ or -, "
                             f"not {spec['name']!a}")
    schema = spec.get("schema")
    if schema is None:
        return
    from jsonschema import exceptions, validators

    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        raise InvalidRequest(f"params.response_format.json_schema.schema{where} is not a valid JSON Schema: "
                             f"{exc.message}") from None


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    from jsonschema import validators

    schema = json.loads(schema_json)
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    return cls(schema)


def parse_reply(content: str | None, response_format: dict[str, Any], finish_reason: str | None = None,
                refusal: str | None = None) -> Any:
    """The reply's JSON value, checked against the format's schema if it has one; else
    ``StructuredOutputInvalid`` saying what is wrong first."""
    if refusal:
        raise StructuredOutputInvalid(f"the model refused to answer in the requested format: {refusal[:300]}")
    cut = " (the reply was cut at the token limit: finish_reason 'length')" if finish_reason == "length" else ""
    if content is None or not content.strip():
        raise StructuredOutputInvalid(f"the reply is empty, not JSON{cut}")
    try:
        value = json.loads(content)
    except json.JSONDecodeError as exc:
        raise StructuredOutputInvalid(f"the reply is not valid JSON: {exc.msg} at line {exc.lineno} column "
                                      f"{exc.colno}{cut}") from None
    if response_format.get("type") == "json_object":
        if not isinstance(value, dict):
            raise StructuredOutputInvalid(f"the reply is JSON but not an object ({type(value).__name__}); "
                                          "json_object mode asks for one")
        return value
    schema = response_format.get("json_schema", {}).get("schema")
    if schema is None:
        return value
    from jsonschema import exceptions

    error = exceptions.best_match(_validator(json.dumps(schema, sort_keys=True)).iter_errors(value))
    if error is not None:
        raise StructuredOutputInvalid(f"the reply does not match the schema "
                                      f"{response_format['json_schema'].get('name')!r}: at {error.json_path}: "
                                      f"{error.message}")
    return value
