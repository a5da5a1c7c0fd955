"""Worker behaviour: outcomes, retries, signals, timeouts, deadlines, poison, queues, stops."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import conveyor
from conveyor.errors import ConfigError, JobCancelled, JobFailed
from conveyor.job import Job, JobState, new_job_id
from conveyor.testing import drain
from conveyor.worker import QueueSelector, WorkerConfig, parse_queues


@pytest.fixture(params=["memory", "sqlite"])
async def fapp(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[conveyor.App]:
    """An App on a FakeClock."""
    clock = conveyor.FakeClock()
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/jobs.db"
    application = conveyor.App(url, clock=clock)
    yield application
    await application.aclose()


def advance(app: conveyor.App, seconds: float) -> None:
    assert isinstance(app.clock, conveyor.FakeClock)
    app.clock.advance(seconds)


async def test_runs_async_and_sync_tasks(app: conveyor.App) -> None:
    threads: list[str] = []

    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def shout(s: str) -> str:
        threads.append(threading.current_thread().name)
        return s.upper()

    h1 = await add.enqueue(1, 2)
    h2 = await shout.enqueue("hi")
    stats = await drain(app)
    assert stats.completed == 2
    assert await h1.result(timeout=1) == 3
    assert await h2.result(timeout=1) == "HI"
    assert threads[0].startswith("conveyor-job")


async def test_retry_with_backoff_then_success(fapp: conveyor.App) -> None:
    calls = 0

    @fapp.task(retry=conveyor.RetryPolicy(max_attempts=3, base_delay=10, jitter=0))
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"down {calls}")
        return "up"

    h = await flaky.enqueue()
    assert (await drain(fapp)).retried == 1
    job = await h.get()
    assert job.state is JobState.SCHEDULED
    assert job.run_at == pytest.approx(fapp.clock.now() + 10)
    advance(fapp, 10)
    await drain(fapp)
    job = await h.get()
    assert job.run_at == pytest.approx(fapp.clock.now() + 20)  # exponential
    advance(fapp, 20)
    await drain(fapp)
    assert await h.result(timeout=1) == "up"
    job = await h.get()
    assert [e.message for e in job.errors] == ["down 1", "down 2"]
    assert job.errors[0].type == "ConnectionError"
    assert "Traceback" in job.errors[0].traceback
    assert job.attempts == 3


async def test_attempts_exhausted_is_dead_letter(fapp: conveyor.App) -> None:
    @fapp.task(retry=conveyor.RetryPolicy(max_attempts=2, base_delay=0))
    async def broken() -> None:
        raise ValueError("always")

    h = await broken.enqueue()
    await drain(fapp)
    await drain(fapp)
    with pytest.raises(JobFailed, match="always"):
        await h.result(timeout=1)
    assert (await h.get()).attempts == 2


async def test_task_signals(fapp: conveyor.App) -> None:
    class Invalid(conveyor.NonRetryable):
        pass

    @fapp.task
    async def cancel_me() -> None:
        raise conveyor.Cancel("not needed anymore")

    @fapp.task
    async def fail_me() -> None:
        raise conveyor.Fail("bad input")

    @fapp.task
    async def invalid() -> None:
        raise Invalid("never retry")

    @fapp.task(retry=conveyor.RetryPolicy(dont_retry=(KeyError,)))
    async def keyerror() -> None:
        raise KeyError("k")

    @fapp.task(retry=conveyor.RetryPolicy(max_attempts=5))
    async def later() -> None:
        raise conveyor.Retry(delay=42)

    hc, hf, hi, hk, hl = [await t.enqueue() for t in (cancel_me, fail_me, invalid, keyerror, later)]
    await drain(fapp)
    with pytest.raises(JobCancelled, match="not needed anymore"):
        await hc.result(timeout=1)
    for h in (hf, hi, hk):
        job = await h.get()
        assert job.state is JobState.FAILED
        assert job.attempts == 1
    assert (await hf.get()).errors[0].type == "Fail"
    later_job = await hl.get()
    assert later_job.state is JobState.SCHEDULED
    assert later_job.run_at == pytest.approx(fapp.clock.now() + 42)


async def test_attempt_timeout(app: conveyor.App) -> None:
    @app.task(timeout=0.05, retry=conveyor.RetryPolicy(max_attempts=1))
    async def hangs() -> None:
        await asyncio.sleep(1000)

    @app.task(timeout=5, retry=conveyor.RetryPolicy(max_attempts=1))
    async def own_timeout() -> None:
        raise TimeoutError("upstream timed out")

    h1, h2 = await hangs.enqueue(), await own_timeout.enqueue()
    await drain(app)
    e1 = (await h1.get()).errors[-1]
    e2 = (await h2.get()).errors[-1]
    assert (e1.type, e1.message) == ("Timeout", "attempt timed out after 0.05 s")
    assert (e2.type, e2.message) == ("TimeoutError", "upstream timed out")


async def test_deadline_passed_before_start(fapp: conveyor.App) -> None:
    ran = False

    @fapp.task
    async def urgent() -> None:
        nonlocal ran
        ran = True

    h = await urgent.options(deadline_in=10).enqueue()
    advance(fapp, 11)
    await drain(fapp)
    job = await h.get()
    assert job.state is JobState.FAILED
    assert job.errors[-1].type == "DeadlineExceeded"
    assert not ran


async def test_unknown_task_and_poison_payload_fail_alone(app: conveyor.App) -> None:
    @app.task
    async def good(n: int) -> int:
        return n

    @app.task
    async def typed(n: int) -> int:
        return n

    now = app.clock.now()

    def raw(task: str, payload: bytes) -> Job:
        return Job(id=new_job_id(now), task=task, payload=payload, run_at=now, enqueued_at=now)

    ghost = raw("ghost", b"{}")
    garbage = raw("good", b"\xff{not json")
    wrong = raw("typed", b'{"n":"x"}')
    await app.backend.enqueue([ghost, garbage, wrong])
    ok = await good.enqueue(7)
    stats = await drain(app)
    assert stats.completed == 1
    assert stats.failed == 3
    jobs = await app.backend.get([ghost.id, garbage.id, wrong.id])
    types = [j.errors[-1].type for j in jobs if j is not None]
    assert types == ["UnknownTask", "PoisonPayload", "PoisonPayload"]
    assert await ok.result(timeout=1) == 7


async def test_unserializable_result_fails_clearly(app: conveyor.App) -> None:
    @app.task
    async def weird() -> object:
        return object()

    h = await weird.enqueue()
    await drain(app)
    assert (await h.get()).errors[-1].type == "ResultNotSerializable"


async def test_strict_queues_and_priorities(app: conveyor.App) -> None:
    order: list[str] = []

    @app.task
    async def mark(name: str) -> None:
        order.append(name)

    await mark.options(queue="low").enqueue("low")
    await mark.options(queue="high", priority=-5).enqueue("high-late")
    await mark.options(queue="high", priority=5).enqueue("high-first")
    server = app.worker("high,low", strict=True, concurrency=1, burst=True, maintenance=False)
    await server.run()
    assert order == ["high-first", "high-late", "low"]


def test_weighted_selection_follows_weights() -> None:
    sel = QueueSelector((("a", 6), ("b", 3), ("c", 1)), strict=False, rng=random.Random(1))
    firsts = [sel.order()[0] for _ in range(10_000)]
    share = {q: firsts.count(q) / len(firsts) for q in "abc"}
    assert share["a"] == pytest.approx(0.6, abs=0.03)
    assert share["b"] == pytest.approx(0.3, abs=0.03)
    assert share["c"] == pytest.approx(0.1, abs=0.03)
    assert sorted(sel.order()) == ["a", "b", "c"]  # every queue is still tried


def test_queue_spec_and_config_errors() -> None:
    assert parse_queues("critical=6,default=3,low") == (("critical", 6), ("default", 3), ("low", 1))
    for bad, msg in [("a=x", "whole number"), ("a=0", ">= 1"), ("a,a", "twice"), ("", "no queues")]:
        with pytest.raises(ConfigError, match=msg):
            parse_queues(bad)
    with pytest.raises(conveyor.ConveyorError, match="invalid queue name"):
        parse_queues("bad name")
    with pytest.raises(ConfigError, match="concurrency"):
        WorkerConfig(concurrency=0)
    with pytest.raises(ConfigError, match="heartbeat_every"):
        WorkerConfig(lease_for=1, heartbeat_every=2)


async def test_cancel_reaches_a_running_job(app: conveyor.App) -> None:
    started = asyncio.Event()
    stopped = asyncio.Event()

    @app.task
    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(1000)
        finally:
            stopped.set()

    h = await forever.enqueue()
    async with app.worker(lease_for=0.4, maintenance=False):
        await asyncio.wait_for(started.wait(), 5)
        assert await h.cancel() is JobState.RUNNING
        await asyncio.wait_for(stopped.wait(), 5)
        with pytest.raises(JobCancelled):
            await h.result(timeout=5)


async def test_worker_inside_an_asyncio_program(app: conveyor.App) -> None:
    @app.task
    async def double(n: int) -> int:
        return 2 * n

    async with app, app.worker(concurrency=4):
        handles = [await double.enqueue(i) for i in range(20)]
        results = [await h.result(timeout=5) for h in handles]
    assert results == [2 * i for i in range(20)]


async def test_graceful_stop_returns_unfinished_jobs(app: conveyor.App) -> None:
    started = asyncio.Event()

    @app.task
    async def slow() -> None:
        started.set()
        await asyncio.sleep(1000)

    @app.task
    async def quick() -> None:
        await asyncio.sleep(0.01)

    hs = await slow.enqueue()
    server = app.worker(concurrency=2, grace=0.2, maintenance=False)
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(server.run())
        await asyncio.wait_for(started.wait(), 5)
        hq = await quick.enqueue()
        await asyncio.sleep(0.1)
        server.stop()
    stats = run.result()
    assert stats.interrupted == 1
    job = await hs.get()
    assert job.state is JobState.QUEUED
    assert job.errors[-1].type == "Interrupted"
    assert await hq.status() in (JobState.COMPLETED, JobState.QUEUED)


async def test_bad_store_fails_at_start(tmp_path: Path) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path}/no/such/dir/jobs.db")
    with pytest.raises(conveyor.ConveyorError, match="cannot create the job database"):
        async with app.worker():
            pass
    await app.aclose()


async def test_worker_rides_out_a_store_outage(tmp_path: Path) -> None:
    from conveyor.backends.sqlite import SQLiteBackend
    from conveyor.testing import FaultyBackend

    faulty = FaultyBackend(SQLiteBackend(tmp_path / "jobs.db"))
    app = conveyor.App(backend=faulty)
    done: list[int] = []

    @app.task
    async def work(n: int) -> None:
        await asyncio.sleep(0.01)
        done.append(n)

    await work.enqueue_many([(i,) for i in range(50)])
    async with app.worker(concurrency=4, lease_for=2, maintenance=False):
        while len(done) < 5:
            await asyncio.sleep(0.01)
        faulty.fail("claim", "settle", "extend", "wait")
        await asyncio.sleep(0.5)
        failures = faulty.failures
        faulty.heal()
        for _ in range(500):
            if sum(q.completed for q in await app.inspector.stats()) == 50:
                break
            await asyncio.sleep(0.02)
    assert failures > 0
    counts = await app.inspector.stats()
    assert counts[0].completed == 50
    assert sorted(set(done)) == list(range(50))
    await app.aclose()


async def test_a_busy_worker_claims_a_few_slots_at_a_time(app: conveyor.App) -> None:
    """With jobs running, a worker waits (at most a few ms) for several slots to free before
    claiming again, instead of one claim per finished job."""

    @app.task
    async def work() -> None:
        await asyncio.sleep(random.uniform(0.005, 0.015))

    await work.enqueue_many([() for _ in range(400)])
    calls: list[int] = []
    backend = app.backend
    claim = backend.claim

    async def counting(*args: object, **kwargs: object) -> list[object]:
        leases = await claim(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(len(leases))
        return leases  # type: ignore[return-value]

    backend.claim = counting  # type: ignore[method-assign]
    stats = await drain(app, concurrency=32)
    assert stats.completed == 400
    claimed = [n for n in calls if n]
    assert len(claimed) < 400 / 4, claimed  # far fewer claims than jobs
    assert sum(claimed) == 400


async def test_grace_is_measured_on_the_injected_clock(fapp: conveyor.App) -> None:
    """The stop's grace runs on the app's clock: real time passing does not end it, the
    clock reaching it does (and the job goes back to the queue)."""
    started = asyncio.Event()

    @fapp.task
    async def hold() -> None:
        started.set()
        await asyncio.Event().wait()

    h = await hold.enqueue()
    server = fapp.worker(grace=30, maintenance=False)
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(server.run())
        await asyncio.wait_for(started.wait(), 5)
        server.stop()
        await asyncio.sleep(0.3)
        assert not run.done() and server.worker.running == 1  # still within grace
        advance(fapp, 29)
        await asyncio.sleep(0.05)
        assert not run.done()
        advance(fapp, 1)
        await asyncio.wait_for(asyncio.shield(run), 5)
    assert run.result().interrupted == 1
    job = await h.get()
    assert job.state is JobState.QUEUED
    assert job.errors[-1].type == "Interrupted"
