"""Test doubles for chatq's own tests and benchmarks, kept out of the runtime layers.

``chatq.testing.server`` is an OpenAI-compatible HTTP server with fault injection; nothing under
``chatq.tasks``, ``chatq.worker`` or ``chatq.api`` may import this package.
"""
