"""Failure hooks, middleware, `RetryPolicy(delay=fn)` and per-item contexts in batch tasks,
with real workers on memory:// and a SQLite file (the `app` fixture runs each on both)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

import conveyor
from conveyor.errors import ConfigError, StateError
from conveyor.handle import Progress
from conveyor.job import JobState
from conveyor.testing import drain

Calls = list[tuple[str, str, int, str]]


def no_wait(max_attempts: int) -> conveyor.RetryPolicy:
    return conveyor.RetryPolicy(max_attempts=max_attempts, base_delay=0, jitter=0)


async def run(app: conveyor.App, **config: object) -> conveyor.worker.WorkerStats:
    """`drain` with worker options (a hook timeout)."""
    config.setdefault("maintenance", False)
    server = app.worker(burst=True, poll=0.01, **config)  # type: ignore[arg-type]
    return await server.run()


# -- failure hooks -----------------------------------------------------------------------------


async def test_hooks_see_every_failed_attempt_and_the_dead_letter_in_order(
    app: conveyor.App,
) -> None:
    calls: Calls = []
    recorded: list[tuple[int, int, JobState]] = []
    seen: list[conveyor.JobInfo] = []
    outside: list[str] = []

    @app.task(retry=no_wait(3), queue="q")
    async def flaky(n: int) -> None:
        raise ConnectionError(f"down {conveyor.current_job().attempt}")

    @app.task
    async def fine() -> int:
        return 1

    @app.on_failure
    async def first(job: conveyor.JobInfo, error: BaseException) -> None:
        calls.append(("first", job.task, job.attempt, repr(error)))
        seen.append(job)
        (record,) = await app.backend.get([job.id])  # the store recorded the outcome already
        assert record is not None
        recorded.append((job.attempt, len(record.errors), record.state))

    @app.on_failure
    def second(job: conveyor.JobInfo, error: BaseException) -> None:  # sync: on a thread
        assert threading.current_thread() is not threading.main_thread()
        calls.append(("second", job.task, job.attempt, repr(error)))

    @app.on_dead_letter
    async def dead(job: conveyor.JobInfo, error: BaseException) -> None:
        calls.append(("dead", job.task, job.attempt, repr(error)))
        try:
            conveyor.current_job()
        except StateError:  # the attempt is over: a hook runs outside it
            outside.append(job.id)

    h = await flaky.enqueue(1)
    ok = await fine.enqueue()
    stats = await drain(app, ["default", "q"])
    assert stats.completed == 1 and stats.failed == 1
    assert await ok.result(timeout=1) == 1
    err = [repr(ConnectionError(f"down {n}")) for n in (1, 2, 3)]
    # Registration order within an attempt; the next attempt may start (and its hooks run)
    # while a slow hook of the last one still runs: the retry is already in the store.
    by_attempt = [[c for c in calls if c[2] == n] for n in (1, 2, 3)]
    assert by_attempt == [
        [("first", flaky.name, 1, err[0]), ("second", flaky.name, 1, err[0])],
        [("first", flaky.name, 2, err[1]), ("second", flaky.name, 2, err[1])],
        [
            ("first", flaky.name, 3, err[2]),
            ("second", flaky.name, 3, err[2]),
            ("dead", flaky.name, 3, err[2]),
        ],
    ]
    assert len(calls) == 7
    assert outside == [h.id]
    assert all(errors >= attempt for attempt, errors, _ in recorded)
    assert recorded[-1] == (3, 3, JobState.FAILED)
    last = seen[-1]
    assert (last.id, last.queue, last.max_attempts) == (h.id, "q", 3)
    assert [e.message for e in last.errors] == ["down 1", "down 2", "down 3"]
    assert "JobInfo" in repr(last)
    with pytest.raises(AttributeError):
        last.attempt = 9  # type: ignore[misc]


async def test_a_job_that_fails_for_good_at_once_reaches_the_dead_letter_hook(
    app: conveyor.App,
) -> None:
    dead: list[tuple[str, str]] = []

    @app.task(retry=no_wait(5))
    async def refuse() -> None:
        raise conveyor.Fail("bad input")

    @app.on_dead_letter
    def note(job: conveyor.JobInfo, error: BaseException) -> None:
        dead.append((job.id, str(error)))

    h = await refuse.enqueue()
    await drain(app)
    assert dead == [(h.id, "bad input")]
    assert (await h.get()).state is JobState.FAILED


async def test_hooks_that_raise_or_hang_are_logged_and_change_nothing(
    app: conveyor.App, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    after: list[int] = []

    @app.task(retry=no_wait(2))
    async def once(n: int) -> int:
        if conveyor.current_job().attempt == 1:
            raise ValueError("first try")
        return n

    @app.on_failure
    async def broken(job: conveyor.JobInfo, error: BaseException) -> None:
        raise RuntimeError("hook bug")

    @app.on_failure
    async def stuck(job: conveyor.JobInfo, error: BaseException) -> None:
        await asyncio.sleep(3600)

    @app.on_failure
    def stuck_in_a_thread(job: conveyor.JobInfo, error: BaseException) -> None:
        release.wait(10)

    @app.on_failure
    async def still_called(job: conveyor.JobInfo, error: BaseException) -> None:
        after.append(job.attempt)

    handles = [await once.enqueue(i) for i in range(3)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with caplog.at_level(logging.INFO, "conveyor.worker"):
            stats = await run(app, hook_timeout=0.2)
    finally:
        release.set()
    assert loop.time() - started < 3  # three jobs' hooks ran side by side, each bounded
    assert stats.completed == 3 and stats.retried == 3
    assert [await h.result(timeout=1) for h in handles] == [0, 1, 2]
    assert after == [1, 1, 1]
    text = "\n".join(r.getMessage() for r in caplog.records)
    for h in handles:
        assert f"job {h.id} ({once.name}): on_failure hook {__name__}." in text
    assert text.count(".broken raised") == 3
    assert text.count(".stuck did not finish within 0.2 s") == 3
    assert text.count(".stuck_in_a_thread did not finish within 0.2 s") == 3


async def test_a_stop_cuts_a_hanging_hook_short_and_interrupted_jobs_run_none(
    app: conveyor.App,
) -> None:
    hooked = asyncio.Event()
    calls: list[str] = []

    @app.task(retry=no_wait(1))
    async def boom() -> None:
        raise ValueError("x")

    @app.task
    async def slow() -> None:
        await asyncio.sleep(30)

    @app.on_failure
    async def hang(job: conveyor.JobInfo, error: BaseException) -> None:
        calls.append(job.task)
        hooked.set()
        await asyncio.sleep(30)

    b, s = await boom.enqueue(), await slow.enqueue()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(5):
        async with app.worker(grace=0.1, hook_timeout=30, poll=0.01, maintenance=False):
            await hooked.wait()
            started = loop.time()
    assert loop.time() - started < 2  # the grace, not the hook's 30 s
    assert calls == [boom.name]  # the interrupted job is retried, not reported as failed
    assert (await b.get()).state is JobState.FAILED
    record = await s.get()
    assert record.state is JobState.QUEUED and record.errors[-1].type == "Interrupted"


async def test_a_retry_that_starts_while_the_last_attempts_hooks_run_keeps_its_lease(
    app: conveyor.App,
) -> None:
    attempts: list[int] = []

    @app.task(retry=no_wait(3))
    async def twice() -> int:
        attempt = conveyor.current_job().attempt
        attempts.append(attempt)
        if attempt == 1:
            raise ValueError("once")
        await asyncio.sleep(0.6)  # outlives the hook and several leases
        return attempt

    @app.on_failure
    def slow_hook(job: conveyor.JobInfo, error: BaseException) -> None:
        threading.Event().wait(0.2)

    h = await twice.enqueue()
    server = app.worker(lease_for=0.2, heartbeat_every=0.04, sweep_every=0.05, poll=0.01)
    async with server:
        assert await h.result(timeout=5) == 2
        await asyncio.sleep(0.3)  # a rescued attempt 2 would have started attempt 3 by now
    assert attempts == [1, 2] and server.worker.stats.lost == 0  # attempt 2 kept its lease
    assert (await h.get()).attempts == 2


async def test_completed_jobs_never_reach_the_hooks(app: conveyor.App) -> None:
    calls: list[str] = []

    @app.task
    def work(n: int) -> int:
        return n

    app.on_failure(lambda job, error: calls.append(job.id))
    app.on_dead_letter(lambda job, error: calls.append(job.id))
    for i in range(20):
        await work.enqueue(i)
    assert (await drain(app)).completed == 20
    assert calls == []


# -- middleware --------------------------------------------------------------------------------


async def test_middleware_nests_in_registration_order_around_async_and_sync_handlers(
    app: conveyor.App,
) -> None:
    events: list[str] = []
    loop_thread = threading.get_ident()

    def tracer(tag: str):  # type: ignore[no-untyped-def]
        @contextlib.asynccontextmanager
        async def middleware(job: conveyor.JobInfo) -> AsyncIterator[None]:
            assert threading.get_ident() == loop_thread  # entered on the event loop
            assert conveyor.current_job() is job  # the handler's own context
            events.append(f"{tag}>{job.task}:{job.attempt}")
            try:
                yield
            except ValueError as exc:
                events.append(f"{tag} saw {exc}")
                raise
            finally:
                events.append(f"{tag}<")

        return middleware

    app.middleware(tracer("outer"))
    app.middleware(tracer("inner"))

    @app.task
    async def hello() -> str:
        events.append("hello")
        return "hi"

    @app.task(retry=no_wait(1))
    def sync_boom() -> None:
        assert threading.get_ident() != loop_thread
        events.append("boom")
        raise ValueError("no")

    h = await hello.enqueue()
    assert (await drain(app)).completed == 1
    assert await h.result(timeout=1) == "hi"
    assert events == ["outer>hello:1", "inner>hello:1", "hello", "inner<", "outer<"]
    events.clear()
    b = await sync_boom.enqueue()
    assert (await drain(app)).failed == 1
    assert events == [
        "outer>sync_boom:1", "inner>sync_boom:1", "boom",
        "inner saw no", "inner<", "outer saw no", "outer<",
    ]  # fmt: skip
    assert (await b.get()).errors[-1].message == "no"


async def test_a_middleware_that_raises_fails_the_attempt_under_the_retry_policy(
    app: conveyor.App,
) -> None:
    ran: list[int] = []

    @contextlib.asynccontextmanager
    async def flaky_session(job: conveyor.JobInfo) -> AsyncIterator[None]:
        if job.attempt == 1:
            raise ConnectionError("db is down")
        yield

    app.middleware(flaky_session)

    @app.task(retry=no_wait(3))
    async def write(n: int) -> int:
        ran.append(conveyor.current_job().attempt)
        return n

    h = await write.enqueue(7)
    await drain(app)
    assert await h.result(timeout=1) == 7
    assert ran == [2]  # the handler never ran in the attempt the middleware failed
    record = await h.get()
    assert record.attempts == 2
    assert [(e.type, e.message) for e in record.errors] == [("ConnectionError", "db is down")]


async def test_a_middleware_that_is_not_an_async_context_manager_is_named(
    app: conveyor.App,
) -> None:
    @contextlib.contextmanager
    def sync_cm(job: conveyor.JobInfo) -> Iterator[None]:
        yield

    app.middleware(sync_cm)  # type: ignore[type-var]

    @app.task(retry=no_wait(1))
    async def work() -> None: ...

    h = await work.enqueue()
    await drain(app)
    error = (await h.get()).errors[-1]
    assert "middleware" in error.message and "sync_cm" in error.message
    assert "@contextlib.asynccontextmanager" in error.message


async def test_middleware_runs_inside_the_job_timeout(app: conveyor.App) -> None:
    @contextlib.asynccontextmanager
    async def slow(job: conveyor.JobInfo) -> AsyncIterator[None]:
        await asyncio.sleep(30)
        yield

    app.middleware(slow)

    @app.task(retry=no_wait(1), timeout=0.05)
    async def work() -> None: ...

    h = await work.enqueue()
    await drain(app)
    assert (await h.get()).errors[-1].type == "Timeout"


# -- bad input ---------------------------------------------------------------------------------


def test_bad_hooks_and_middleware_are_config_errors() -> None:
    app = conveyor.App("memory://")
    with pytest.raises(ConfigError, match=r"app.on_failure takes a function of \(job, error\)"):
        app.on_failure(42)  # type: ignore[type-var]
    with pytest.raises(ConfigError, match=r"on_dead_letter hook .* must take \(job, error\)"):
        app.on_dead_letter(lambda job: None)  # type: ignore[type-var]
    with pytest.raises(ConfigError, match=r"app\.middleware takes a function"):
        app.middleware("x")  # type: ignore[type-var]

    async def forgot(job: conveyor.JobInfo) -> AsyncIterator[None]:
        yield

    with pytest.raises(ConfigError, match=r"forgot is a generator.*asynccontextmanager"):
        app.middleware(forgot)  # type: ignore[type-var]
    with pytest.raises(ConfigError, match=r"middleware .* must take \(job\)"):
        app.middleware(lambda: None)  # type: ignore[type-var]
    with pytest.raises(ConfigError, match="hook_timeout must be > 0"):
        app.worker(hook_timeout=0)
    assert not app.hooks.on_failure and not app.hooks.middleware  # nothing was registered


def test_retry_policy_delay_must_be_a_function() -> None:
    with pytest.raises(ConfigError, match=r"RetryPolicy.delay must be a function .* int 5"):
        conveyor.RetryPolicy(delay=5)  # type: ignore[arg-type]


# -- RetryPolicy(delay=fn) ---------------------------------------------------------------------


def test_a_delay_function_replaces_the_formula_capped_and_not_jittered() -> None:
    seen: list[tuple[int, str]] = []

    def delay(attempt: int, exc: BaseException) -> float:
        seen.append((attempt, str(exc)))
        return 2.0**attempt

    policy = conveyor.RetryPolicy(delay=delay, max_delay=20, jitter=1.0)
    rng = random.Random(1)
    assert [policy.backoff(n, ValueError(n), rng) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 16, 20]
    assert seen == [(1, "1"), (2, "2"), (3, "3"), (4, "4"), (5, "5")]
    formula = conveyor.RetryPolicy(delay=delay, base_delay=5, jitter=0)
    assert formula.backoff(1) == 5.0  # no error given (a Batcher's caller may not): the formula
    assert len(seen) == 5
    plain = conveyor.RetryPolicy(jitter=0)
    assert plain.backoff(3, ValueError()) == 4.0


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "3", True, None])
def test_a_delay_function_that_misbehaves_falls_back_to_the_formula(
    bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    def delay(attempt: int, exc: BaseException) -> float:
        return bad  # type: ignore[return-value]

    policy = conveyor.RetryPolicy(delay=delay, base_delay=3, jitter=0)
    with caplog.at_level(logging.ERROR, "conveyor.retry"):
        assert policy.backoff(1, ValueError()) == 3.0
    (record,) = caplog.records
    assert f"returned {bad!r} for attempt 1" in record.getMessage()
    assert "delay" in record.getMessage() and "exponential backoff" in record.getMessage()


def test_a_delay_function_that_raises_falls_back_to_the_formula(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def delay(attempt: int, exc: BaseException) -> float:
        raise KeyError("oops")

    policy = conveyor.RetryPolicy(delay=delay, base_delay=1, factor=3, jitter=0)
    with caplog.at_level(logging.ERROR, "conveyor.retry"):
        assert policy.backoff(2, ValueError()) == 3.0
    assert "raised KeyError('oops') for attempt 2" in caplog.records[0].getMessage()


async def test_a_worker_schedules_the_retry_by_the_delay_function() -> None:
    clock = conveyor.FakeClock()
    app = conveyor.App("memory://", clock=clock)
    got: list[tuple[int, str]] = []

    def by_error(attempt: int, exc: BaseException) -> float:
        got.append((attempt, type(exc).__name__))
        return 45.0 if isinstance(exc, TimeoutError) else 7.0 * attempt

    @app.task(retry=conveyor.RetryPolicy(max_attempts=3, delay=by_error))
    async def call() -> None:
        raise TimeoutError("slow upstream") if conveyor.current_job().attempt == 1 else OSError()

    h = await call.enqueue()
    await drain(app)
    record = await h.get()
    assert record.state is JobState.SCHEDULED and record.run_at == clock.now() + 45.0
    clock.advance(45.0)
    await drain(app)
    record = await h.get()
    assert record.run_at == clock.now() + 14.0
    assert got == [(1, "TimeoutError"), (2, "OSError")]
    await app.aclose()


# -- per-item contexts in batch tasks ----------------------------------------------------------


async def test_a_batch_handler_gets_one_context_per_item_in_item_order(
    app: conveyor.App,
) -> None:
    ids: dict[str, str] = {}
    errors: list[str] = []

    @app.task(batch=conveyor.Batch(max_size=4, max_wait=0.01))
    async def index(items: list[str]) -> list[int]:
        jobs = conveyor.current_jobs()
        assert len(jobs) == len(items)
        for job, item in zip(jobs, items, strict=True):
            ids[item] = job.id
            assert job.task == index.name and job.attempt == 1
            assert await job.save_checkpoint({"item": item})
            await job.progress(1.0, f"indexed {item}")
        try:
            conveyor.current_job()
        except StateError as exc:
            errors.append(str(exc))
        return [len(item) for item in items]

    words = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]
    handles = {w: await index.enqueue(w) for w in words}
    assert (await drain(app)).completed == len(words)
    for word, h in handles.items():
        assert ids[word] == h.id
        assert await h.result(timeout=1) == len(word)
        assert (await h.get()).checkpoint == f'{{"item":"{word}"}}'.encode()
        assert await h.progress() == Progress(1.0, f"indexed {word}")
    assert errors and all("use conveyor.current_jobs()" in e for e in errors)


async def test_a_sync_batch_handler_sees_its_items_and_failed_items_reach_the_hooks(
    app: conveyor.App,
) -> None:
    failed: list[tuple[str, int, str]] = []

    @app.task(batch=conveyor.Batch(max_size=3, max_wait=0.01), retry=no_wait(2))
    def square(items: list[int]) -> list[int | BaseException]:
        jobs = conveyor.current_jobs()
        assert jobs[0].save_checkpoint_sync(items)  # a thread: the sync path
        return [ValueError(f"odd {i}") if i % 2 else i * i for i in items]

    @app.on_failure
    async def note(job: conveyor.JobInfo, error: BaseException) -> None:
        failed.append((job.id, job.attempt, str(error)))

    handles = [await square.enqueue(i) for i in range(3)]
    await drain(app)
    assert await handles[0].result(timeout=1) == 0
    assert await handles[2].result(timeout=1) == 4
    assert (await handles[1].get()).state is JobState.FAILED
    assert failed == [(handles[1].id, 1, "odd 1"), (handles[1].id, 2, "odd 1")]


async def test_current_jobs_in_a_plain_handler_and_outside_a_job(app: conveyor.App) -> None:
    with pytest.raises(StateError, match="only inside a running job"):
        conveyor.current_jobs()

    @app.task
    async def one() -> bool:
        return conveyor.current_jobs() == [conveyor.current_job()]

    h = await one.enqueue()
    await drain(app)
    assert await h.result(timeout=1) is True
