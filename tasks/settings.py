"""Configuration from the environment (prefix ``CHATQ_``, plus the SDK's own ``OPENAI_*``)."""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_BOOLS = {"true": "always", "1": "always", "yes": "always", "on": "always",
          "false": "off", "0": "off", "no": "off"}

OPEN_TENANT = "default"
"""How the single tenant of an API without keys is named in metrics and ``CHATQ_WEBHOOK_SECRETS``."""


def parse_pairs(raw: Any, *, what: str, split_right: bool) -> Any:
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATQ_", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description=(
        "The store: one Redis, a Redis Cluster as redis+cluster://host:port[,host:port...]/, or a master "
        "watched by Sentinel as redis+sentinel://[:password@]host:port[,host:port...]/<master-name>[/<db>]."))
    broker_url: str | None = Field(None, description=(
        "Defaults to redis_url; amqp:// and redis+sentinel:// work too. Never a Redis Cluster: give a standalone Redis "
        "(or RabbitMQ) when the store is one."))
    namespace: str = Field("chatq", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    queue: str = "chatq"

    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("OPENAI_API_KEY", "CHATQ_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        None, validation_alias=AliasChoices("OPENAI_BASE_URL", "CHATQ_OPENAI_BASE_URL")
    )
    model: str = "gpt-4o-mini"
    system_prompt: str | None = None
    default_tools: list[str] = Field(
        default_factory=lambda: [f"chatq.worker.builtin_tools:{t}" for t in ("add", "multiply", "now_utc")],
        description="Tools of the default agent when the agents file does not define one.",
    )
    agents_file: Path | None = None
    rpm: int | None = Field(None, ge=1, description="Default agent's requests-per-minute limit.")
    tpm: int | None = Field(None, ge=1, description="Default agent's tokens-per-minute limit.")

    concurrency: int = Field(
        5000, ge=1, description="Sessions a worker process runs at once (LLM calls in flight), each a "
        "coroutine on its asyncio runtime.")
    processes: int | None = Field(
        None, ge=1, description="Worker processes `chatq worker` starts on a node; unset: one per CPU core.")
    redis_max_connections: int = Field(
        256, ge=4, description="Redis connections per process: a worker's sessions share them (one per command in "
        "flight); each waiter of a producer holds one."
    )
    redis_socket_timeout: float = Field(
        5.0, gt=0, description="Seconds a Redis command may take before it counts as Redis being "
        "unreachable (a stall); blocking waits add their own time.")
    result_ttl: int = Field(86400, ge=1, description="Seconds a finished job stays pollable.")
    session_ttl: int | None = Field(
        None, ge=1, description="Seconds a session (its history and usage) is kept once idle, i.e. with "
        "nothing queued or running; a session may set its own. Unset: kept until deleted. Set it alike "
        "on workers and producers: each applies its own when a session goes idle.")
    lease_seconds: float = Field(30.0, gt=0, description="A dead worker's session is taken up after this.")
    sweep_interval: float = Field(5.0, gt=0)
    idle_wait: float = Field(
        1.0, ge=0, description="Seconds a worker process with room waits, per round trip, to be handed "
        "sessions directly by producers (no Celery message); 0 turns hand-offs off.")
    max_attempts: int = Field(3, ge=1, description="Runs of a job whose workers keep dying.")

    max_message_chars: int = Field(32_000, ge=1, description=(
        "Characters of a message's text: a string, or the sum of its text content parts."))
    max_inline_bytes: int = Field(1 << 20, ge=0, description=(
        "Characters of everything else in a message's content parts: URLs, base64 data: URLs, audio and file "
        "data. Inline media is stored with the job and in the history and sent again with every later turn: "
        "send large media by URL or uploaded file ID."))
    max_metadata_bytes: int = Field(16_384, ge=2)
    max_params_bytes: int = Field(
        65_536, ge=2, description="A request's parameters (params), as JSON; a JSON schema counts here.")
    batch_max_idle: int = Field(
        7 * 86400, ge=1, description="Seconds an unfinished batch's record is kept while none of its turns "
        "finishes (no worker, a stalled backlog); any finished turn restarts the count. A finished batch's "
        "record expires with the result TTL.")

    provider_timeout: float = Field(
        120.0, gt=0, description="Seconds per provider call: connect, the wait and the whole reply, "
        "however slowly it trickles in. Each retry gets its own.")
    provider_max_reply_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="A larger reply fails the job (not retried): no "
        "answer a model can give is this large, and asking again pays for it again.")
    provider_retries: int = Field(8, ge=0, description="In-place retries of 429/5xx/timeouts/bad replies.")
    provider_backoff_max: float = Field(60.0, gt=0)
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve each worker process's Prometheus metrics on this port "
        "(`chatq worker -p N`: process i on the port + i); unset: not served.")
    metrics_host: str = Field("127.0.0.1", description="The address worker metrics listen on (0.0.0.0 in a container).")
    stream: Literal["auto", "always", "off"] = Field(
        "auto", description="Which provider calls are asked to stream (`stream=True`), so their text reaches the "
        "job's event log as the model writes it. `auto`: a call streams when somebody asked for the job's stream "
        "-- it was submitted with `stream=True` (`ChatClient.chat(stream=True)`, `chatq chat`, HTTP `stream`), "
        "or a reader follows it when the call starts -- and is asked for whole otherwise, so a job nobody "
        "watches costs what an unstreamed one does; a reader that comes mid-call gets that call's text when "
        "it ends, and the job's later calls streamed. `always`: every call streams (a late reader gets the "
        "text so far, then live; see `CHATQ_STREAM_TEXT`). `off`: whole replies only. (`true` / `false` "
        "mean `always` / `off`.) A provider that answers a streamed request with a whole reply still works.")
    stream_text: Literal["followed", "always"] = Field(
        "followed", description="When a streamed call's text reaches the job's event log: `followed`, as it "
        "streams while a reader follows the job (`ChatClient.stream`, `GET /v1/jobs/{id}/events`, `chatq events`) "
        "or it was submitted to be streamed, else whole with the job's terminal event, so a job nobody watches "
        "costs no write per delta; `always`, as it streams regardless (for readers of the Redis stream itself).")
    stream_flush_ms: float = Field(
        25.0, ge=0, description="Text deltas are written to a job's event log at most this often (ms): the "
        "first after a pause at once, the rest coalesced, so a long answer does not cost a write per token. A "
        "worker process reads all its provider streams and writes all their text on one clock of this period, "
        "which slows down while its writes come back slowly.")
    events_maxlen: int = Field(
        10_000, ge=100, description="Entries a job's event log is trimmed to (about); a reader asking for "
        "trimmed events is told so.")

    # Webhooks: signed by whichever process finishes the job (a worker, or the API on cancel), so
    # both read these.
    webhook_secret: SecretStr | None = Field(
        None, description="Master secret; each tenant's signing secret is derived from it (see `secret_for`).")
    webhook_secrets: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict, repr=False, description="`tenant_a:secret,...`; wins over the derived secret.")
    webhook_timeout: float = Field(10.0, gt=0)
    webhook_attempts: int = Field(6, ge=1)
    webhook_backoff: float = Field(1.0, gt=0, description="First retry delay; doubles per attempt.")
    webhook_backoff_max: float = Field(60.0, gt=0)
    webhook_threads: int = Field(8, ge=1)
    webhook_allow_private: bool = Field(
        False, description="Allow callbacks to loopback/private/link-local addresses (tests, internal receivers).")

    @field_validator("stream", mode="before")
    @classmethod
    def _stream_bool(cls, value: Any) -> Any:
        """The setting was a boolean: ``true`` still streams every call, ``false`` none."""
        if isinstance(value, bool):
            return "always" if value else "off"
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        return value

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _blank_is_unset(cls, raw: Any) -> Any:
        return None if isinstance(raw, str) and not raw.strip() else raw

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _parse_secrets(cls, raw: Any) -> Any:
        return parse_pairs(raw, what="CHATQ_WEBHOOK_SECRETS", split_right=False)

    @model_validator(mode="after")
    def _broker_not_a_cluster(self) -> "Settings":
        """Celery's Redis transport cannot run on a Redis Cluster (its keys span slots): refused at
        start-up, not at the first wake-up."""
        if self.broker.partition("://")[0].endswith("+cluster"):
            given = "CHATQ_BROKER_URL" if self.broker_url else "CHATQ_REDIS_URL (the broker by default)"
            raise ValueError(
                f"{given} names a Redis Cluster, which cannot be the Celery broker: set CHATQ_BROKER_URL "
                "to a standalone Redis (redis://...) or RabbitMQ (amqp://...); the store stays on the cluster")
        return self

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def offline(self) -> bool:
        """No key and no base URL: run the embedded offline model."""
        return self.openai_api_key is None and not self.openai_base_url

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
def get_settings() -> Settings:
    return Settings()
