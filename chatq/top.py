"""``chatq top``'s frame: the fleet's figures as a rich renderable (``chatq.cli`` refreshes it)."""

from __future__ import annotations

from datetime import datetime, timezone

from rich.console import Group
from rich.table import Table
from rich.text import Text

from chatq.tasks.job_listing import FleetSnapshot


def frame(namespace: str, s: FleetSnapshot, processes: list[tuple[str, int]]) -> Group:
    now = datetime.now(timezone.utc)
    head = Text.assemble(
        ("chatq top", "bold"), f"  namespace {namespace}  {now:%H:%M:%S} UTC\n",
        f"sessions with work {s.sessions_with_work}   running {s.running}   queued {s.queued}   "
        f"jobs/s {s.jobs_per_second:g} (last {s.window:g} s)   provider retries {s.provider_retries}\n",
        "finished: " + (" · ".join(f"{k} {v}" for k, v in sorted(s.finished.items())) or "none"),
        ("   failed by error: " + ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items()))) if s.errors else "",
    )
    waiting = Table(title="worker processes waiting for hand-offs", title_justify="left", min_width=50)
    waiting.add_column("process")
    waiting.add_column("room", justify="right")
    for process, room in processes:
        waiting.add_row(process, str(room))
    running = Table(title="running longest", title_justify="left", min_width=50)
    for column in ("job", "session", "agent", "worker", "running for"):
        running.add_column(column)
    for job in s.longest_running:
        started = job.started_at or job.created_at
        running.add_row(job.job_id, job.session_id, job.agent, job.worker or "",
                        f"{(now - started).total_seconds():.1f} s")
    return Group(head, waiting, running)
