"""API keys to tenants (and the console's operator keys), and the per-request dependency that
resolves the caller's tenant."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chatq.tasks.client import ChatClient

from .config import OPEN_TENANT, ApiSettings
from .errors import Unauthorized

bearer = HTTPBearer(auto_error=False, description="An API key from `CHATQ_API_KEYS` (`Authorization: Bearer KEY`).")
metrics_bearer = HTTPBearer(auto_error=False, scheme_name="MetricsKey",
                            description="`CHATQ_METRICS_KEY` (`Authorization: Bearer KEY`).")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class KeyRing:
    """Looks keys up by comparing SHA-256 digests with ``compare_digest`` against every entry.

    Fixed-length digests hide the key's length, and never stopping at the first match keeps the
    time independent of which key (if any) matched.

    Operator keys (``CHATQ_OPERATOR_KEYS``) are the console's only: ``tenant`` never matches them,
    so they open nothing under ``/v1``; ``console_role`` tells the console's login which kind a key is.
    """

    def __init__(self, keys: dict[str, str], operators: list[str] | tuple[str, ...] = ()):
        self._entries = [(_digest(k), tenant) for k, tenant in keys.items()]
        self._operators = [_digest(k) for k in operators]

    @property
    def open(self) -> bool:
        return not self._entries

    def tenant(self, presented: str) -> str | None:
        digest = _digest(presented)
        found = None
        for known, tenant in self._entries:
            if hmac.compare_digest(known, digest):
                found = tenant
        return found

    def console_role(self, presented: str) -> tuple[str | None, bool]:
        """(the key's tenant, None if it names none; whether it is an operator key), every entry compared."""
        digest, operator = _digest(presented), False
        for known in self._operators:
            if hmac.compare_digest(known, digest):
                operator = True
        return self.tenant(presented), operator


@dataclass(frozen=True)
class Tenant:
    """The caller: its tenant name (None for the open tenant) and that tenant's client; ``operator``
    when an operator views that tenant in the console."""

    name: str | None
    client: ChatClient
    operator: bool = False

    @property
    def label(self) -> str:
        return self.name or OPEN_TENANT


def current_tenant(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Tenant:
    services = request.app.state.services
    keyring: KeyRing = services.keyring
    if keyring.open:
        name = None
    else:
        if credentials is None:
            raise Unauthorized("missing API key: send `Authorization: Bearer KEY`")
        name = keyring.tenant(credentials.credentials)
        if name is None:
            raise Unauthorized("unknown API key")
    return Tenant(name, services.tenants.client(name))


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]


class MetricsGate:
    """Who may scrape ``/metrics``: it names every tenant and their job counts, so a tenant's key
    is not enough. Its own key (``CHATQ_METRICS_KEY``) opens it; ``CHATQ_METRICS_OPEN`` opens it to
    all; without API keys the whole API is open to one tenant, and so is ``/metrics``."""

    def __init__(self, settings: ApiSettings, keyring: KeyRing):
        key = settings.metrics_key
        self._digest = None if key is None else _digest(key.get_secret_value())
        self.open = settings.metrics_open or (self._digest is None and keyring.open)

    def check(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if self.open:
            return
        if self._digest is None:
            raise Unauthorized("/metrics is closed: the operator sets CHATQ_METRICS_KEY (a key of its own) "
                               "or CHATQ_METRICS_OPEN=true")
        if credentials is None:
            raise Unauthorized("missing metrics key: send `Authorization: Bearer KEY`")
        if not hmac.compare_digest(self._digest, _digest(credentials.credentials)):
            raise Unauthorized("unknown metrics key")


def metrics_access(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(metrics_bearer)]
) -> None:
    request.app.state.services.metrics_gate.check(credentials)
