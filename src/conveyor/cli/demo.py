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


Call = tuple[str, tuple[object, ...], dict[str, object]]


def _plan(n: int, rng: random.Random) -> list[Call]:
    """The mixed workload: (task, args, options)."""
    out: list[Call] = []
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


async def _produce(app: App, plan: list[Call], rate: float) -> None:
    """Phase 1: a backlog (60 %) enqueued at once, one `enqueue_many` per task. Phase 2: the
    rest as a steady stream of `rate` jobs/s, tagged so the summary can measure pickup
    latency under load rather than time spent in the backlog."""
    cut = len(plan) * 6 // 10
    by_task: dict[str, list[tuple[object, ...]]] = {}
    for name, args, opts in plan[:cut]:
        if opts:
            await app.registry.get(name).options(**opts).enqueue(*args)  # type: ignore[arg-type]
        else:
            by_task.setdefault(name, []).append(args)
    for name, calls in by_task.items():
        await app.registry.get(name).enqueue_many(calls)
    start = time.monotonic()
    for i, (name, args, opts) in enumerate(plan[cut:]):
        task = app.registry.get(name).options(**opts, meta={"phase": "stream"})  # type: ignore[arg-type]
        await task.enqueue(*args)
        lag = start + i / rate - time.monotonic()
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
        "-v",  # the workers' "starting" lines tell the demo they are ready
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
            _wait_ready(log_path, processes, workers)
            asyncio.run(_main(app, plan, jobs, workers))
        finally:
            _stop(workers)


def _wait_ready(log_path: Path, processes: int, workers: subprocess.Popen[bytes]) -> None:
    """Wait until every worker process has logged that it started (or one failed)."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if workers.poll() is not None:
            raise SystemExit(f"the workers exited early; see {log_path.name}")
        if log_path.read_text(errors="replace").count("starting: queues=") >= processes:
            return
        time.sleep(0.05)
    raise SystemExit(f"the workers did not start within 30 s; see {log_path.name}")


def _stop(workers: subprocess.Popen[bytes]) -> None:
    if workers.poll() is None:
        workers.send_signal(signal.SIGTERM)
        try:
            workers.wait(timeout=30)
        except subprocess.TimeoutExpired:
            workers.kill()


async def _main(
    app: App,
    plan: list[Call],
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
        producer = tg.create_task(_produce(app, plan, rate=500.0))
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
    backlog = [
        j for j in done if "phase" not in j.meta and j.attempts == 1 and j.enqueued_at >= j.run_at
    ]
    stream = [j for j in done if j.meta.get("phase") == "stream" and j.attempts == 1]
    drain_span = (
        (max((j.finished_at or 0) for j in backlog) - min((j.started_at or 0) for j in backlog))
        if backlog
        else 0.0
    )
    pickup = [max(0.0, (j.started_at or 0) - j.run_at) * 1000 for j in stream]
    run = [((j.finished_at or 0) - j.run_at) * 1000 for j in stream]
    reasons = Counter(f"{j.task}: {j.last_error.type}" for j in dead if j.last_error)
    table = Table(title="summary", show_header=False)
    table.add_row("jobs", f"{len(jobs)} in {elapsed:.1f} s")
    table.add_row("completed", f"[green]{len(done)}[/] ({len(retried)} after a retry)")
    table.add_row("dead-lettered", f"[red]{len(dead)}[/]")
    table.add_row("failed attempts that were retried", str(sum(j.attempts - 1 for j in done)))
    if drain_span > 0:
        table.add_row(
            "backlog drain rate", f"{len(backlog) / drain_span:,.0f} jobs/s ({len(backlog)} jobs)"
        )
    table.add_row(
        "pickup latency under load (due → started)",
        f"p50 {_pct(pickup, 50):.1f} ms, p99 {_pct(pickup, 99):.1f} ms",
    )
    table.add_row(
        "run latency under load (due → finished)",
        f"p50 {_pct(run, 50):.1f} ms, p99 {_pct(run, 99):.1f} ms",
    )
    if pickup:
        table.add_row("mean pickup under load", f"{statistics.fmean(pickup):.1f} ms")
    console.print(table)
    for reason, n in reasons.most_common():
        console.print(f"  dead letter: {n} x {reason}")
    console.print(
        "\nlook around: conveyor --url sqlite:///conveyor-demo.db inspect stats | "
        "inspect ls --state failed | inspect show ID | inspect requeue --all-failed"
    )
