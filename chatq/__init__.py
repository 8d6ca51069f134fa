"""chatq: session-ordered, crash-safe chat jobs for LLM agents on Celery and Redis.

The public names a producer needs; everything else lives in the layers below:
``chatq.tasks`` (the base: models, keys, stores, the session state machine, the client),
``chatq.worker`` (the agent runtime) and ``chatq.api`` (the HTTP API). ``chatq.cli`` composes them.
"""

from chatq.tasks.batch import BatchClient
from chatq.tasks.client import ChatClient
from chatq.tasks.errors import (
    ChatQError,
    InvalidRequest,
    JobNotFound,
    NotCancellable,
    SessionBusy,
    WaitTimeout,
)
from chatq.tasks.models import Job, JobStatus, Message, Session, Usage

__all__ = [
    "BatchClient", "ChatClient", "ChatQError", "InvalidRequest", "Job", "JobNotFound", "JobStatus",
    "Message", "NotCancellable", "Session", "SessionBusy", "Usage", "WaitTimeout",
]
