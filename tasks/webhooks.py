"""Webhooks: when a job with a ``callback_url`` finishes, POST its record there, signed, with retries.

In the base because both layers above deliver: the process where the job finished (the worker
after its commit, the API after a cancel) owns a ``WebhookSender`` and delivers on a few daemon
threads, so a slow receiver never holds a session's lease. Each attempt is recorded on the job
hash under ``webhook`` (a ``WebhookDelivery``). A delivery still pending when
its process exits is not resumed: its record stays ``pending`` for the client to notice and poll.

The body is the job record (``chatq get``'s JSON, without ``webhook``), signed with the tenant's
secret: ``X-Chatq-Signature: sha256=<hex HMAC-SHA256 of the raw body>``. Only stdlib HTTP here, so
the worker needs no extra dependency; it connects directly (no proxy) and follows no redirect, so
the address it checked is the one it talks to.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from queue import SimpleQueue
from typing import Literal

import redis
from pydantic import BaseModel

from .job_store import decode_job
from .keys import Keys
from .models import utcnow
from .scripts import cached
from .settings import Settings
from .urls import WebhookRefused, check_destination

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Chatq-Signature"
FIELD = "webhook"

class WebhookDelivery(BaseModel):
    """The delivery status shown on the job record."""

    url: str
    status: Literal["pending", "delivered", "failed"] = "pending"
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    updated_at: datetime
    delivered_at: datetime | None = None


def sign(body: bytes, secret: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: bytes, signature: str) -> bool:
    """For receivers: is ``signature`` (the header's value) this body's, under this secret?"""
    return hmac.compare_digest(sign(body, secret), signature)


def tenant_of(namespace: str, base: str) -> str | None:
    prefix = f"{base}.t."
    return namespace[len(prefix):] if namespace.startswith(prefix) else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 3xx is the receiver's answer, not a hop to take
        return None


class WebhookSender:
    """Delivers the webhooks of one fleet's namespace (tenants' namespaces under it included)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.base = settings.namespace
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self._queue: SimpleQueue[tuple[redis.Redis, Keys, str]] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def request_delivery(self, r: redis.Redis, keys: Keys, job_id: str) -> bool:
        """Queue the job's delivery if it has a callback URL and none was queued before; whether queued.

        Claimed atomically on the job record, so calling this twice for a job (a repeated cancel, a
        hook called again) never sends twice.
        """
        pending = WebhookDelivery(url="", updated_at=utcnow()).model_dump_json()
        if not cached(r, "webhook_claim")(keys=[keys.job(job_id)], args=[FIELD, pending]):
            return False
        self._ensure_threads()
        self._queue.put((r, keys, job_id))
        return True

    def deliver(self, r: redis.Redis, keys: Keys, job_id: str) -> WebhookDelivery | None:
        """Deliver now, retrying with backoff; the final status, or None without a job or URL."""
        fields = r.hgetall(keys.job(job_id))
        if not fields or not fields.get("callback_url"):
            return None
        job = decode_job(fields)
        status = WebhookDelivery(url=job.callback_url, updated_at=utcnow())
        secret = self.settings.secret_for(tenant_of(keys.ns, self.base))
        if secret is None:
            status = status.model_copy(update={"status": "failed", "last_error": (
                "no webhook secret for this tenant: set CHATQ_WEBHOOK_SECRET or CHATQ_WEBHOOK_SECRETS")})
            self._record(r, keys, job_id, status)
            return status
        body = job.model_dump_json(exclude={FIELD}).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "chatq-webhook/1",
            "X-Chatq-Event": f"job.{job.status.value}",
            "X-Chatq-Job": job.job_id,
            SIGNATURE_HEADER: sign(body, secret),
        }
        attempts = self.settings.webhook_attempts
        for attempt in range(1, attempts + 1):
            code, error, retry = self._attempt(job.callback_url, body, headers)
            now = utcnow()
            update = {"attempts": attempt, "last_status_code": code, "last_error": error, "updated_at": now}
            if error is None:
                update.update(status="delivered", delivered_at=now)
            elif not retry or attempt == attempts:
                update.update(status="failed")
            status = status.model_copy(update=update)
            self._record(r, keys, job_id, status)
            if status.status != "pending":
                return status
            time.sleep(self._delay(attempt))
        return status

    def _attempt(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None, bool]:
        """One POST: (status code, error or None, whether to retry)."""
        try:
            check_destination(url, self.settings.webhook_allow_private)
        except WebhookRefused as exc:
            return None, str(exc), False
        except OSError as exc:
            return None, f"cannot resolve the callback host: {exc}", True
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.settings.webhook_timeout) as response:
                return response.status, None, False
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code, f"HTTP {exc.code}", exc.code in (408, 425, 429) or exc.code >= 500
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            return None, f"{type(exc).__name__}: {reason}", True

    def _delay(self, attempt: int) -> float:
        s = self.settings
        return min(s.webhook_backoff_max, s.webhook_backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def _record(self, r: redis.Redis, keys: Keys, job_id: str, status: WebhookDelivery) -> None:
        """Write the status only while the job exists: never resurrect an expired record without a TTL."""
        cached(r, "webhook_record")(keys=[keys.job(job_id)], args=[FIELD, status.model_dump_json()])

    def _ensure_threads(self) -> None:
        if len(self._threads) >= self.settings.webhook_threads:
            return
        with self._lock:
            while len(self._threads) < self.settings.webhook_threads:
                thread = threading.Thread(target=self._run, name=f"chatq-webhook-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _run(self) -> None:
        while True:
            r, keys, job_id = self._queue.get()
            try:
                self.deliver(r, keys, job_id)
            except Exception:
                log.exception("webhook delivery for job %s crashed", job_id)
