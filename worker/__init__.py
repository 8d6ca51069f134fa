"""chatq's worker layer: the session runner, the agent loop, the provider and its tools.

``celery -A chatq.worker worker`` starts it (Celery finds the app in ``chatq.worker.celery``).
Imports only the base, ``chatq.tasks``.
"""
