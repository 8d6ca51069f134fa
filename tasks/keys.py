"""Every Redis key chatq uses, in one place, under one namespace."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    ns: str = "chatq"

    def job(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def checkpoint(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}:checkpoint"

    def done_channel(self, job_id: str) -> str:
        return f"{self.ns}:done:{job_id}"

    def session(self, session_id: str) -> str:
        return f"{self.ns}:session:{session_id}"

    def messages(self, session_id: str) -> str:
        return f"{self.ns}:session:{session_id}:messages"

    def queue(self, session_id: str) -> str:
        return f"{self.ns}:session:{session_id}:queue"

    def lease(self, session_id: str) -> str:
        return f"{self.ns}:session:{session_id}:lease"

    def batch(self, batch_id: str) -> str:
        return f"{self.ns}:batch:{batch_id}"

    def batch_conversations(self, batch_id: str) -> str:
        return f"{self.ns}:batch:{batch_id}:conversations"

    def idempotency(self, key: str) -> str:
        return f"{self.ns}:idem:{key}"

    @property
    def sessions(self) -> str:
        """ZSET of session IDs scored by creation time."""
        return f"{self.ns}:sessions"

    @property
    def pending(self) -> str:
        """ZSET of sessions with queued jobs, scored by their last wake-up (the sweeper's input)."""
        return f"{self.ns}:pending"

    @property
    def agents(self) -> str:
        return f"{self.ns}:agents"

    @property
    def namespaces(self) -> str:
        """Set of namespaces (tenants) that producers use, kept under the base namespace for sweeping."""
        return f"{self.ns}:namespaces"

    def idle(self, queue: str) -> str:
        """ZSET of runner threads waiting for a session handed to them directly, scored by deadline."""
        return f"{self.ns}:idle:{queue}"

    def inbox(self, waiter: str = "") -> str:
        """LIST where a producer puts the one session it hands to an idle runner thread."""
        return f"{self.ns}:inbox:{waiter}"

    @property
    def sweep_lock(self) -> str:
        return f"{self.ns}:sweep-lock"
