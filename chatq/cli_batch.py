"""``chatq batch``: submit a JSONL file of conversations, watch it, collect one result line each.

JSON on stdout, progress and notes on stderr. Attached to ``chatq.cli``'s group, which turns
chatq's errors into ``error: ...`` and its exit codes (2 for a refused file, 1 for an unknown
batch or a timeout); importing that module here would be circular.
"""

from __future__ import annotations

import sys

import click
from pydantic import BaseModel


def _batches():
    from chatq.tasks.batch import BatchClient
    from chatq.tasks.client import ChatClient

    return BatchClient(ChatClient())


def _print(model: BaseModel) -> None:
    click.echo(model.model_dump_json(indent=2))


def _submit(batches, file: str, skip_invalid: bool, agent: str | None, callback_url: str | None):
    source = sys.stdin.buffer if file == "-" else file  # bytes: the one JSONL parser decodes and splits
    info = batches.submit(source, skip_invalid=skip_invalid, agent=agent, callback_url=callback_url)
    if info.skipped:
        click.echo(f"skipped {len(info.skipped)} invalid line(s): "
                   + ", ".join(str(e.line) for e in info.skipped[:50]), err=True)
    for warning in info.warnings:
        click.echo(f"warning: {warning}", err=True)
    return info


def _wait_with_progress(batches, batch_id: str, timeout: float | None):
    """A rich progress bar over the batch's turns, with elapsed time and an ETA, on stderr."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("turns"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("starting", total=None)

        def update(st) -> None:
            finished = st.turns.total - st.turns.queued - st.turns.running
            bar.update(task, total=st.turns.total, completed=finished,
                       description=f"{st.succeeded}/{st.total} conversations ok, {st.failed} failed")

        try:
            return batches.wait(batch_id, timeout, progress=update)
        except KeyboardInterrupt:
            bar.stop()
            click.echo(f"interrupted; batch {batch_id} keeps running: chatq batch wait {batch_id}", err=True)
            sys.exit(130)


def _write_results(batches, batch_id: str, path: str, format: str | None) -> None:
    n = 0
    with click.open_file(path, "w") as out:
        for result in batches.iter_output(batch_id, format):
            out.write(result.model_dump_json() + "\n")
            n += 1
    if path != "-":
        click.echo(f"wrote {n} result(s) to {path}", err=True)


@click.group()
def batch() -> None:
    """Run many conversations at once: JSONL in (chatq or OpenAI Batch lines), JSONL out."""


_file = click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
_output = click.Path(dir_okay=False, writable=True, allow_dash=True)
_skip = click.option("--skip-invalid", is_flag=True, help="Leave invalid lines out (listed) instead of refusing the file.")
_agent = click.option("--agent", help="Agent for lines that name none; default 'default'.")
_callback = click.option("--callback-url", help="Every turn's job is POSTed here, signed, when it finishes.")
_format = click.option("--format", "format_", type=click.Choice(["openai", "chatq"]),
                       help="Result lines: OpenAI's Batch output or chatq's; default openai when every input line "
                            "was an OpenAI request line, else chatq.")


@batch.command()
@_file
@_skip
@_agent
@_callback
def submit(file: str, skip_invalid: bool, agent: str | None, callback_url: str | None) -> None:
    """Validate and queue a JSONL file.

    Every conversation of FILE ('-' for stdin) is validated before anything is queued; prints the
    batch as JSON.
    """
    _print(_submit(_batches(), file, skip_invalid, agent, callback_url))


@batch.command()
@click.argument("batch_id")
def status(batch_id: str) -> None:
    """Print conversation and turn counts.

    total, queued, running, succeeded, failed, cancelled (and missing: expired job records).
    """
    _print(_batches().status(batch_id))


@batch.command()
@click.argument("batch_id")
@click.option("-o", "--output", type=_output, default="-", help="JSONL file; default stdout.")
@_format
def results(batch_id: str, output: str, format_: str | None) -> None:
    """Write one JSON line per conversation.

    In input order. chatq's: custom_id, session_id, status, replies (one per turn), usage, error,
    job_ids. OpenAI's: id, custom_id, response (status_code, request_id, body: a chat.completion, or the
    provider's error body), error (code, message: a request that got no response).
    """
    _write_results(_batches(), batch_id, output, format_)


@batch.command()
@click.argument("batch_id")
@click.option("--timeout", type=float, help="Seconds; exit 1 if the batch is still unfinished.")
def wait(batch_id: str, timeout: float | None) -> None:
    """Show progress until the batch finishes, then print its status."""
    _print(_wait_with_progress(_batches(), batch_id, timeout))


@batch.command()
@_file
@click.option("-o", "--output", type=_output, required=True, help="Results JSONL file.")
@_skip
@_agent
@_callback
@click.option("--timeout", type=float, help="Seconds; exit 1 if the batch is still unfinished.")
@_format
def run(file: str, output: str, skip_invalid: bool, agent: str | None, callback_url: str | None,
        timeout: float | None, format_: str | None) -> None:
    """Submit, show progress, write the results.

    Submits FILE, shows a progress bar with an ETA until every turn has finished, writes the
    results to OUTPUT and prints the final status.
    """
    batches = _batches()
    info = _submit(batches, file, skip_invalid, agent, callback_url)
    click.echo(f"batch {info.batch_id}: {info.total} conversation(s), {info.turns} turn(s)", err=True)
    status = _wait_with_progress(batches, info.batch_id, timeout)
    _write_results(batches, info.batch_id, output, format_)
    _print(status)


@batch.command()
@click.argument("batch_id")
def cancel(batch_id: str) -> None:
    """Cancel the batch's queued turns.

    Running turns finish; each conversation loses only its tail of not-yet-started turns.
    """
    _print(_batches().cancel(batch_id))
