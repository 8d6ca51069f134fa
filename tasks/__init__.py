"""chatq: session-keyed chat jobs on Celery + Redis (producer side and shared stores)."""
