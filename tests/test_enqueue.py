"""Enqueueing: typed arguments, options, unique keys, and bad input refused with nothing written."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

import conveyor
from conveyor.errors import (
    InvalidArguments,
    InvalidOption,
    PayloadTooLarge,
    SerializationError,
    UnknownTask,
)
from conveyor.job import JobState


async def _count(app: conveyor.App) -> int:
    return sum(q.total for q in await app.inspector.stats())


async def test_enqueue_stores_a_typed_job(app: conveyor.App) -> None:
    @app.task(queue="emails", retry=conveyor.RetryPolicy(max_attempts=5), timeout=30)
    async def send_email(to: str, subject: str) -> str:
        return f"{to}:{subject}"

    handle = await send_email.enqueue("a@b.c", subject="hi")
    job = await handle.get()
    assert job.task == "send_email"
    assert job.queue == "emails"
    assert job.max_attempts == 5
    assert job.timeout == 30
    assert job.state is JobState.QUEUED
    assert handle.created


async def test_calling_a_task_runs_it_here(app: conveyor.App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    async def mul(a: int, b: int) -> int:
        return a * b

    assert add(2, 3) == 5
    assert await mul(2, 3) == 6
    assert await _count(app) == 0


async def test_options(app: conveyor.App) -> None:
    @app.task
    async def t(x: int) -> None: ...

    now = app.clock.now()
    h = await t.options(delay=60, priority=5, meta={"who": "me"}, queue="low").enqueue(1)
    job = await h.get()
    assert job.state is JobState.SCHEDULED
    assert job.run_at == pytest.approx(now + 60, abs=1)
    assert (job.priority, job.queue, dict(job.meta)) == (5, "low", {"who": "me"})
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)  # before the deadline
    job2 = await (await t.options(at=at, deadline_in=10).enqueue(2)).get()
    assert job2.run_at == pytest.approx(at.timestamp())
    assert job2.deadline == pytest.approx(now + 10, abs=1)


async def test_duplicate_key_returns_the_existing_job(app: conveyor.App) -> None:
    @app.task
    async def welcome(user: int) -> None: ...

    first = await welcome.options(key="welcome:42").enqueue(42)
    second = await welcome.options(key="welcome:42").enqueue(42)
    assert first.created
    assert not second.created
    assert second.id == first.id
    assert await _count(app) == 1


async def test_enqueue_many_in_one_call(app: conveyor.App) -> None:
    @app.task
    async def send(to: str, subject: str) -> None: ...

    handles = await send.enqueue_many([("a@b.c", "hi"), {"to": "d@e.f", "subject": "yo"}])
    assert len(handles) == 2
    assert await _count(app) == 2


@dataclasses.dataclass
class Point:
    x: int
    y: int


async def test_typed_arguments_round_trip(app: conveyor.App) -> None:
    @app.task
    async def where(p: Point, when: dt.datetime) -> int:
        return p.x

    h = await where.enqueue(Point(1, 2), dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    job = await h.get()
    decoded = where.codec.decode(job.payload)
    assert decoded["p"] == Point(1, 2)
    assert decoded["when"] == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


# -- bad input: a specific error, nothing written ------------------------------------------


async def test_arguments_that_do_not_bind(app: conveyor.App) -> None:
    @app.task
    async def send(to: str, subject: str) -> None: ...

    with pytest.raises(InvalidArguments, match="subject"):
        await send.enqueue("a@b.c")  # type: ignore[call-arg]
    with pytest.raises(InvalidArguments, match="unexpected keyword argument 'cc'"):
        await send.enqueue("a", "b", cc="x")  # type: ignore[call-arg]
    with pytest.raises(InvalidArguments, match="Expected `str`, got `int`"):
        await send.enqueue(1, "b")  # type: ignore[arg-type]
    with pytest.raises(InvalidArguments, match="call #1"):
        await send.enqueue_many([("a", "b"), ("only-one",)])
    assert await _count(app) == 0


async def test_arguments_that_do_not_serialize(app: conveyor.App) -> None:
    @app.task
    async def store(blob: object) -> None: ...

    with pytest.raises(SerializationError, match="argument 'blob' \\(object\\)"):
        await store.enqueue(object())
    assert await _count(app) == 0


async def test_payload_over_the_maximum(tmp_path: object) -> None:
    app = conveyor.App("memory://", max_payload=1000)

    @app.task
    async def big(data: str) -> None: ...

    with pytest.raises(PayloadTooLarge, match="over the maximum of 1000"):
        await big.enqueue("x" * 2000)
    await big.enqueue("x" * 100)
    assert await _count(app) == 1


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"delay": -1}, "delay must be a finite number >= 0"),
        ({"priority": 101}, "priority must be within -100..100"),
        ({"priority": "high"}, "priority must be an int"),
        ({"queue": "bad queue!"}, "invalid queue name"),
        ({"queue": "x" * 65}, "invalid queue name"),
        ({"key": "spaces are bad"}, "invalid job key"),
        ({"key": "k" * 256}, "invalid job key"),
        ({"timeout": 0}, "timeout must be a finite number >= 0"),
        ({"max_attempts": 0}, "max_attempts must be an int >= 1"),
        ({"unique_for": 10}, "unique_for needs a key"),
        ({"delay": 1, "at": 5.0}, "either delay or at"),
        ({"at": dt.datetime(2030, 1, 1)}, "naive datetime"),
        ({"dealy": 5}, "unknown job option\\(s\\) 'dealy'"),
    ],
)
async def test_bad_options(app: conveyor.App, opts: dict[str, object], message: str) -> None:
    @app.task
    async def t() -> None: ...

    with pytest.raises(InvalidOption, match=message):
        await t.options(**opts).enqueue()  # type: ignore[arg-type]
    assert await _count(app) == 0


async def test_unknown_task_name_and_bad_task_name(app: conveyor.App) -> None:
    with pytest.raises(UnknownTask, match="no task named 'nope'"):
        app.registry.get("nope")
    with pytest.raises(InvalidOption, match="invalid task name"):
        app.task(name="has space")(lambda: None)


async def test_two_tasks_with_one_name_is_an_error(app: conveyor.App) -> None:
    @app.task
    async def clash() -> None: ...

    def other() -> None: ...

    with pytest.raises(conveyor.ConveyorError, match="already registered"):
        app.task(name="clash")(other)


def test_enqueue_sync_from_plain_code(tmp_path: object) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path}/s.db")

    @app.task
    def resize(path: str, width: int) -> None: ...

    handle = resize.enqueue_sync("a.png", 100)
    dup = resize.options(key="r:1").enqueue_sync("b.png", 1)
    assert handle.created and dup.created
    with pytest.raises(InvalidArguments):
        resize.enqueue_sync("a.png", "wide")  # type: ignore[arg-type]
    app.close()


async def test_enqueue_sync_inside_a_loop_is_refused(app: conveyor.App) -> None:
    @app.task
    def t() -> None: ...

    with pytest.raises(conveyor.ConveyorError, match="inside a running event loop"):
        t.enqueue_sync()


async def test_concurrent_enqueues_coalesce_inside_the_app(app: conveyor.App) -> None:
    import asyncio

    @app.task
    async def t(n: int) -> None: ...

    calls: list[int] = []
    original = app.backend.enqueue

    async def counting(jobs):  # type: ignore[no-untyped-def]
        calls.append(len(jobs))
        return await original(jobs)

    app.backend.enqueue = counting  # type: ignore[method-assign]
    async with app:
        await asyncio.gather(*(t.enqueue(i) for i in range(200)))
    assert sum(calls) == 200
    assert len(calls) < 50  # batched, not one call per job
