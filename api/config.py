"""The HTTP API's settings (prefix ``CHATQ_``), kept beside the core's ``chatq.tasks.settings``.

The worker reads the webhook part too, so both sides sign with the same secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
OPEN_TENANT = "default"
"""How the single tenant of an API without keys is named in metrics and ``CHATQ_WEBHOOK_SECRETS``."""


def _pairs(raw: Any, *, what: str, split_right: bool) -> Any:
    """``a:b,c:d`` to a dict. Never echoes an entry: entries hold secrets."""
    if not isinstance(raw, str):
        return raw
    out: dict[str, str] = {}
    for n, item in enumerate((p.strip() for p in raw.split(",")), 1):
        if not item:
            continue
        left, sep, right = item.rpartition(":") if split_right else item.partition(":")
        if not sep or not left.strip() or not right.strip():
            raise ValueError(f"{what}: entry {n} is not KEY:VALUE")
        out[left.strip()] = right.strip()
    return out


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATQ_", extra="ignore")

    api_keys: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, repr=False,
        description="`key1:tenant_a,key2:tenant_b`. Empty: one open tenant, no authentication (local use).",
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body; 413 beyond.")
    max_batch_bytes: int = Field(16 << 20, ge=1024, description="Largest JSONL batch body; 413 beyond.")
    max_active_jobs: int = Field(10_000, ge=0, description="Queued + running jobs per tenant; 429 beyond; 0: no limit.")
    max_wait_seconds: float = Field(60.0, gt=0, description="Cap on `GET /v1/jobs/{id}?wait=`.")
    max_long_polls: int = Field(
        64, ge=1, description="Long polls waiting at once; each holds one of CHATQ_REDIS_MAX_CONNECTIONS.")
    metrics_key: SecretStr | None = Field(
        None, repr=False, description="Bearer key for `/metrics`, which lists every tenant; tenants' API keys "
        "do not open it.")
    metrics_open: bool = Field(
        False, description="Serve `/metrics` without a key. Without API keys (one open tenant) it is open anyway.")

    webhook_secret: SecretStr | None = Field(
        None, description="Master secret; each tenant's signing secret is derived from it (see `secret_for`).")
    webhook_secrets: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict, repr=False, description="`tenant_a:secret,...`; wins over the derived secret.")
    webhook_timeout: float = Field(10.0, gt=0)
    webhook_attempts: int = Field(6, ge=1)
    webhook_backoff: float = Field(1.0, gt=0, description="First retry delay; doubles per attempt.")
    webhook_backoff_max: float = Field(60.0, gt=0)
    webhook_threads: int = Field(8, ge=1)

    @field_validator("webhook_secret", "metrics_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, raw: Any) -> Any:
        return None if isinstance(raw, str) and not raw.strip() else raw

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, raw: Any) -> Any:
        return _pairs(raw, what="CHATQ_API_KEYS", split_right=True)

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _parse_secrets(cls, raw: Any) -> Any:
        return _pairs(raw, what="CHATQ_WEBHOOK_SECRETS", split_right=False)

    @field_validator("api_keys")
    @classmethod
    def _check_tenants(cls, keys: dict[str, str]) -> dict[str, str]:
        bad = sorted({t for t in keys.values() if not TENANT.match(t)})
        if bad:
            raise ValueError(f"CHATQ_API_KEYS: tenant names must match {TENANT.pattern}: {bad}")
        return keys

    @property
    def tenants(self) -> list[str]:
        return sorted(set(self.api_keys.values()))

    def secret_for(self, tenant: str | None) -> bytes | None:
        """The tenant's webhook signing secret: configured, else HMAC(master, tenant), else None."""
        name = tenant or OPEN_TENANT
        if name in self.webhook_secrets:
            return self.webhook_secrets[name].get_secret_value().encode()
        if self.webhook_secret is None:
            return None
        master = self.webhook_secret.get_secret_value().encode()
        return hmac.new(master, f"chatq-webhook:{name}".encode(), hashlib.sha256).hexdigest().encode()


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()
