"""chatq's base layer: settings, models, keys, stores, the session state machine, the clients, the
Celery app, wake-ups and webhook delivery. Imports neither ``chatq.worker`` nor ``chatq.api``."""
