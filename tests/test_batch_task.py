"""Durable batch tasks: many jobs per handler call, each with its own outcome."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

import conveyor
from conveyor.errors import ConfigError
from conveyor.job import Job, JobState, new_job_id
from conveyor.testing import drain


@dataclasses.dataclass
class Doc:
    id: int
    text: str


async def test_items_are_batched_and_results_are_per_job(app: conveyor.App) -> None:
    calls: list[int] = []

    @app.task(batch=conveyor.Batch(max_size=10, max_wait=0.01))
    async def index(docs: list[Doc]) -> list[str]:
        calls.append(len(docs))
        return [f"indexed {d.id}" for d in docs]

    handles = [await index.enqueue(Doc(i, "x")) for i in range(25)]
    stats = await drain(app, concurrency=32)
    assert stats.completed == 25
    assert max(calls) <= 10
    assert len(calls) < 25  # several items per call
    assert [await h.result(timeout=1) for h in handles] == [f"indexed {i}" for i in range(25)]


async def test_one_bad_item_retries_alone(app: conveyor.App) -> None:
    seen: list[list[int]] = []

    @app.task(
        batch=conveyor.Batch(max_size=5, max_wait=0.01),
        retry=conveyor.RetryPolicy(max_attempts=2, base_delay=0),
    )
    async def charge(amounts: list[int]) -> list[int | Exception]:
        seen.append(list(amounts))
        return [ValueError(f"bad {a}") if a < 0 else a * 2 for a in amounts]

    good = [await charge.enqueue(a) for a in (1, 2, 3)]
    bad = await charge.enqueue(-1)
    await drain(app, concurrency=16)
    await drain(app, concurrency=16)  # the retry
    assert [await h.result(timeout=1) for h in good] == [2, 4, 6]
    job = await bad.get()
    assert job.state is JobState.FAILED
    assert job.attempts == 2
    assert [e.message for e in job.errors] == ["bad -1", "bad -1"]
    assert sum(1 for batch in seen for a in batch if a == 1) == 1  # good items ran once


async def test_wrong_number_of_results_fails_the_batch_clearly(app: conveyor.App) -> None:
    @app.task(batch=conveyor.Batch(max_size=4), retry=conveyor.RetryPolicy(max_attempts=1))
    async def lossy(items: list[int]) -> list[int]:
        return items[:-1]

    hs = [await lossy.enqueue(i) for i in range(3)]
    await drain(app, concurrency=8)
    for h in hs:
        job = await h.get()
        assert job.state is JobState.FAILED
        assert "exactly one result" in job.errors[-1].message


async def test_poison_item_fails_alone_and_sync_handlers_work(app: conveyor.App) -> None:
    @app.task(batch=conveyor.Batch(max_size=8, max_wait=0.01))
    def double(items: list[int]) -> list[int]:
        return [2 * i for i in items]

    hs = [await double.enqueue(i) for i in range(3)]
    now = app.clock.now()
    poison = Job(
        id=new_job_id(now), task="double", payload=b'{"item":"NaN?"}', run_at=now, enqueued_at=now
    )
    await app.backend.enqueue([poison])
    await drain(app, concurrency=8)
    assert [await h.result(timeout=1) for h in hs] == [0, 2, 4]
    (bad,) = await app.backend.get([poison.id])
    assert bad is not None
    assert bad.errors[-1].type == "PoisonPayload"


async def test_task_signals_per_item(app: conveyor.App) -> None:
    @app.task(batch=conveyor.Batch(max_size=8, max_wait=0.01))
    async def route(items: list[str]) -> list[object]:
        return [
            conveyor.Cancel("skip") if i == "skip" else conveyor.Fail("no") if i == "no" else i
            for i in items
        ]

    ok, skip, no = [await route.enqueue(x) for x in ("ok", "skip", "no")]
    await drain(app, concurrency=8)
    assert await ok.result(timeout=1) == "ok"
    assert await skip.status() is JobState.CANCELLED
    assert await no.status() is JobState.FAILED


async def test_calling_a_batch_task_runs_it_here(app: conveyor.App) -> None:
    @app.task(batch=conveyor.Batch())
    async def upper(items: list[str]) -> list[str]:
        return [i.upper() for i in items]

    assert await upper(["a", "b"]) == ["A", "B"]  # type: ignore[misc]


def test_bad_batch_definitions() -> None:
    app = conveyor.App("memory://")
    with pytest.raises(ConfigError, match="max_size"):
        conveyor.Batch(max_size=0)
    with pytest.raises(ConfigError, match="max_wait"):
        conveyor.Batch(max_wait=-1)
    with pytest.raises(ConfigError, match="exactly one positional parameter"):
        app.task(batch=conveyor.Batch())(lambda a, b: [a, b])  # type: ignore[arg-type]


async def test_batch_enqueue_validates_item_type(app: conveyor.App) -> None:
    @app.task(batch=conveyor.Batch())
    async def nums(items: list[int]) -> list[int]:
        return items

    with pytest.raises(conveyor.ConveyorError, match="Expected `int`"):
        await nums.enqueue("x")  # type: ignore[arg-type]
    assert asyncio.iscoroutinefunction(nums.handler)
