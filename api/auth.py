"""API keys to tenants, and the per-request dependency that resolves the caller's tenant."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chatq.tasks.client import ChatClient

from .config import OPEN_TENANT
from .errors import Unauthorized

bearer = HTTPBearer(auto_error=False, description="An API key from `CHATQ_API_KEYS` (`Authorization: Bearer KEY`).")


class KeyRing:
    """Looks keys up by comparing SHA-256 digests with ``compare_digest`` against every entry.

    Fixed-length digests hide the key's length, and never stopping at the first match keeps the
    time independent of which key (if any) matched.
    """

    def __init__(self, keys: dict[str, str]):
        self._entries = [(hashlib.sha256(k.encode()).digest(), tenant) for k, tenant in keys.items()]

    @property
    def open(self) -> bool:
        return not self._entries

    def tenant(self, presented: str) -> str | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for known, tenant in self._entries:
            if hmac.compare_digest(known, digest):
                found = tenant
        return found


@dataclass(frozen=True)
class Tenant:
    """The caller: its tenant name (None for the open tenant) and that tenant's client."""

    name: str | None
    client: ChatClient

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
