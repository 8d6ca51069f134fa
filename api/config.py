"""The HTTP API's settings (prefix ``CHATQ_``), kept beside the core's ``chatq.tasks.settings``.

Webhook signing is a core setting: workers sign the jobs they finish, the API the ones it cancels.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chatq.tasks.settings import OPEN_TENANT, parse_pairs

__all__ = ["OPEN_TENANT", "TENANT", "ApiSettings", "get_api_settings"]

TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ApiSettings(BaseSettings):
    # Keys are secrets: a validation error names the setting, never echoes what it holds.
    model_config = SettingsConfigDict(env_prefix="CHATQ_", extra="ignore", hide_input_in_errors=True)

    api_keys: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, repr=False,
        description="`key1:tenant_a,key2:tenant_b`. Empty: one open tenant, no authentication (local use).",
    )
    operator_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False,
        description="`key1,key2`: keys of the web console's operators, who may view every tenant of "
                    "CHATQ_API_KEYS. They open nothing under `/v1`.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body; 413 beyond.")
    max_batch_bytes: int = Field(16 << 20, ge=1024, description="Largest JSONL batch body; 413 beyond.")
    max_active_jobs: int = Field(10_000, ge=0, description="Queued + running jobs per tenant; 429 beyond; 0: no limit.")
    max_wait_seconds: float = Field(60.0, gt=0, description="Cap on `GET /v1/jobs/{id}?wait=`.")
    max_long_polls: int = Field(
        64, ge=1, description="Long polls waiting at once; each holds one of CHATQ_REDIS_MAX_CONNECTIONS.")
    stream_connections: int = Field(
        256, ge=1, description="Redis connections the event streams (`GET /v1/jobs/{id}/events`) share. A "
        "stream holds one only while it waits for events, up to 2 s at a time: more streams than this take "
        "turns, and their events come later, none lost.")
    metrics_key: SecretStr | None = Field(
        None, repr=False, description="Bearer key for `/metrics`, which lists every tenant; tenants' API keys "
        "do not open it.")
    metrics_open: bool = Field(
        False, description="Serve `/metrics` without a key. Without API keys (one open tenant) it is open anyway.")

    @field_validator("metrics_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, raw: Any) -> Any:
        return None if isinstance(raw, str) and not raw.strip() else raw

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, raw: Any) -> Any:
        return parse_pairs(raw, what="CHATQ_API_KEYS", split_right=True)

    @field_validator("api_keys")
    @classmethod
    def _check_tenants(cls, keys: dict[str, str]) -> dict[str, str]:
        bad = sorted({t for t in keys.values() if not TENANT.match(t)})
        if bad:
            raise ValueError(f"CHATQ_API_KEYS: tenant names must match {TENANT.pattern}: {bad}")
        return keys

    @field_validator("operator_keys", mode="before")
    @classmethod
    def _parse_operator_keys(cls, raw: Any) -> Any:
        return [k.strip() for k in raw.split(",") if k.strip()] if isinstance(raw, str) else raw

    @model_validator(mode="after")
    def _operators_apart(self) -> ApiSettings:
        """A key is a tenant's or an operator's, never both (never echoed: keys are secrets)."""
        if set(self.operator_keys) & set(self.api_keys):
            raise ValueError("CHATQ_OPERATOR_KEYS: a key that is also in CHATQ_API_KEYS; give operators keys of their own")
        return self

    @property
    def tenants(self) -> list[str]:
        return sorted(set(self.api_keys.values()))


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()
