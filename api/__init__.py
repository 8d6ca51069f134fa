"""chatq's HTTP API: FastAPI over one ``ChatClient`` per tenant.

Imports only the base (``chatq.tasks``); ``create_app`` lives in ``chatq.api.app``.
"""
