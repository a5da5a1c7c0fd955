"""`conveyor inspect workers` and `conveyor inspect metrics`: who runs where, and how jobs did.

Both read the store only: presence beats (`Presence`) and per-minute rollups (`Rollups`),
never a scan of the jobs. Stored text is shown literally (`inspect_cmd.visible`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import click
from rich.table import Column, Table
from rich.text import Text

from conveyor.app import App
from conveyor.cli.inspect_cmd import _run, _text, console, inspect_group
from conveyor.errors import InvalidSchedule
from conveyor.rollup import GroupMetrics
from conveyor.scheduler.cron import parse_duration

__all__ = ["metrics", "workers"]


@inspect_group.command("workers")
@click.pass_obj
def workers(get_app: Callable[[], App]) -> None:
    """Workers online: host, pid, queues, slots in use, running jobs, last beat, version."""
    app = get_app()
    rows = _run(app, lambda i: i.workers())
    now = time.time()
    table = Table(
        "worker",
        "queues",
        Column("running", justify="right"),
        "jobs",
        Column("seen", justify="right"),
        Column("up", justify="right"),
        "version",
    )
    for w in rows:
        jobs = ", ".join(w.jobs[:3]) + (f" +{len(w.jobs) - 3}" if len(w.jobs) > 3 else "")
        table.add_row(
            _text(w.id),
            _text(",".join(w.queues)),
            f"{w.running}/{w.concurrency}",
            _text(jobs or "-"),
            f"{max(0.0, now - w.seen_at):.0f}s ago",
            _age(now - w.started_at) if w.started_at else "-",
            _text(w.version or "-"),
        )
    console.print(table if rows else "no workers online")
    for w in rows:
        for line in w.stuck:
            console.print(_text(f"{w.id}: stuck: {line}"), style="yellow")


@inspect_group.command("metrics")
@click.option("--since", "since", default="1h", show_default=True, help="how far back: 90s, 1h")
@click.option("--by", type=click.Choice(["task", "queue"]), default="task", show_default=True)
@click.option("--queue", default=None, help="only this queue's jobs")
@click.pass_obj
def metrics(get_app: Callable[[], App], since: str, by: str, queue: str | None) -> None:
    """Throughput, latency and failure rate per task (or queue), from the store's rollups."""
    try:
        back = parse_duration(since)
    except InvalidSchedule:
        raise click.BadParameter(
            f"{since!r} is not a duration; use e.g. 90s, 15m, 1h, 2d", param_hint="--since"
        ) from None
    app = get_app()
    report = _run(app, lambda i: i.metrics(back, by=by, queue=queue))  # type: ignore[arg-type]
    table = Table(
        by,
        Column("done", justify="right"),
        Column("failed", justify="right"),
        Column("retried", justify="right"),
        Column("fail %", justify="right"),
        Column("/min", justify="right"),
        Column("p50", justify="right"),
        Column("p95", justify="right"),
        Column("wait p95", justify="right"),
    )
    minutes = max(1.0, (report.until - report.since) / 60)
    for g in (*report.groups, report.total) if report.groups else ():
        table.add_row(*_row(g, minutes), end_section=g is report.groups[-1])
    if not report.groups:
        console.print(f"no jobs settled in the last {since}")
        return
    console.print(table)


def _row(g: GroupMetrics, minutes: float) -> list[str | Text]:
    return [
        _text("all" if g.name == "*" else g.name),
        str(g.completed),
        str(g.failed),
        str(g.retried),
        f"{100 * g.failure_rate:.1f}",
        f"{(g.completed + g.failed) / minutes:.1f}",
        _seconds(g.duration_p50),
        _seconds(g.duration_p95),
        _seconds(g.wait_p95),
    ]


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    return _age(value)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
