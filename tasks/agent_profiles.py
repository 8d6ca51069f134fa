"""Named agent profiles: a TOML file (``CHATQ_AGENTS_FILE``) plus a ``default`` from the environment.

Producers read this too, to refuse an unknown agent at submission; only workers import tools.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidRequest
from .request_params import Policy, check_policy
from .settings import Settings


class AgentProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    model: str
    system_prompt: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_output_tokens: int | None = Field(None, ge=1)
    history_tokens: int = Field(8000, ge=1)
    tools: list[str] = Field(default_factory=list, description="module:function specs")
    max_tool_iterations: int = Field(5, ge=0)
    rpm: int | None = Field(None, ge=1, description="Requests per minute, shared by all workers.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute, shared by all workers.")
    allow_overrides: Policy = Field(True, description=(
        "Which chat-completions parameters a request may set over this agent's (chatq.tasks.request_params): "
        "true (all of OVERRIDABLE), false (none) or a list of names."))
    structured_output_retries: int = Field(1, ge=0, description=(
        "Extra provider calls for a reply that does not parse or validate as the requested JSON, before "
        "the job fails with StructuredOutputInvalid."))

    @field_validator("allow_overrides", mode="before")
    @classmethod
    def _policy(cls, value: object) -> Policy:
        return check_policy(value)


def load_profiles(settings: Settings) -> dict[str, AgentProfile]:
    profiles: dict[str, AgentProfile] = {}
    if settings.agents_file:
        path = Path(settings.agents_file)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidRequest(f"cannot read agents file {path}: {exc}") from exc
        for name, raw in (data.get("agents") or {}).items():
            try:
                profiles[name] = AgentProfile(name=name, **{"model": settings.model, **raw})
            except ValidationError as exc:
                raise InvalidRequest(f"agents file {path}: agent {name!r} is invalid: {exc}") from exc
    if "default" not in profiles:
        profiles["default"] = AgentProfile(
            name="default", model=settings.model, system_prompt=settings.system_prompt,
            tools=settings.default_tools, rpm=settings.rpm, tpm=settings.tpm,
        )
    return profiles
