"""Errors a producer sees at the door, before anything is enqueued."""


def shown(value: object, limit: int = 60) -> str:
    """An input as an error message may quote it: ASCII-escaped (odd bytes print safely), and short."""
    text = ascii(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


class ChatQError(Exception):
    """Base class: every error chatq raises on purpose."""


class InvalidRequest(ChatQError, ValueError):
    """Empty or oversized message, malformed session ID, bad metadata, unknown agent."""


class SessionBusy(ChatQError):
    """``on_busy="reject"`` and the session already has a job queued or running."""


class SessionExists(ChatQError):
    """Seeding a session that already has history or queued work."""


class JobNotFound(ChatQError, LookupError):
    """Unknown or expired job ID."""


class NotCancellable(ChatQError):
    """The job already started or finished."""


class WaitTimeout(ChatQError, TimeoutError):
    """``wait`` gave up before the job finished."""


class EventsGone(ChatQError, LookupError):
    """The job's event log expired, or was trimmed past the events asked for; the job itself may
    still be readable (``get``)."""
