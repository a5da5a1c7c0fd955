"""The job context: `current_job()` in handlers, checkpoints that survive retries, progress."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

import conveyor
from conveyor.backends.base import ClaimRequest
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.cli import cli
from conveyor.clock import FakeClock
from conveyor.errors import InvalidOption, StateError
from conveyor.fields import NAMES
from conveyor.handle import Progress
from conveyor.job import JobState
from conveyor.rows import decode_job
from conveyor.testing import drain
from conveyor.testing.contract import make_job


def test_outside_a_job_current_job_raises_a_clear_error() -> None:
    with pytest.raises(StateError, match="only inside a running job"):
        conveyor.current_job()


async def test_async_and_sync_handlers_see_their_own_job(app: conveyor.App) -> None:
    seen: list[tuple[str, str, int, int, str, object]] = []

    @app.task(retry=conveyor.RetryPolicy(max_attempts=4))
    async def fetch(n: int) -> str:
        job = conveyor.current_job()
        seen.append((job.id, job.task, job.attempt, job.max_attempts, job.queue, job.meta))
        await asyncio.sleep(0)  # other jobs run meanwhile: each keeps its own context
        assert conveyor.current_job() is job
        return job.id

    @app.task(queue="low")
    def shout(s: str) -> str:
        job = conveyor.current_job()
        seen.append((job.id, job.task, job.attempt, job.max_attempts, job.queue, job.meta))
        return job.id

    handles = [await fetch.enqueue(i) for i in range(3)]
    sync = await shout.enqueue("hi")
    assert (await drain(app)).completed == 4
    for h in [*handles, sync]:
        assert await h.result(timeout=1) == h.id
    by_id = {s[0]: s for s in seen}
    assert by_id[handles[0].id][1:5] == (fetch.name, 1, 4, "default")
    assert by_id[sync.id][1:5] == (shout.name, 1, 3, "low")
    with pytest.raises(StateError):  # the worker left nothing behind in this context
        conveyor.current_job()


async def test_batch_handlers_have_no_single_job(app: conveyor.App) -> None:
    errors: list[str] = []

    @app.task(batch=conveyor.Batch(max_size=5, max_wait=0.01))
    async def index(items: list[int]) -> list[int]:
        try:
            conveyor.current_job()
        except StateError as exc:
            errors.append(str(exc))
        return items

    for i in range(3):
        await index.enqueue(i)
    assert (await drain(app)).completed == 3
    assert errors and all("batch task" in e for e in errors)


async def test_a_retried_job_resumes_from_its_checkpoint(app: conveyor.App) -> None:
    starts: list[object] = []

    @app.task(retry=conveyor.RetryPolicy(max_attempts=3, base_delay=0, jitter=0))
    async def crawl(pages: int) -> int:
        job = conveyor.current_job()
        start = job.checkpoint or 0
        starts.append(start)
        for page in range(start, pages):
            if page == 3 and job.attempt == 1:
                raise ConnectionError("site went away")
            assert await job.save_checkpoint(page + 1)
            await job.progress((page + 1) / pages, f"page {page}")
        return job.attempt

    h = await crawl.enqueue(5)
    await drain(app)
    assert await h.result(timeout=1) == 2
    assert starts == [0, 3]
    assert await h.progress() == Progress(1.0, "page 4")
    record = await h.get()
    assert record.checkpoint == b"5"  # kept on the finished record (see docs)


async def test_a_sync_handler_checkpoints_and_reports_progress(app: conveyor.App) -> None:
    @app.task
    def work() -> None:
        job = conveyor.current_job()
        assert job.save_checkpoint_sync({"done": 1})
        job.progress_sync(0.25, "a quarter")

    h = await work.enqueue()
    await drain(app)
    assert (await h.get()).state is JobState.COMPLETED
    assert (await h.get()).checkpoint == b'{"done":1}'
    assert await h.progress() == Progress(0.25, "a quarter")


async def test_progress_is_written_by_the_heartbeat_while_running(app: conveyor.App) -> None:
    go = asyncio.Event()

    @app.task
    async def slow() -> None:
        await conveyor.current_job().progress(0.5, "halfway")
        await go.wait()

    h = await slow.enqueue()
    assert await h.progress() is None
    server = app.worker(lease_for=2.0, heartbeat_every=0.02, burst=True, poll=0.01)
    runner = asyncio.create_task(server.run())
    try:
        async with asyncio.timeout(5):
            while await h.progress() is None:
                await asyncio.sleep(0.01)
        assert await h.progress() == Progress(0.5, "halfway")
        assert await h.status() is JobState.RUNNING
    finally:
        go.set()
        await runner


async def test_bad_checkpoints_and_progress_are_refused(app: conveyor.App) -> None:
    messages: list[str] = []

    @app.task
    async def bad() -> None:
        job = conveyor.current_job()
        for call in (
            lambda: job.save_checkpoint(object()),
            lambda: job.progress(1.5),
            lambda: job.progress(float("nan")),
            lambda: job.progress(0.5, 3),  # type: ignore[arg-type]
        ):
            try:
                await call()
            except InvalidOption as exc:
                messages.append(str(exc))
        with pytest.raises(StateError, match="sync handlers"):
            job.save_checkpoint_sync(1)

    h = await bad.enqueue()
    await drain(app)
    assert (await h.get()).state is JobState.COMPLETED
    assert len(messages) == 4
    assert "JSON-serializable" in messages[0] and "0 to 1" in messages[1]
    record = await h.get()
    assert record.checkpoint is None and record.progress == {}


async def test_an_old_sqlite_file_gains_the_checkpoint_and_progress_columns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    clock = FakeClock()
    job = make_job(clock)
    async with SQLiteBackend(path, clock=clock) as b:
        await b.enqueue([job])
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE jobs DROP COLUMN checkpoint")
    conn.execute("ALTER TABLE jobs DROP COLUMN progress")
    conn.commit()
    conn.close()
    async with SQLiteBackend(path, clock=clock) as b:
        (lease,) = await b.claim(ClaimRequest(["default"], 1, 30.0, "w"))
        assert lease.job.checkpoint is None and lease.job.progress == {}
        assert await b.annotate([(lease, {"checkpoint": b"7"})]) == [True]
        (got,) = await b.get([job.id])
        assert got is not None and got.checkpoint == b"7"


async def test_inspect_show_prints_progress_and_checkpoint(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    app = conveyor.App(f"sqlite:///{db}")

    @app.task
    async def step() -> None:
        job = conveyor.current_job()
        await job.save_checkpoint({"page": "[bold]7[/bold]"})
        await job.progress(0.4, "[red]page 7[/red]")

    h = await step.enqueue()
    await drain(app)
    await app.aclose()
    out = await asyncio.to_thread(
        CliRunner().invoke, cli, ["--url", f"sqlite:///{db}", "inspect", "show", h.id]
    )
    assert out.exit_code == 0, out.output
    assert "40% [red]page 7[/red]" in out.output
    assert '{"page":"[bold]7[/bold]"}' in out.output


def test_poison_rows_never_share_one_progress_dict() -> None:
    row: list[object] = [None] * len(NAMES)
    row[NAMES.index("id")], row[NAMES.index("task")] = "a", "t"
    row[NAMES.index("payload")], row[NAMES.index("state")] = b"", "bogus"
    first, second = decode_job(row), decode_job(row)
    assert first.state is JobState.FAILED  # read by the careful path
    assert first.progress == {} and first.progress is not second.progress
