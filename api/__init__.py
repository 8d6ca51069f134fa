"""chatq's HTTP API: FastAPI over one ``ChatClient`` per tenant.

Kept import-light on purpose: the worker imports ``chatq.api.webhooks`` without pulling in FastAPI.
``create_app`` lives in ``chatq.api.app``.
"""
