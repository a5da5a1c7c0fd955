"""`conveyor inspect …`: readable tables over the inspector.

Everything read from the store (names, arguments, results, error messages and tracebacks) is
shown as literal text: never parsed as rich markup, and with control characters made visible
(``\x1b`` prints as the four characters ``\x1b``), so a stored value can neither break the
output nor send escape sequences to the operator's terminal.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from conveyor.app import App
from conveyor.capabilities import LaneInfo, Locks, require
from conveyor.errors import InvalidOption
from conveyor.handle import Progress as JobProgress
from conveyor.inspector import Inspector, LaneCounts, QueueCounts
from conveyor.job import Job, JobState
from conveyor.scheduler.schedules import describe

__all__ = ["MAX_LIMIT", "inspect_group", "visible"]

T = TypeVar("T")
console = Console()

MAX_LIMIT = 1000
"""Most rows `inspect ls --limit` asks for in one page."""

# C0 and C1 control characters, DEL, and the bidirectional overrides that reorder text.
_CONTROLS = [*range(0x20), *range(0x7F, 0xA0), 0x61C, 0x200E, 0x200F]
_CONTROLS += [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_VISIBLE = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _CONTROLS}
_VISIBLE_LINES = {c: v for c, v in _VISIBLE.items() if c not in (0x09, 0x0A)}


def visible(value: object, *, lines: bool = False) -> str:
    """`str(value)` with control characters escaped (``\\x1b``); with `lines`, newlines and
    tabs are kept."""
    return str(value).translate(_VISIBLE_LINES if lines else _VISIBLE)


def _text(value: object, *, lines: bool = False) -> Text:
    """`value` as literal text (no markup), control characters made visible."""
    return Text(visible(value, lines=lines))


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


_SHORT = {
    JobState.WAITING: "wait",
    JobState.SCHEDULED: "sched",
    JobState.RUNNING: "run",
    JobState.COMPLETED: "done",
    JobState.CANCELLED: "cancel",
}


@inspect_group.command("stats")
@click.option("--queue", help="Only this queue.")
@click.pass_obj
def stats(get_app: Callable[[], App], queue: str | None) -> None:
    """Job counts per queue and state; paused queues are marked "paused" (on a narrow
    terminal the states are shortened: wait, sched, queued, run, done, failed, cancel)."""
    rows, lanes = _run(get_app(), lambda i: _stats(i, queue))
    # Short headers where full ones don't fit (80 columns: seven states, total, paused).
    short = console.width < 100
    table = Table(
        box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1), collapse_padding=True
    )
    table.add_column("queue", no_wrap=True)
    for s in JobState:
        table.add_column(_SHORT.get(s, s.value) if short else s.value, justify="right")
    table.add_column("total", justify="right")
    table.add_column("paused")
    for q in rows:
        counts = (str(getattr(q, s.value)) for s in JobState)
        table.add_row(_text(q.queue), *counts, str(q.total), "paused" if q.paused else "")
    console.print(table if rows else "no jobs")
    for c in lanes:  # one line per queue with lanes of flow control (see `inspect limits`)
        circuits = f", {c.open} circuit{'s' if c.open != 1 else ''} open" if c.open else ""
        line = f"{c.queue}: {c.lanes} lane{'s' if c.lanes != 1 else ''}, {c.held} held back"
        console.print(_text(line + circuits))


async def _stats(
    inspector: Inspector, queue: str | None
) -> tuple[list[QueueCounts], list[LaneCounts]]:
    return await inspector.stats(queue), await inspector.lane_counts(queue)


@inspect_group.command("pause")
@click.argument("queue")
@click.pass_obj
def pause(get_app: Callable[[], App], queue: str) -> None:
    """Stop every worker claiming from QUEUE (running jobs finish; enqueues still work)."""
    change = _run(get_app(), lambda i: i.pause(queue))
    console.print(_text(f"paused {queue}" if change.changed else f"{queue} was paused already"))
    if not change.known:
        console.print(_text(f"note: no job uses queue {queue!r} yet (paused anyway)"))


@inspect_group.command("resume")
@click.argument("queue")
@click.pass_obj
def resume(get_app: Callable[[], App], queue: str) -> None:
    """Let workers claim from QUEUE again."""
    change = _run(get_app(), lambda i: i.resume(queue))
    console.print(_text(f"resumed {queue}" if change.changed else f"{queue} was not paused"))


@inspect_group.command("ls")
@click.option("--state", type=click.Choice([s.value for s in JobState]), help="Only this state.")
@click.option("--queue", help="Only this queue.")
@click.option("--task", help="Only this task.")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, MAX_LIMIT),
    help=f"Rows per page (1-{MAX_LIMIT}).",
)
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
    try:
        page = _run(
            get_app(), lambda i: i.list(state=st, queue=queue, task=task, after=after, limit=limit)
        )
    except InvalidOption as exc:  # the store knows its cursors: this is none of them
        raise click.BadParameter(
            f"{visible(exc)}; pass the value printed after 'more: --after' on the previous page",
            param_hint="'--after'",
        ) from None
    table = Table("task", "queue", "state", "attempts", "enqueued", "last error")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=32))
    for job in page.jobs:
        err = job.last_error
        table.add_row(
            _text(job.id),
            _text(job.task),
            _text(job.queue),
            job.state.value,
            f"{job.attempts}/{job.max_attempts}",
            _ts(job.enqueued_at),
            _text(f"{err.type}: {err.message}"[:60] if err else ""),
        )
    console.print(table if page.jobs else "no matching jobs")
    if page.next:
        console.print(Text.assemble("more: --after ", _text(page.next)))


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
        table.add_row(name, _text(getattr(job, name)))
    for name in ("enqueued_at", "run_at", "started_at", "finished_at", "deadline"):
        table.add_row(name, _ts(getattr(job, name)))
    table.add_row("payload", _text(job.payload.decode(errors="replace")[:500]))
    table.add_row("result", _text((job.result or b"").decode(errors="replace")[:500]))
    if job.meta:
        table.add_row("meta", _text(dict(job.meta)))
    if job.progress:
        done = JobProgress.of(job.progress)
        shown = f"{done.fraction:.0%} {done.message}" if done else repr(dict(job.progress))
        table.add_row("progress", _text(shown))
    if job.checkpoint is not None:
        table.add_row("checkpoint", _text(job.checkpoint.decode(errors="replace")[:500]))
    if job.parents:
        shown_parents = ", ".join(job.parents[:20]) + (
            f" … ({len(job.parents)} in all)" if len(job.parents) > 20 else ""
        )
        table.add_row("parents", _text(shown_parents))
        table.add_row("on_parent_failure", _text(job.on_parent_failure))
        if job.state is JobState.WAITING:
            table.add_row("waiting_for", _text(f"{job.waiting_for} parent(s)"))
    if job.lane:
        limits = [f"weight {job.weight}"] if job.weight != 1 else []
        limits += [f"concurrency {job.concurrency}"] if job.concurrency else []
        limits += [f"rate {job.rate:g}/s burst {job.burst}"] if job.rate else []
        limits += [f"circuit {job.circuit}"] if job.circuit else []
        table.add_row("lane", _text(job.lane + (f" ({', '.join(limits)})" if limits else "")))
    console.print(table)
    for e in job.errors:
        head = Text.assemble((f"attempt {e.attempt}", "bold"), f" {_ts(e.at)} ")
        console.print(head + _text(f"{e.type}: {e.message}", lines=True))
        if e.traceback:
            console.print(_text(e.traceback.rstrip(), lines=True))


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
        n = _run(get_app(), lambda i: _requeue_all(i, queue, task))
        console.print(f"requeued {n} job(s)")
        return
    assert job_id is not None
    ok = _run(get_app(), lambda i: i.requeue(job_id))
    if not ok:
        raise click.ClickException(f"job {job_id} is not failed or cancelled (or does not exist)")
    console.print(Text(f"requeued {job_id}"))


async def _requeue_all(inspector: Inspector, queue: str | None, task: str | None) -> int:
    """Requeue every matching failed job a page per store call, with a progress bar."""
    total = await inspector.count(JobState.FAILED, queue=queue)
    columns = (TextColumn("requeueing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        shown = bar.add_task("requeue", total=total or None)
        return await inspector.requeue_all_failed(
            queue=queue, task=task, progress=lambda done: bar.update(shown, completed=done)
        )


@inspect_group.command("cancel")
@click.argument("job_id")
@click.option("--reason", default="cancelled by an operator", show_default=True)
@click.pass_obj
def cancel(get_app: Callable[[], App], job_id: str, reason: str) -> None:
    """Cancel a job (a running one stops at its next heartbeat)."""
    state = _run(get_app(), lambda i: i.cancel(job_id, reason))
    console.print(
        _text(f"{job_id}: {state.value}")
        + (" (cancel requested)" if state is JobState.RUNNING else "")
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


@inspect_group.command("locks")
@click.pass_obj
def locks(get_app: Callable[[], App]) -> None:
    """Held locks (`app.lock`): name, owner, fencing token, seconds until it expires."""
    app = get_app()
    store = require(app.backend, Locks, "conveyor inspect locks")
    held = _run(app, lambda _: store.locks())
    now = app.clock.now()
    table = Table("name", "owner", "token", Column("expires in", justify="right"))
    for lock in held:
        left = max(0.0, lock.expires_at - now)
        table.add_row(_text(lock.name), _text(lock.owner), str(lock.token), f"{left:.1f} s")
    console.print(table if held else "no locks held")


@inspect_group.command("schedules")
@click.pass_obj
def schedules(get_app: Callable[[], App]) -> None:
    """The app's periodic jobs: name, expression, zone, next fire, last fire's job and state."""
    app = get_app()
    rows = _run(app, lambda _: describe(app.backend, app.schedules, app.clock.now()))
    table = Table("name", "expression", "zone", "next fire", "last fire", "last job", "state")
    for row in rows:
        s, job = row.schedule, row.last_job
        table.add_row(
            _text(s.name),
            _text(s.expression.text),
            _text(s.expression.tz),
            _ts(row.next_fire),
            _ts(row.last_fire),
            _text(job.id if job else "-"),
            _text(job.state.value if job else "-"),
        )
    console.print(table if rows else "no schedules (is the app given with -A?)")


def _per_time(rate: float) -> str:
    """Starts per second in the unit that reads best: ``100/s``, ``10/m``, ``20/h``."""
    for unit, seconds in (("s", 1), ("m", 60), ("h", 3600)):
        if rate * seconds >= 1:
            return f"{rate * seconds:.4g}/{unit}"
    return f"{rate * 86_400:.4g}/d"


def _circuit(lane: LaneInfo, now: float) -> str:
    if lane.circuit_state == "open":
        if lane.open_until is None:
            return "open (by hand)"
        return f"open {max(0.0, lane.open_until - now):.0f}s"
    if lane.circuit_state == "half_open":
        return "half-open"
    return "closed" if lane.circuit else "-"


@inspect_group.command("limits")
@click.option("--queue", help="Only this queue.")
@click.pass_obj
def limits(get_app: Callable[[], App], queue: str | None) -> None:
    """The lanes of flow control: per queue and lane, jobs ready, running (of the
    concurrency limit), the rate with the tokens left (of the burst), the circuit (with
    seconds until a probe while open) and its window's failed/all calls."""
    app = get_app()
    lanes = _run(app, lambda i: i.lanes(queue))
    now = app.clock.now()
    table = Table(
        box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1), collapse_padding=True
    )
    table.add_column("queue", no_wrap=True)
    table.add_column("lane", overflow="fold")
    for header in ("ready", "run", "rate", "tokens"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("circuit", no_wrap=True)
    table.add_column("fail", justify="right", no_wrap=True)
    for lane in lanes:
        limited = lane.concurrency > 0
        counted = lane.circuit or lane.calls
        table.add_row(
            _text(lane.queue),
            _text(lane.lane),
            str(lane.ready),
            f"{lane.running}/{lane.concurrency}" if limited else str(lane.running),
            _per_time(lane.rate) if lane.rate > 0 else "-",
            f"{int(lane.tokens)}/{lane.burst}" if lane.rate > 0 else "-",
            _circuit(lane, now),
            f"{lane.failures}/{lane.calls}" if counted else "-",
        )
    console.print(table if lanes else "no lanes (no task with limits, groups or circuits has jobs)")


@inspect_group.command("circuit")
@click.argument("action", type=click.Choice(["open", "close"]))
@click.argument("target", metavar="TASK_OR_LANE")
@click.option("--queue", help="The lane's queue [default: the task's queue, or default].")
@click.option(
    "--for",
    "duration",
    type=click.FloatRange(min=0, min_open=True),
    help="With open: seconds until a probe is let through [default: until closed].",
)
@click.pass_obj
def circuit(
    get_app: Callable[[], App],
    action: str,
    target: str,
    queue: str | None,
    duration: float | None,
) -> None:
    """Open or close the circuit of a lane for every worker: a task of the app (its lane
    is its name) or a lane as `inspect limits` shows it. Open, none of its jobs starts."""
    if duration is not None and action == "close":
        raise click.UsageError("--for goes with open only")
    app = get_app()
    lane, queue = _lane_of(app, target, queue)
    if action == "open":
        change = _run(app, lambda i: i.open_circuit(lane, queue=queue, duration=duration))
    else:
        change = _run(app, lambda i: i.close_circuit(lane, queue=queue))
    now = change.state
    if change.state == "open":
        now += " until closed" if change.until is None else f" until {_ts(change.until)}"
    console.print(_text(f"circuit of {lane} in {queue}: {change.previous} -> {now}"))
    if not change.known:
        console.print(_text(f"note: the store kept no lane {lane!r} in {queue!r} (set anyway)"))


def _lane_of(app: App, target: str, queue: str | None) -> tuple[str, str]:
    """The lane and queue `target` names: a task of the app maps to its lane (its name)."""
    task = app.registry.find(target)
    if task is None:
        return target, queue or "default"
    flow = task.flow
    if flow is None:
        raise click.ClickException(
            f"task {target!r} has no limits, group or circuit, so its jobs take no lane; "
            "give it concurrency=, rate_limit= or circuit= first"
        )
    if flow.templates:
        option, template = flow.templates[0]
        form = f"{target}:<key>" if option == "limit_key" else "<group>"
        raise click.ClickException(
            f"task {target!r} has a lane per value of {option}={template.template!r} "
            f"({form!r}): name one as 'inspect limits' lists it"
        )
    return target, queue or task.defaults.queue or "default"
