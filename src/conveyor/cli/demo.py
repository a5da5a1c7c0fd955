"""`conveyor demo`: a realistic workload on SQLite, worker processes, live progress, summary."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from conveyor.app import App
from conveyor.inspector import QueueCounts
from conveyor.job import Job, JobState

__all__ = ["run_demo"]

console = Console()


def _plan(n: int, rng: random.Random) -> list[tuple[str, tuple[object, ...], dict[str, object]]]:
    """The mixed workload: (task, args, options)."""
    out: list[tuple[str, tuple[object, ...], dict[str, object]]] = []
    for i in range(n):
        r = rng.random()
        if r < 0.40:
            out.append(
                (
                    "send_email",
                    (f"user{i}@example.com", rng.choice(["welcome", "receipt", "reset"])),
                    {},
                )
            )
        elif r < 0.60:
            out.append(("resize_image", (i, rng.choice([128, 512, 1024])), {}))
        elif r < 0.75:
            cents = -1 if rng.random() < 0.01 else rng.randint(100, 50_000)
            out.append(("charge_card", (i, cents), {}))
        elif r < 0.87:
            out.append(("sync_inventory", (f"SKU-{i:05d}",), {}))
        elif r < 0.95:
            url = f"https://hooks.example.com/{'gone' if rng.random() < 0.03 else 'ok'}/{i}"
            out.append(("call_webhook", (url,), {}))
        else:
            out.append(("build_report", (i,), {"delay": rng.uniform(1.0, 5.0)}))
    return out


def _table(rows: list[QueueCounts]) -> Table:
    table = Table(
        "queue", "scheduled", "queued", "running", "completed", "failed", title="jobs by queue"
    )
    for q in rows:
        table.add_row(
            q.queue,
            str(q.scheduled),
            str(q.queued),
            str(q.running),
            f"[green]{q.completed}[/]",
            f"[red]{q.failed}[/]" if q.failed else "0",
        )
    return table


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def _produce(
    app: App, plan: list[tuple[str, tuple[object, ...], dict[str, object]]], seconds: float
) -> None:
    """Enqueue a third at once, then the rest as a steady stream over `seconds`."""
    first = len(plan) // 3
    by_task: dict[str, list[tuple[object, ...]]] = {}
    for name, args, opts in plan[:first]:
        if opts:
            await app.registry.get(name).options(**opts).enqueue(*args)  # type: ignore[arg-type]
        else:
            by_task.setdefault(name, []).append(args)
    for name, calls in by_task.items():
        await app.registry.get(name).enqueue_many(calls)
    rest = plan[first:]
    step = seconds / max(1, len(rest))
    start = time.monotonic()
    for i, (name, args, opts) in enumerate(rest):
        task = app.registry.get(name)
        await (task.options(**opts) if opts else task).enqueue(*args)  # type: ignore[arg-type]
        lag = start + i * step - time.monotonic()
        if lag > 0:
            await asyncio.sleep(lag)


def run_demo(*, jobs: int, processes: int, concurrency: int, db: str) -> None:
    """Run the demo end to end and print a summary."""
    path = Path(db).resolve()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    os.environ["CONVEYOR_DEMO_URL"] = url
    from conveyor.cli import demo_app

    app = demo_app.app
    plan = _plan(jobs, random.Random(7))
    log_path = path.with_suffix(".log")
    console.print(
        f"[bold]Conveyor demo[/]: {jobs} jobs of 6 kinds on {path.name}, "
        f"{processes} worker process(es) x {concurrency} slots"
    )
    console.print(f"worker logs (retries, dead letters) go to {log_path.name}\n")
    cmd = [
        sys.executable,
        "-m",
        "conveyor",
        "worker",
        "conveyor.cli.demo_app:app",
        "-q",
        "critical=6,default=3,low=1",
        "-c",
        str(concurrency),
        "-p",
        str(processes),
    ]
    with open(log_path, "wb") as log:
        workers = subprocess.Popen(cmd, env={**os.environ}, stdout=log, stderr=log)
        try:
            asyncio.run(_main(app, plan, jobs, workers))
        finally:
            _stop(workers)


def _stop(workers: subprocess.Popen[bytes]) -> None:
    if workers.poll() is None:
        workers.send_signal(signal.SIGTERM)
        try:
            workers.wait(timeout=30)
        except subprocess.TimeoutExpired:
            workers.kill()


async def _main(
    app: App,
    plan: list[tuple[str, tuple[object, ...], dict[str, object]]],
    jobs: int,
    workers: subprocess.Popen[bytes],
) -> None:
    async with app:
        elapsed = await _watch(app, plan, jobs)
        _stop(workers)
        await _summary(app, elapsed)


async def _watch(
    app: App, plan: list[tuple[str, tuple[object, ...], dict[str, object]]], jobs: int
) -> float:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[rate]}"),
    )
    bar = progress.add_task("finished", total=jobs, rate="")
    start = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        producer = tg.create_task(_produce(app, plan, seconds=4.0))
        with Live(console=console, refresh_per_second=8) as live:
            while True:
                rows = await app.inspector.stats()
                done = sum(q.completed + q.failed + q.cancelled for q in rows)
                pending = sum(q.scheduled + q.queued + q.running for q in rows)
                took = time.monotonic() - start
                progress.update(bar, completed=done, rate=f"{done / took:,.0f} jobs/s")
                live.update(Group(progress, _table(rows)))
                if producer.done() and pending == 0 and done >= jobs:
                    break
                await asyncio.sleep(0.25)
    return time.monotonic() - start


async def _summary(app: App, elapsed: float) -> None:
    jobs: list[Job] = [j async for j in app.inspector.iter()]
    done = [j for j in jobs if j.state is JobState.COMPLETED]
    dead = [j for j in jobs if j.state is JobState.FAILED]
    retried = [j for j in done if j.attempts > 1]
    pickup = [max(0.0, (j.started_at or 0) - j.run_at) * 1000 for j in done]
    e2e = [((j.finished_at or 0) - j.run_at) * 1000 for j in done if j.attempts == 1]
    reasons = Counter(f"{j.task}: {j.last_error.type}" for j in dead if j.last_error)
    table = Table(title="summary", show_header=False)
    table.add_row("jobs", str(len(jobs)))
    table.add_row("completed", f"[green]{len(done)}[/] ({len(retried)} after a retry)")
    table.add_row("dead-lettered", f"[red]{len(dead)}[/]")
    table.add_row("attempts that failed and retried", str(sum(j.attempts - 1 for j in done)))
    table.add_row("throughput", f"{len(jobs) / elapsed:,.0f} jobs/s over {elapsed:.1f} s")
    table.add_row(
        "pickup latency (due → started)",
        f"p50 {_pct(pickup, 50):.1f} ms, p99 {_pct(pickup, 99):.1f} ms",
    )
    table.add_row(
        "run latency (due → finished, 1st try)",
        f"p50 {_pct(e2e, 50):.1f} ms, p99 {_pct(e2e, 99):.1f} ms",
    )
    if pickup:
        table.add_row("mean pickup", f"{statistics.fmean(pickup):.1f} ms")
    console.print(table)
    for reason, n in reasons.most_common():
        console.print(f"  dead letter: {n} x {reason}")
    console.print(
        "\nlook around: conveyor --url sqlite:///conveyor-demo.db inspect stats | "
        "inspect ls --state failed | inspect show ID | inspect requeue --all-failed"
    )
