"""`conveyor inspect …`: readable tables over the inspector."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from rich.console import Console
from rich.table import Column, Table

from conveyor.app import App
from conveyor.inspector import Inspector
from conveyor.job import Job, JobState

__all__ = ["inspect_group"]

T = TypeVar("T")
console = Console()


def _run(app: App, fn: Callable[[Inspector], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await fn(app.inspector)
        finally:
            await app.aclose()

    return asyncio.run(main())


def _ts(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


@click.group("inspect")
def inspect_group() -> None:
    """Look at and administer jobs."""


@inspect_group.command("stats")
@click.option("--queue", help="Only this queue.")
@click.pass_obj
def stats(get_app: Callable[[], App], queue: str | None) -> None:
    """Job counts per queue and state."""
    rows = _run(get_app(), lambda i: i.stats(queue))
    table = Table("queue", *(s.value for s in JobState), "total")
    for q in rows:
        table.add_row(q.queue, *(str(getattr(q, s.value)) for s in JobState), str(q.total))
    console.print(table if rows else "no jobs")


@inspect_group.command("ls")
@click.option("--state", type=click.Choice([s.value for s in JobState]), help="Only this state.")
@click.option("--queue", help="Only this queue.")
@click.option("--task", help="Only this task.")
@click.option("--limit", default=50, show_default=True, help="Rows per page.")
@click.option("--after", help="Cursor printed at the end of the previous page.")
@click.pass_obj
def ls(
    get_app: Callable[[], App],
    state: str | None,
    queue: str | None,
    task: str | None,
    limit: int,
    after: str | None,
) -> None:
    """List jobs, oldest first, a page at a time."""
    st = JobState(state) if state else None
    page = _run(
        get_app(), lambda i: i.list(state=st, queue=queue, task=task, after=after, limit=limit)
    )
    table = Table("task", "queue", "state", "attempts", "enqueued", "last error")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=32))
    for job in page.jobs:
        err = job.last_error
        table.add_row(
            job.id,
            job.task,
            job.queue,
            job.state.value,
            f"{job.attempts}/{job.max_attempts}",
            _ts(job.enqueued_at),
            f"{err.type}: {err.message}"[:60] if err else "",
        )
    console.print(table if page.jobs else "no matching jobs")
    if page.next:
        console.print(f"more: --after {page.next}")


@inspect_group.command("show")
@click.argument("job_id")
@click.pass_obj
def show(get_app: Callable[[], App], job_id: str) -> None:
    """One job with every attempt's error."""
    job: Job = _run(get_app(), lambda i: i.job(job_id))
    table = Table(show_header=False)
    for name in (
        "id",
        "task",
        "queue",
        "state",
        "priority",
        "attempts",
        "max_attempts",
        "key",
        "worker",
    ):
        table.add_row(name, str(getattr(job, name)))
    for name in ("enqueued_at", "run_at", "started_at", "finished_at", "deadline"):
        table.add_row(name, _ts(getattr(job, name)))
    table.add_row("payload", job.payload.decode(errors="replace")[:500])
    table.add_row("result", (job.result or b"").decode(errors="replace")[:500])
    if job.meta:
        table.add_row("meta", str(dict(job.meta)))
    console.print(table)
    for e in job.errors:
        console.print(f"[bold]attempt {e.attempt}[/] {_ts(e.at)} {e.type}: {e.message}")
        if e.traceback:
            console.print(e.traceback.rstrip(), markup=False, highlight=False)


@inspect_group.command("requeue")
@click.argument("job_id", required=False)
@click.option("--all-failed", is_flag=True, help="Requeue every failed (dead-letter) job.")
@click.option("--queue", help="With --all-failed: only this queue.")
@click.option("--task", help="With --all-failed: only this task.")
@click.pass_obj
def requeue(
    get_app: Callable[[], App],
    job_id: str | None,
    all_failed: bool,
    queue: str | None,
    task: str | None,
) -> None:
    """Put failed or cancelled jobs back in their queue."""
    if bool(job_id) == all_failed:
        raise click.UsageError("give a JOB_ID or --all-failed (not both)")
    if all_failed:
        n = _run(get_app(), lambda i: i.requeue_all_failed(queue=queue, task=task))
        console.print(f"requeued {n} job(s)")
        return
    assert job_id is not None
    ok = _run(get_app(), lambda i: i.requeue(job_id))
    if not ok:
        raise click.ClickException(f"job {job_id} is not failed or cancelled (or does not exist)")
    console.print(f"requeued {job_id}")


@inspect_group.command("cancel")
@click.argument("job_id")
@click.option("--reason", default="cancelled by an operator", show_default=True)
@click.pass_obj
def cancel(get_app: Callable[[], App], job_id: str, reason: str) -> None:
    """Cancel a job (a running one stops at its next heartbeat)."""
    state = _run(get_app(), lambda i: i.cancel(job_id, reason))
    console.print(
        f"{job_id}: {state.value}" + (" (cancel requested)" if state is JobState.RUNNING else "")
    )


@inspect_group.command("purge")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["completed", "failed", "cancelled"]),
    help="States to purge (default: all finished).",
)
@click.option(
    "--older-than", default=0.0, show_default=True, help="Seconds since the job finished."
)
@click.pass_obj
def purge(get_app: Callable[[], App], states: tuple[str, ...], older_than: float) -> None:
    """Delete finished jobs."""
    wanted = [JobState(s) for s in states] or [
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
    ]
    n = _run(get_app(), lambda i: i.purge(wanted, older_than=older_than))
    console.print(f"purged {n} job(s)")
