"""One ``ChatClient`` (and ``BatchClient``) per tenant, made on first use and kept.

Each client holds its registered Lua scripts and agent cache; the number of tenants is bounded by
the configured API keys.
"""

from __future__ import annotations

import threading

from chatq.tasks.batch import BatchClient
from chatq.tasks.client import ChatClient
from chatq.tasks.settings import Settings


class Tenants:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._clients: dict[str | None, ChatClient] = {}
        self._batches: dict[str | None, BatchClient] = {}
        self._lock = threading.Lock()

    def client(self, tenant: str | None) -> ChatClient:
        found = self._clients.get(tenant)
        if found is None:
            with self._lock:
                found = self._clients.get(tenant)
                if found is None:
                    found = self._clients[tenant] = ChatClient(settings=self.settings, tenant=tenant)
        return found

    def batches(self, tenant: str | None) -> BatchClient:
        found = self._batches.get(tenant)
        if found is None:
            client = self.client(tenant)
            with self._lock:
                found = self._batches.setdefault(tenant, BatchClient(client))
        return found
