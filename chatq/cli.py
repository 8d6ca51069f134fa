"""``chatq``: the command line. JSON on stdout for machines, one ``error: ...`` line on stderr.

Exit codes: 0 done; 1 the request was fine but did not succeed (unknown or expired ID, timeout,
job failed, session busy, not cancellable); 2 refused input (a usage error or an invalid request:
nothing was written); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from chatq.tasks.errors import ChatQError, InvalidRequest
from chatq.tasks.redis_pool import UNREACHABLE

EXIT_FAILED = 1
EXIT_REFUSED = 2
"""Click's own usage errors exit 2 as well: both mean the input was refused and nothing was written."""


def _client():
    from chatq.tasks.client import ChatClient

    return ChatClient()


def _print(obj: Any) -> None:
    if hasattr(obj, "model_dump_json"):
        click.echo(obj.model_dump_json(indent=2))
    else:
        click.echo(json.dumps(obj, indent=2, default=str))


class _Group(click.Group):
    """Turns chatq's own errors into one readable line instead of a traceback: refused input exits
    2 (as click's usage errors do), any other failure 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ChatQError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_REFUSED if isinstance(exc, InvalidRequest) else EXIT_FAILED)
        except UNREACHABLE as exc:
            click.echo(f"error: Redis unreachable: {exc}", err=True)
            sys.exit(EXIT_FAILED)


@click.group(cls=_Group)
def cli() -> None:
    """chatq: session-ordered chat jobs for LLM agents on Celery + Redis.

    \b
    Exit codes:
      0  done
      1  not done: unknown or expired ID, timeout, job failed, session busy, not cancellable
      2  refused input (usage error, invalid request); nothing was written
    """


@cli.command()
@click.option("--concurrency", "-c", type=int,
              help="Sessions each process runs at once (LLM calls in flight); default CHATQ_CONCURRENCY=5000.")
@click.option("--processes", "-p", type=click.IntRange(min=1),
              help="Worker processes; default CHATQ_PROCESSES, else one per CPU core.")
@click.option("--queues", "-Q", help="Comma-separated queues; default CHATQ_QUEUE.")
@click.option("--loglevel", "-l", default="INFO")
@click.option("--node-name", hidden=True, help="Celery node name (the supervisor names its processes).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), hidden=True,
              help="This process's metrics port (the supervisor gives process i CHATQ_METRICS_PORT + i).")
def worker(concurrency: int | None, processes: int | None, queues: str | None, loglevel: str,
           node_name: str | None, metrics_port: int | None) -> None:
    """Start a worker node: one process per core, each `celery -A chatq.worker worker -P threads`
    with chatq's defaults.

    The runtime starts in Celery's worker signals (chatq.worker.celery), so a process started
    with `celery worker` directly behaves the same.
    """
    from chatq.tasks.settings import get_settings

    settings = get_settings()
    processes = processes or settings.processes or _cores()
    if processes > 1:
        from .supervisor import supervise

        def child(i: int) -> list[str]:
            return [sys.executable, "-m", "chatq", "worker", "--processes", "1", "--loglevel", loglevel,
                    *(["-c", str(concurrency)] if concurrency else []), *(["-Q", queues] if queues else []),
                    *(["--metrics-port", str(settings.metrics_port + i)] if settings.metrics_port else []),
                    "--node-name", f"chatq-{os.getpid()}.{i}@%h"]

        sys.exit(supervise(child, processes))
    if metrics_port:  # read by the runtime's settings in this process
        os.environ["CHATQ_METRICS_PORT"] = str(metrics_port)
        get_settings.cache_clear()
    sys.exit(_run_worker(concurrency, queues or settings.queue, loglevel, node_name or f"chatq-{os.getpid()}@%h"))


def _cores() -> int:
    """The CPU cores this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_worker(concurrency: int | None, queues: str, loglevel: str, name: str) -> int:
    from chatq.worker.celery import app

    argv = ["worker", "--pool", "threads", "-Q", queues, "--loglevel", loglevel,
            "--without-gossip", "--without-mingle", "-n", name]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return _celery_worker(app, argv)


def _celery_worker(app: Any, argv: list[str]) -> int:
    """Run ``celery worker`` and return its exit code.

    ``app.worker_main`` and ``app.start`` drop it (click returns the code in non-standalone mode,
    and they only look for a raised ``Exit``), so a worker Celery stops on an unrecoverable error
    would exit 0 and no supervisor would restart it. This is ``app.start`` keeping the code.
    """
    from celery.bin.celery import celery

    celery.params[0].default = app
    try:
        return celery.main(args=argv, prog_name="chatq worker", standalone_mode=False) or 0
    finally:
        celery.params[0].default = None


def request_options(command: Any) -> Any:
    """What a request may carry besides its text: images, and chat-completions parameters."""
    command = click.option("--image", "images", multiple=True, metavar="URL|FILE", help=(
        "An image for the model: an http(s) URL, or a local file sent inline as a data: URL. Repeatable; "
        "the message becomes content parts (the text, then the images)."))(command)
    command = click.option("--model", help="The model for this request (the parameter `model`).")(command)
    return click.option("--param", "param", multiple=True, metavar="NAME=VALUE", help=(
        "A chat-completions parameter for this request over the agent's, e.g. temperature=0, stop='[\"x\"]', "
        "response_format='{\"type\": \"json_object\"}'. VALUE is read as JSON when it is JSON, else as a "
        "string. Repeatable."))(command)


def _params(param: tuple[str, ...], model: str | None) -> dict[str, Any] | None:
    """``--param NAME=VALUE`` and ``--model`` as the client's ``params``; the client checks them."""
    params: dict[str, Any] = {}
    for item in param:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise InvalidRequest(f"--param {item!a} is not NAME=VALUE")
        if name in params:
            raise InvalidRequest(f"--param {name} is given twice")
        try:
            params[name] = json.loads(raw)
        except json.JSONDecodeError:
            params[name] = raw
    if model is not None:
        if "model" in params:
            raise InvalidRequest("give the model once: --model or --param model=...")
        params["model"] = model
    return params or None


def _content(message: str, images: tuple[str, ...]) -> Any:
    """The message, or with ``--image`` its content parts: the text, then each image (a URL as it
    is, a local file as a base64 data: URL)."""
    if not images:
        return message
    parts: list[dict[str, Any]] = [{"type": "text", "text": message}]
    for image in images:
        if image.startswith(("http://", "https://", "data:")):
            url = image
        else:
            import base64
            import mimetypes

            kind = mimetypes.guess_type(image)[0]
            if not kind or not kind.startswith("image/"):
                raise InvalidRequest(f"--image {image!a} is neither a URL nor an image file (.png, .jpg, .gif, .webp)")
            try:
                with open(image, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise InvalidRequest(f"--image {image!a}: {exc.strerror or exc}") from None
            url = f"data:{kind};base64,{base64.b64encode(data).decode()}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


@cli.command()
@click.argument("message")
@click.option("--session", "session_id", help="Session ID; created on first use. Omit for a new one.")
@click.option("--agent")
@click.option("--idempotency-key")
@click.option("--metadata", help="A JSON object stored with the turn.")
@click.option("--on-busy", type=click.Choice(["enqueue", "reject", "interrupt", "rollback"]), default="enqueue",
              show_default=True, help="When the session is busy: queue behind (enqueue), refuse (reject), or stop "
              "its running and queued jobs and run next, keeping the stopped turn so far in the history "
              "(interrupt) or leaving no trace of it (rollback).")
@click.option("--callback-url", help="POSTed the finished job, signed with the workers' webhook secret.")
@click.option("--session-ttl", type=int, help="The session's own retention: seconds kept once idle (0: forever).")
@click.option("--stream", is_flag=True, help="You will follow its events (`chatq events JOB_ID --follow`): its "
              "provider calls stream from the first.")
@request_options
def submit(message: str, session_id: str | None, agent: str | None, idempotency_key: str | None,
           metadata: str | None, on_busy: str, callback_url: str | None, session_ttl: int | None, stream: bool,
           param: tuple[str, ...], model: str | None, images: tuple[str, ...]) -> None:
    """Queue a message; prints the job without waiting."""
    _print(_client().submit(_content(message, images), session_id, agent, idempotency_key, _metadata(metadata),
                            on_busy, callback_url=callback_url, session_ttl=session_ttl, params=_params(param, model),
                            stream=stream))


def _metadata(raw: str | None) -> Any:
    """Parsed as given; the client refuses anything but a JSON object."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"--metadata is not valid JSON: {exc}") from exc


@cli.command()
@click.argument("job_id")
def get(job_id: str) -> None:
    """Print a job."""
    job = _client().get(job_id)
    if job is None:
        from chatq.tasks.client import id_text
        from chatq.tasks.errors import JobNotFound

        raise JobNotFound(f"unknown or expired job: {id_text(job_id)}")
    _print(job)


@cli.command()
@click.argument("job_id")
@click.option("--timeout", type=float, help="Seconds; exit 1 if the job is still unfinished.")
def wait(job_id: str, timeout: float | None) -> None:
    """Block until a job finishes, then print it."""
    _print(_client().wait(job_id, timeout))


@cli.command()
@click.argument("job_id")
@click.option("--rollback", is_flag=True, help="A running job's turn leaves no trace in the history.")
def cancel(job_id: str, rollback: bool) -> None:
    """Cancel a queued job, or stop a running one; prints the job.

    A running job is printed as it is at once: usually still `running` with `cancel` set, which its
    worker ends `cancelled` within about a second (`chatq wait JOB_ID`). The history keeps the user's message and the reply
    so far, marked cancelled; with --rollback, nothing of the turn. The session's later messages go on.
    """
    from chatq.tasks.errors import NotCancellable

    job = _client().cancel(job_id, rollback=rollback)
    if job.status.finished and job.status != "cancelled":  # it finished before its worker saw the request
        raise NotCancellable(f"job {job.job_id} has finished ({job.status.value}); there is nothing to cancel")
    _print(job)


@cli.command()
@click.argument("job_id")
@click.option("--after", type=click.IntRange(min=0), default=0, show_default=True,
              help="Print the events after this seq.")
@click.option("--follow", "-f", is_flag=True, help="Wait for the events to come, until the job's last.")
def events(job_id: str, after: int, follow: bool) -> None:
    """Print a job's events as JSON lines: {"seq", "type", "data"}.

    Without --follow, the events there are now; with it, each as it is written, until the terminal
    event (job.succeeded, job.failed or job.cancelled, whose data is the job). Exit 1 if the job is
    unknown, or its event log has expired (`chatq get` may still show the job).
    """
    from chatq.tasks.errors import WaitTimeout

    try:
        for event in _client().stream(job_id, after, timeout=None if follow else 0):
            click.echo(event.model_dump_json())
    except WaitTimeout:  # without --follow: what is there now has been printed
        pass


@cli.command()
@click.argument("message")
@click.option("--session", "session_id")
@click.option("--agent")
@click.option("--timeout", type=float, default=300, show_default=True,
              help="Seconds; exit 1 if the job has not finished by then.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the job's events as JSON lines instead of the reply; the last is the terminal "
                   "event, whose data is the whole job.")
@request_options
def chat(message: str, session_id: str | None, agent: str | None, timeout: float, as_json: bool,
         param: tuple[str, ...], model: str | None, images: tuple[str, ...]) -> None:
    """Submit and print the reply as it streams.

    Text shown cannot be taken back: when the provider call is retried, or the turn starts over on
    another worker, a notice goes to stderr and the reply starts again on a new line. Ctrl-C stops
    the turn (the job is cancelled, keeping what was written) and exits 130. Exit 1 (and `error: ...`
    on stderr) if the job failed or was cancelled.
    """
    from chatq.tasks.models import Job

    client = _client()
    submitted = client.submit(_content(message, images), session_id, agent, params=_params(param, model), stream=True)
    stream = client.stream(submitted.job_id, timeout=timeout)
    try:
        if as_json:
            last = None
            for last in stream:
                click.echo(last.model_dump_json())
            assert last is not None and last.terminal, "the event stream ended without a terminal event"
            job = Job.model_validate(last.data)
        else:
            job = _ReplyPrinter().print(stream)
    except KeyboardInterrupt:
        try:
            client.cancel(submitted.job_id)
        except ChatQError:  # it finished meanwhile
            pass
        click.echo(f"stopped: job {submitted.job_id} cancelled [session {submitted.session_id}]", err=True)
        sys.exit(130)
    if job.status == "succeeded":
        click.echo(f"[session {job.session_id}]", err=True)
    else:
        click.echo(f"error: job {job.job_id} {job.status.value}: {job.error.message if job.error else ''}", err=True)
        sys.exit(1)


class _ReplyPrinter:
    """The ``message.delta`` texts of a job's events on stdout as they come; the finished job back."""

    def __init__(self) -> None:
        self.shown = False  # text on the current line
        self.any = False  # any text at all
        self.call: int | None = None

    def print(self, events: Any) -> Any:
        from chatq.tasks.models import Job

        try:
            for event in events:
                if event.type == "message.delta":
                    if self.call is not None and event.data.get("call") != self.call:
                        self._break()  # the text of the turn's next provider call: its own line
                    self.call = event.data.get("call")
                    self._write(event.data.get("text", ""))
                elif event.type == "provider.retry":
                    self._restart(f"provider call failed ({event.data.get('error', {}).get('type', 'error')}); "
                                  f"retrying in {float(event.data.get('delay') or 0):.1f}s")
                elif event.type == "job.restarted":
                    self._restart(f"the turn starts over (attempt {event.data.get('attempt')}): its worker was lost")
                elif event.terminal:
                    job = Job.model_validate(event.data)
                    if not self.any and job.result and job.result.content:  # no text came through the log
                        self._write(job.result.content)
                    return job
            raise AssertionError("the event stream ended without a terminal event")
        finally:  # the reply's line ends, also before an error (a timeout, Redis gone) is told on stderr
            self._break()

    def _write(self, text: str) -> None:
        if text:
            click.echo(text, nl=False)  # click.echo flushes
            self.shown = self.any = True

    def _break(self) -> None:
        if self.shown:
            click.echo()
            self.shown = False

    def _restart(self, why: str) -> None:
        self._break()
        click.echo(f"[{why}; the reply starts over]", err=True)


@cli.group()
def sessions() -> None:
    """List, show and delete sessions."""


@sessions.command("list")
def sessions_list() -> None:
    _print(_client().list_sessions())


@sessions.command("show")
@click.argument("session_id")
def sessions_show(session_id: str) -> None:
    session = _client().get_session(session_id)
    if session is None:
        click.echo(f"error: unknown session: {session_id}", err=True)
        sys.exit(1)
    _print(session)


@sessions.command("delete")
@click.argument("session_id")
def sessions_delete(session_id: str) -> None:
    if not _client().delete_session(session_id):
        click.echo(f"error: unknown session: {session_id}", err=True)
        sys.exit(1)
    _print({"deleted": session_id})


@sessions.command("create")
@click.argument("session_id", required=False)
@click.option("--system", "system_prompt", help="The session's own system prompt (instead of its agent's).")
@click.option("--messages", "messages_file", type=click.File("r"),
              help="A JSON file (or - for stdin) of earlier messages, as the chat-completions API has them.")
@click.option("--ttl", type=int, help="The session's own retention: seconds kept once idle (0: forever).")
def sessions_create(session_id: str | None, system_prompt: str | None, messages_file: Any, ttl: int | None) -> None:
    """Get or create a session; with --system or --messages, seed it with a history of its own."""
    messages = None
    if messages_file is not None:
        try:
            messages = json.load(messages_file)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"--messages is not valid JSON: {exc}") from exc
    _print(_client().create_session(session_id, ttl, system_prompt, messages))


@sessions.command("regenerate")
@click.argument("session_id")
@click.option("--agent")
def sessions_regenerate(session_id: str, agent: str | None) -> None:
    """Queue a new reply to the session's last user message (replacing the old one); prints the job."""
    _print(_client().regenerate(session_id, agent))


@sessions.command("fork")
@click.argument("session_id")
@click.option("--at", type=click.IntRange(min=0), required=True, help="How many messages to copy.")
@click.option("--into", help="The new session's ID; default a new one.")
@click.option("--replace", help="A user message that follows the copy (an edited message AT).")
def sessions_fork(session_id: str, at: int, into: str | None, replace: str | None) -> None:
    """Queue a fork: the first AT messages into a new session (its ID is the job's result.content)."""
    _print(_client().fork(session_id, at, into, replace))


@cli.group()
def jobs() -> None:
    """List jobs: running and queued, then recently finished."""


@jobs.command("list")
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@click.option("--session", "session_id", help="Only this session's jobs.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def jobs_list(status: str | None, session_id: str | None, limit: int) -> None:
    """Print the jobs as a JSON array: running first, then queued, then finished, newest first."""
    click.echo(json.dumps([j.model_dump(mode="json", exclude_none=True) for j in
                           _client().list_jobs(status, session_id, limit)], indent=2))


@cli.command()
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True, help="Seconds per refresh.")
@click.option("--window", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Seconds of finished jobs the rates count.")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: the frame's figures as JSON.")
def top(interval: float, window: float, once: bool, as_json: bool) -> None:
    """A live view of the fleet: work running and queued, jobs/s, failures by error, retries, the
    worker processes waiting for hand-offs, the longest-running jobs. Ctrl-C quits."""
    import time

    from .top import frame

    client = _client()
    if once:
        snapshot, processes = client.fleet(window)
        if as_json:
            click.echo(json.dumps({**snapshot.model_dump(mode="json"),
                                   "waiting_processes": [{"process": p, "room": r} for p, r in processes]}, indent=2))
        else:
            from rich.console import Console

            console = Console()
            if not console.is_terminal:  # a file or a pipe: wide enough for whole job IDs
                console = Console(width=200)
            console.print(frame(client.namespace, snapshot, processes))
        return
    from rich.live import Live

    try:
        with Live(frame(client.namespace, *client.fleet(window)), refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(client.namespace, *client.fleet(window)))
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("--no-worker", is_flag=True, help="Use the workers already running instead of starting one.")
def demo(no_worker: bool) -> None:
    """Submit a few messages to two sessions without waiting, poll them, print the replies."""
    from .demo import run_demo

    sys.exit(run_demo(start_worker=not no_worker))


from .cli_batch import batch  # noqa: E402
cli.add_command(batch)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, type=int, show_default=True)
@click.option("--workers", default=1, type=int, show_default=True, help="uvicorn worker processes.")
def serve(host: str, port: int, workers: int) -> None:
    """Serve the HTTP API (FastAPI on uvicorn); keys, limits and webhooks from CHATQ_* (see api.config)."""
    import uvicorn
    from pydantic import ValidationError

    from chatq.api.config import get_api_settings
    from chatq.tasks.settings import get_settings

    try:
        get_settings(), get_api_settings()
    except ValidationError as exc:  # without the inputs: they hold API keys and secrets
        click.echo("error: " + "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors(include_input=False)), err=True)
        sys.exit(2)
    uvicorn.run("chatq.api.app:create_app", factory=True, host=host, port=port, workers=workers)


def main() -> None:
    cli(prog_name="chatq")


if __name__ == "__main__":
    main()
