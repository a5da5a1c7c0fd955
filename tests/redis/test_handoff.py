"""The direct handoff: an enqueue leases its job to a worker waiting for work.

A waiting worker registers in its queues' ``waiters`` sets and blocks on its inbox. These tests
drive the scripts directly (a "ghost" worker that registers and never reads its inbox stands
for one that died or stopped at the wrong moment) and through `wait_for_lease`.
"""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis

from conveyor.backends.base import ClaimRequest
from conveyor.backends.redis import RedisBackend
from conveyor.clock import FakeClock
from conveyor.job import Completed, JobState
from conveyor.testing.contract import make_job, stored

LEASE = 30.0


async def register(b: RedisBackend, worker: str, queues: list[str], stay: float = 5.0) -> None:
    """What `wait_for_lease` does before it blocks: the WAIT script, registering `worker`."""
    conn = await b._conn()
    due = await conn.scripts["wait"](
        [b.keys.route(queues[0])], [*b._args(), worker, repr(LEASE), repr(stay), *queues]
    )
    assert due is None  # nothing ready, nothing scheduled: registered


async def test_an_enqueue_hands_its_job_to_a_waiting_worker(redis_url: str) -> None:
    clock = FakeClock()
    async with (
        RedisBackend(redis_url, clock=clock) as waiter,
        RedisBackend(redis_url, clock=clock) as producer,
    ):
        task = asyncio.create_task(waiter.wait_for_lease(["default"], 5.0, "w1", LEASE))
        await asyncio.sleep(0.05)  # registered and blocked
        job = make_job(clock)
        assert await stored(producer, [job]) == [True]
        async with asyncio.timeout(2):
            (lease,) = await task
        assert lease.id == job.id and lease.job.state is JobState.RUNNING
        assert lease.job.attempts == 1 and lease.job.worker == "w1"
        assert lease.expires_at == clock.now() + LEASE
        (snapshot,) = await producer.get([job.id])
        assert snapshot is not None and snapshot.state is JobState.RUNNING
        assert await waiter.settle([(lease, Completed(None))]) == [True]
        # The registration ended with the handoff: the next job is queued for anyone.
        second = make_job(clock)
        await producer.enqueue([second])
        assert [x.id for x in await producer.claim(ClaimRequest(["default"], 10, LEASE, "w2"))] == [
            second.id
        ]


async def test_handoff_takes_the_best_ready_job_and_one_per_waiter(redis_url: str) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        await register(b, "ghost-a", ["default"])
        await register(b, "ghost-b", ["default"])
        low, high, third = (make_job(clock, priority=p) for p in (0, 5, 0))
        await b.enqueue([low, high, third])
        leases = await b.claim(
            ClaimRequest(["default"], 1, LEASE, "ghost-a")
        )  # drains ghost-a's inbox
        assert [x.id for x in leases] == [high.id]  # handed first: the best of the batch
        b_leases = await b.claim(ClaimRequest(["default"], 1, LEASE, "ghost-b"))
        assert [x.id for x in b_leases] == [low.id]
        (left,) = await b.claim(ClaimRequest(["default"], 10, LEASE, "w"))
        assert left.id == third.id


async def test_unwait_puts_a_handed_job_back_without_using_an_attempt(
    redis_url: str, raw: aioredis.Redis
) -> None:
    """A worker that stops waiting gives back what it was handed meanwhile."""
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        await register(b, "ghost", ["default"])
        job = make_job(clock)
        await b.enqueue([job])
        (handed,) = await b.get([job.id])
        assert handed is not None and handed.state is JobState.RUNNING
        conn = await b._conn()
        assert await conn.scripts["unwait"]([b.keys.route("default")], [*b._args(), "ghost"]) == 1
        (back,) = await b.get([job.id])
        assert back is not None and back.state is JobState.QUEUED and back.attempts == 0
        assert back.worker is None and back.started_at is None
        assert await raw.llen(b.keys.inbox("ghost")) == 0
        (lease,) = await b.claim(ClaimRequest(["default"], 10, LEASE, "w2"))
        assert lease.id == job.id and lease.job.attempts == 1 and lease.token == 2
        # The ghost's stale lease (token 1) can no longer touch the job.
        counts = await b.counts("default")
        assert counts["default"] == {JobState.RUNNING: 1}


async def test_a_job_handed_to_a_dead_waiter_is_rescued_when_its_lease_expires(
    redis_url: str,
) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        await register(b, "dead", ["default"])
        job = make_job(clock)
        await b.enqueue([job])
        clock.advance(LEASE + 1)
        assert await b.rescue() == 1
        (lease,) = await b.claim(ClaimRequest(["default"], 10, LEASE, "alive"))
        assert lease.id == job.id
        assert lease.job.errors and lease.job.errors[-1].type == "LeaseExpired"


async def test_a_registration_ends_at_its_deadline(redis_url: str) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        await register(b, "gone", ["default"], stay=0.5)
        clock.advance(1.0)
        job = make_job(clock)
        await b.enqueue([job])
        (stored,) = await b.get([job.id])
        assert stored is not None and stored.state is JobState.QUEUED  # not handed


async def test_a_waiter_on_several_queues_is_handed_one_job_and_leaves_every_queue(
    redis_url: str, raw: aioredis.Redis
) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        await register(b, "ghost", ["a", "b"])
        first = make_job(clock, queue="b")
        await b.enqueue([first])
        assert await raw.zcard(b.keys.q("a", "waiters")) == 0
        second = make_job(clock, queue="a")
        await b.enqueue([second])
        (s,) = await b.get([second.id])
        assert s is not None and s.state is JobState.QUEUED
        leases = await b.claim(ClaimRequest(["a", "b"], 10, LEASE, "ghost"))
        assert [x.id for x in leases] == [first.id, second.id]  # the handed one first


async def test_a_cancelled_wait_hands_nothing_later(redis_url: str) -> None:
    """Cancelling `wait_for_lease` (the worker stops) ends the registration at once."""
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        task = asyncio.create_task(b.wait_for_lease(["default"], 5.0, "stopping", LEASE))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        job = make_job(clock)
        await b.enqueue([job])
        (stored,) = await b.get([job.id])
        assert stored is not None and stored.state is JobState.QUEUED


async def test_wait_for_lease_returns_at_once_when_work_is_ready(redis_url: str) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        await b.enqueue([make_job(clock)])
        async with asyncio.timeout(1):
            assert await b.wait_for_lease(["default"], 5.0, "w", LEASE) == []
        assert len(await b.claim(ClaimRequest(["default"], 10, LEASE, "w"))) == 1


async def test_a_wait_cancelled_as_its_job_arrives_leaves_no_job_stranded(
    redis_url: str, raw: aioredis.Redis
) -> None:
    """Cancel waits at moments around a handoff's arrival. Whatever the timing, the job was
    either returned to the waiter (running, its lease live) or is queued again with no
    attempt used: never leased to a waiter that no longer listens."""
    clock = FakeClock()
    rng = random.Random(7)
    async with (
        RedisBackend(redis_url, clock=clock) as b,
        RedisBackend(redis_url, clock=clock) as producer,
    ):
        waiters = b.keys.q("default", "waiters")
        outcomes = {"returned": 0, "given back": 0}
        for _ in range(40):
            task = asyncio.create_task(b.wait_for_lease(["default"], 5.0, "w", LEASE))
            while await raw.zscore(waiters, "w") is None:
                await asyncio.sleep(0.001)
            job = make_job(clock)
            enqueue = asyncio.create_task(producer.enqueue([job]))
            await asyncio.sleep(rng.uniform(0, 0.002))
            task.cancel()
            (result,) = await asyncio.gather(task, return_exceptions=True)
            await enqueue
            (stored,) = await producer.get([job.id])
            assert stored is not None
            if isinstance(result, list) and result:
                assert stored.state is JobState.RUNNING and result[0].id == job.id
                assert await b.settle([(result[0], Completed(None))]) == [True]
                outcomes["returned"] += 1
            else:
                assert stored.state is JobState.QUEUED and stored.attempts == 0, stored
                (lease,) = await b.claim(ClaimRequest(["default"], 1, LEASE, "other"))
                assert await b.settle([(lease, Completed(None))]) == [True]
                outcomes["given back"] += 1
        assert await raw.llen(b.keys.inbox("w")) == 0
        assert outcomes["given back"] > 0, outcomes
