"""Workflows through the task API: after=, chains, groups, chords and batches with callbacks,
run by a real worker on the memory store and on a SQLite file."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from click.testing import CliRunner

import conveyor
from conveyor import workflow
from conveyor.backends.base import JobFilter
from conveyor.cli import cli
from conveyor.errors import ConfigError, DependencyError, InvalidArguments, InvalidOption
from conveyor.job import JobState
from conveyor.testing import drain


async def test_after_runs_a_job_once_its_parents_completed(app: conveyor.App) -> None:
    order: list[str] = []
    seen: list[object] = []

    @app.task
    async def fetch(url: str) -> int:
        order.append(f"fetch {url}")
        return len(url)

    @app.task
    async def report() -> None:
        job = conveyor.current_job()
        order.append("report")
        seen.append((job.parent_results, [p.state if p else None for p in job.parents]))

    a = await fetch.enqueue("abc")
    b = await fetch.enqueue("hello")
    r = await report.options(after=[a, b.id]).enqueue()
    assert await r.status() is JobState.WAITING
    assert (await drain(app)).completed == 3
    assert order[-1] == "report"
    assert seen == [([3, 5], [JobState.COMPLETED, JobState.COMPLETED])]


async def test_a_chain_passes_each_result_on(app: conveyor.App) -> None:
    @app.task
    async def fetch(url: str) -> str:
        return f"<{url}>"

    @app.task
    def parse(html: str, upper: bool = False) -> list[str]:
        return [html.upper() if upper else html, "x"]

    @app.task
    async def store(parts: list[str], bucket: str) -> str:
        return f"{bucket}:{'+'.join(parts)}"

    flow = await conveyor.chain(fetch.s("a"), parse.s(upper=True), store.s(bucket="b")).enqueue()
    assert await flow.status() is JobState.WAITING
    assert (await drain(app)).completed == 3
    assert await flow.result(timeout=1) == "b:<A>+x"


async def test_a_failed_step_cancels_the_rest_of_the_chain(app: conveyor.App) -> None:
    ran: list[str] = []

    @app.task
    async def first() -> int:
        raise conveyor.Fail("no data")

    @app.task
    async def second(n: int) -> int:
        ran.append("second")
        return n

    @app.task
    async def third(n: int) -> int:
        ran.append("third")
        return n

    flow = await conveyor.chain(first.s(), second.s(), third.s()).enqueue()
    await drain(app)
    assert ran == []
    job = await flow.get()
    assert job.state is JobState.CANCELLED
    assert "cancelled" in str(job.meta["cancel_reason"])
    with pytest.raises(conveyor.JobCancelled):
        await flow.result(timeout=1)


async def test_a_group_and_a_chord(app: conveyor.App) -> None:
    calls: list[list[int]] = []

    @app.task
    async def square(n: int) -> int:
        return n * n

    @app.task
    async def total(values: list[int], offset: int = 0) -> int:
        calls.append(values)
        return sum(values) + offset

    g = await conveyor.group(square.s(n) for n in range(5)).enqueue()
    done = await conveyor.chord([square.s(n) for n in range(30)], total.s(offset=1)).enqueue()
    assert len(g) == 5
    await drain(app)
    assert await g.results(timeout=1) == [0, 1, 4, 9, 16]
    assert await done.result(timeout=1) == sum(n * n for n in range(30)) + 1
    assert calls == [[n * n for n in range(30)]]  # once, in member order
    empty = await conveyor.chord([], total.s()).enqueue()
    await drain(app)
    assert await empty.result(timeout=1) == 0


async def test_a_failed_member_cancels_the_chord_callback(app: conveyor.App) -> None:
    @app.task
    async def maybe(n: int) -> int:
        if n == 3:
            raise conveyor.Fail("three")
        return n

    @app.task
    async def total(values: list[int]) -> int:
        return sum(values)

    done = await conveyor.chord([maybe.s(n) for n in range(5)], total.s()).enqueue()
    await drain(app)
    assert await done.status() is JobState.CANCELLED


async def test_a_child_that_runs_anyway_reads_the_failure(app: conveyor.App) -> None:
    seen: list[object] = []

    @app.task
    async def flaky() -> int:
        raise conveyor.Fail("down")

    @app.task
    async def cleanup() -> str:
        job = conveyor.current_job()
        (parent,) = job.parents
        assert parent is not None
        error = parent.last_error
        seen.append((job.parent_results, parent.state, error and error.message))
        return "cleaned"

    a = await flaky.enqueue()
    c = await cleanup.options(after=[a], on_parent_failure="run").enqueue()
    await drain(app)
    assert await c.result(timeout=1) == "cleaned"
    assert seen == [([None], JobState.FAILED, "down")]


async def test_a_batch_fires_its_callbacks_once(app: conveyor.App) -> None:
    fired: list[str] = []

    @app.task
    async def row(n: int) -> int:
        return n

    @app.task
    async def notify(text: str) -> None:
        fired.append(text)

    async with app.batch(on_success=notify.s("ok"), on_complete=notify.s("done")) as batch:
        for n in range(20):
            await row.enqueue(n)
        async with app.batch(on_complete=notify.s("inner")) as inner:
            await row.enqueue(100)
    assert len(batch.members) == 22  # 20 rows, the inner batch's row and its callback
    assert len(inner.members) == 1
    status = await batch.status()
    assert (status.total, status.pending, status.progress) == (22, 22, 0.0)
    await drain(app)
    assert sorted(fired) == ["done", "inner", "ok"]
    assert fired.index("inner") < fired.index("done")  # the outer batch waited for it
    status = await batch.status()
    assert (status.completed, status.pending, status.done) == (22, 0, True)
    assert await batch.callbacks["on_success"].status() is JobState.COMPLETED


async def test_a_batch_whose_members_fail_completes_but_does_not_succeed(
    app: conveyor.App,
) -> None:
    fired: list[str] = []

    @app.task
    async def row(n: int) -> int:
        if n % 2:
            raise conveyor.Fail("odd")
        return n

    @app.task
    async def notify(text: str) -> None:
        fired.append(text)

    async with app.batch(on_success=notify.s("ok"), on_complete=notify.s("done")) as batch:
        for n in range(6):
            await row.enqueue(n)
    await drain(app)
    assert fired == ["done"]
    status = await batch.status()
    assert (status.completed, status.failed, status.pending) == (3, 3, 0)
    assert await batch.callbacks["on_success"].status() is JobState.CANCELLED


async def test_a_batch_block_that_raises_keeps_its_members(app: conveyor.App) -> None:
    fired: list[int] = []

    @app.task
    async def row(n: int) -> int:
        fired.append(n)
        return n

    batch = app.batch(on_complete=row.s(0))

    async def fill() -> None:
        async with batch:
            await row.enqueue(1)
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        await fill()
    assert len(batch.members) == 1
    await drain(app)
    assert fired == [1, 0]  # the member, then the callback: the batch didn't hang


async def test_a_member_reopens_its_batch_to_add_jobs(app: conveyor.App) -> None:
    order: list[str] = []

    @app.task
    async def crawl(page: int, batch_id: str) -> None:
        order.append(f"page {page}")
        if page < 3:
            async with app.batch(reopen=batch_id):
                await crawl.enqueue(page + 1, batch_id)

    @app.task
    async def report() -> None:
        order.append("report")

    async with app.batch(on_success=report.s()) as batch:
        assert batch.id is not None
        await crawl.enqueue(0, batch.id)
    await drain(app)
    assert order == ["page 0", "page 1", "page 2", "page 3", "report"]
    status = await batch.status()
    assert (status.total, status.completed) == (4, 4)  # what the members added counts too
    with pytest.raises(conveyor.ConveyorError, match="has finished"):
        async with app.batch(reopen=batch.id):
            pass
    with pytest.raises(conveyor.ConveyorError, match="no batch"):
        async with app.batch(reopen="0" * 32):
            pass
    plain = app.batch()
    async with plain:
        await report.enqueue()
    assert plain.id is None and len(plain.members) == 1


async def test_a_member_that_waits_for_its_batch_is_a_cycle(app: conveyor.App) -> None:
    @app.task
    async def row(n: int) -> int:
        return n

    batch = app.batch(on_complete=row.s(0))

    async def fill() -> None:
        async with batch:
            await row.options(after=[batch.callbacks["on_complete"]]).enqueue(1)

    with pytest.raises(DependencyError, match="cycle"):
        await fill()


async def test_a_chain_from_sync_code(app: conveyor.App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    flow = await asyncio.to_thread(conveyor.chain(add.s(1, 2), add.s(10)).enqueue_sync)
    g = await asyncio.to_thread(conveyor.group([add.s(1, 1), add.s(2, 2)]).enqueue_sync)
    with pytest.raises(conveyor.ConveyorError, match="did not finish within"):
        await g.results(timeout=0.01)
    done = await asyncio.to_thread(conveyor.chord([add.s(1, 1)], add.s(5)).enqueue_sync)
    await drain(app)
    assert await flow.result(timeout=1) == 13
    assert await g.results(timeout=1) == [2, 4]
    with pytest.raises(conveyor.ConveyorError):
        await done.result(timeout=1)  # add(a: int, b) can't take a list: a poison payload
    assert (await done.get()).last_error.type == "PoisonPayload"  # type: ignore[union-attr]


async def test_a_result_of_the_wrong_type_fails_the_next_step(app: conveyor.App) -> None:
    @app.task
    async def word() -> str:
        return "seven"

    @app.task
    async def double(n: int) -> int:
        return 2 * n

    flow = await conveyor.chain(word.s(), double.s()).enqueue()
    await drain(app)
    job = await flow.get()
    assert job.state is JobState.FAILED
    assert job.last_error is not None and job.last_error.type == "PoisonPayload"
    assert "Expected `int`, got `str`" in job.last_error.message


# -- bad input: a clear error, nothing written ---------------------------------------------


async def test_bad_workflows_are_refused_before_anything_is_written(app: conveyor.App) -> None:
    @app.task
    async def one(n: int) -> int:
        return n

    @app.task
    async def nothing() -> None: ...

    @app.task
    async def keyword_only(*, n: int) -> int:
        return n

    @app.task(batch=conveyor.Batch(max_size=10))
    async def many(items: list[int]) -> list[int]:
        return items

    with pytest.raises(InvalidArguments, match="unexpected keyword argument 'm'"):
        one.s(m=1)
    with pytest.raises(InvalidArguments, match="too many positional arguments"):
        conveyor.chain(one.s(1), one.s(2))  # one(n) gets the result: no room for 2
    with pytest.raises(InvalidArguments, match="can't take the previous step's result"):
        conveyor.chain(one.s(1), nothing.s())
    with pytest.raises(InvalidArguments, match="can't take the previous step's result"):
        conveyor.chord([one.s(1)], keyword_only.s())
    with pytest.raises(InvalidArguments, match="'n' receives the previous result"):
        conveyor.chain(one.s(1), one.s(n=2))
    with pytest.raises(InvalidArguments, match="Expected `int`, got `str`"):
        conveyor.group([one.s("x")])
    with pytest.raises(ConfigError, match="batch task 'many'"):
        many.s(1)
    with pytest.raises(ConfigError, match="at least one step"):
        conveyor.chain()
    with pytest.raises(ConfigError, match="task signatures"):
        conveyor.chain(one.s(1), one)  # type: ignore[arg-type]
    other = conveyor.App("memory://")

    @other.task(name="elsewhere")
    async def elsewhere(n: int) -> int:
        return n

    with pytest.raises(ConfigError, match="another app"):
        conveyor.chain(one.s(1), elsewhere.s())
    there = await elsewhere.enqueue(1)
    with pytest.raises(DependencyError, match="another store"):
        await one.options(after=[there]).enqueue(1)
    with pytest.raises(DependencyError, match="unknown, or already purged"):
        await one.options(after=["0" * 32]).enqueue(1)
    with pytest.raises(InvalidOption, match="on_parent_failure"):
        await one.options(after=[there.id], on_parent_failure="ignore").enqueue(1)
    with pytest.raises(InvalidOption, match="neither a job handle nor a job id"):
        await one.options(after=[42]).enqueue(1)
    with pytest.raises(InvalidOption, match="list of job handles or ids"):
        await one.options(after="abc").enqueue(1)
    assert sum(sum(per.values()) for per in (await app.backend.counts()).values()) == 0
    await other.aclose()


async def test_inspect_shows_a_waiting_jobs_parents(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    app = conveyor.App(f"sqlite:///{db}")

    @app.task
    async def step(n: int) -> int:
        return n

    a = await step.enqueue(1)
    b = await step.options(after=[a]).enqueue(2)
    await app.aclose()
    run = CliRunner().invoke
    out = await asyncio.to_thread(run, cli, ["--url", f"sqlite:///{db}", "inspect", "show", b.id])
    assert out.exit_code == 0, out.output
    assert a.id in out.output and "1 parent(s)" in out.output and "cancel" in out.output
    stats = await asyncio.to_thread(run, cli, ["--url", f"sqlite:///{db}", "inspect", "stats"])
    # ("wait" on a console under 100 columns, "waiting" on a wider one.)
    assert stats.exit_code == 0 and "wait" in stats.output, stats.output


async def test_each_chain_step_starts_as_soon_as_the_last_one_settled(tmp_path: Path) -> None:
    # A regression: SQLite's idle wait took its change baseline after looking for ready work,
    # so a child released by the worker's own settle in between waited out the idle wait (1 s).
    app = conveyor.App(f"sqlite:///{tmp_path}/jobs.db")

    @app.task
    async def step(n: int) -> int:
        return n + 1

    async with app:
        async with app.worker(concurrency=64):
            flow = await conveyor.chain(step.s(0), *(step.s() for _ in range(99))).enqueue()
            assert await flow.result(timeout=60) == 100
        page = await app.backend.query(JobFilter(), limit=1000)
    times = sorted((j.started_at or 0.0, j.finished_at or 0.0) for j in page.jobs)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(times)]
    assert max(gaps) < 0.5, sorted(gaps)[-5:]  # a lost wake-up costs a whole second
    await app.aclose()


async def test_a_large_batch_is_linked_in_chunks(
    app: conveyor.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workflow, "_LINK_CHUNK", 3)
    fired: list[str] = []

    @app.task
    async def row(n: int) -> int:
        return n

    @app.task
    async def notify(text: str) -> None:
        fired.append(text)

    async with app.batch(on_complete=notify.s("done")) as batch:
        for n in range(10):
            await row.enqueue(n)
    assert (await batch.callbacks["on_complete"].get()).waiting_for == 10  # the hold went back
    await drain(app)
    assert fired == ["done"]
