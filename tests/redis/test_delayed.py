"""Delayed and handed-over jobs on Redis: once run, each is listed once, in its last state.

The regression: a job moved into ``state:queued`` and then leased in the same script call (a
due job promoted by the claim that takes it, or a new job an enqueue hands to a waiting
worker) kept its ``state:queued`` member, because the deferred index writes sent every
removal before every addition. It was then listed twice by `query` (``conveyor inspect ls``)
and counted as queued forever (``inspect stats``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

import conveyor
from conveyor.backends.base import ClaimRequest, JobFilter
from conveyor.backends.redis import RedisBackend
from conveyor.clock import FakeClock
from conveyor.job import Completed, JobState
from conveyor.testing import drain
from conveyor.testing.contract import make_job
from tests.redis.indexes import index_problems


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    try:
        yield c
    finally:
        c.close()


async def test_delayed_jobs_that_ran_are_listed_once_and_not_counted_queued(
    redis_url: str, client: redis.Redis
) -> None:
    """The report: three jobs with ``delay=0.5``, a worker, then ``inspect ls`` and
    ``inspect stats``: 3 jobs, all completed (it said 6, ``queued=3, completed=3``)."""
    clock = FakeClock()
    app = conveyor.App(redis_url, clock=clock)

    @app.task
    async def noop() -> None:
        return None

    try:
        handles = [await noop.options(delay=0.5).enqueue() for _ in range(3)]
        clock.advance(1.0)
        stats = await drain(app)  # the worker's claim promotes the due jobs and takes them
        assert stats.completed == 3
        listed = [job async for job in app.inspector.iter()]
        assert sorted(j.id for j in listed) == sorted(h.id for h in handles)
        assert {j.state for j in listed} == {JobState.COMPLETED}
        assert await app.backend.counts() == {"default": {JobState.COMPLETED: 3}}
        assert index_problems(client) == []
    finally:
        await app.aclose()


async def test_a_due_job_promoted_by_its_claim_is_indexed_as_running_only(
    redis_url: str, client: redis.Redis
) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        jobs = [make_job(clock, run_at=clock.now() + 0.5) for _ in range(3)]
        assert await b.enqueue(jobs) == [j.id for j in jobs]
        assert await b.counts() == {"default": {JobState.SCHEDULED: 3}}
        clock.advance(1.0)
        leases = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert len(leases) == 3
        assert await b.counts() == {"default": {JobState.RUNNING: 3}}
        assert index_problems(client) == []
        assert await b.query(JobFilter(state=JobState.QUEUED)) == await b.query(
            JobFilter(state=JobState.COMPLETED)
        )  # both empty
        assert await b.settle([(lease, Completed(None)) for lease in leases]) == [True] * 3
        page = await b.query(JobFilter())
        assert sorted(j.id for j in page.jobs) == sorted(j.id for j in jobs)
        assert await b.counts() == {"default": {JobState.COMPLETED: 3}}
        assert index_problems(client) == []


async def test_a_job_handed_to_a_waiting_worker_is_indexed_as_running_only(
    redis_url: str, client: redis.Redis
) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        waiting = asyncio.create_task(b.wait_for_lease(["default"], 5.0, "w1", 30.0))
        await asyncio.sleep(0.05)  # registered and blocked
        job = make_job(clock)
        assert await b.enqueue([job]) == [job.id]
        async with asyncio.timeout(2):
            (lease,) = await waiting
        assert lease.id == job.id
        assert await b.counts() == {"default": {JobState.RUNNING: 1}}
        assert index_problems(client) == []
        assert await b.settle([(lease, Completed(None))]) == [True]
        assert [j.id for j in (await b.query(JobFilter())).jobs] == [job.id]
        assert await b.counts() == {"default": {JobState.COMPLETED: 1}}
        assert index_problems(client) == []
