"""Paused queues on Redis: the flag survives a server restart, and the handoff never
delivers a paused queue's job to a waiting worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from conveyor.backends.base import ClaimRequest
from conveyor.backends.redis import RedisBackend
from conveyor.clock import FakeClock
from conveyor.job import JobState
from conveyor.testing.contract import make_job, stored
from tests.redis.servers import Server
from tests.redis.test_handoff import LEASE, register


async def test_a_pause_survives_a_server_restart(tmp_path: Path) -> None:
    server = Server(tmp_path / "redis", ["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    clock = FakeClock()
    try:
        job = make_job(clock, queue="emails")
        async with RedisBackend(server.url, clock=clock) as b:
            assert await b.pause("emails") is True
            await b.enqueue([job])
        server.stop()
        server.start()
        async with RedisBackend(server.url, clock=clock) as b:
            assert await b.paused() == ["emails"]
            assert await b.claim(ClaimRequest(["emails"], 10, LEASE, "w")) == []
            assert await b.resume("emails") is True
            (lease,) = await b.claim(ClaimRequest(["emails"], 10, LEASE, "w"))
            assert lease.id == job.id
    finally:
        server.stop()


async def test_a_waiter_on_a_paused_queue_is_handed_nothing(
    redis_url: str, raw: aioredis.Redis
) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        await b.pause("emails")
        await register(b, "ghost", ["emails", "default"])
        held, free = make_job(clock, queue="emails"), make_job(clock, queue="default")
        assert await stored(b, [held]) == [True]
        assert await raw.llen(b.keys.inbox("ghost")) == 0  # not handed, not even leased
        assert await raw.llen(b.keys.q("emails", "wake")) == 0  # and nobody woken for it
        (job,) = await b.get([held.id])
        assert job is not None and job.state is JobState.QUEUED
        # The same waiter is still handed a job of a queue that runs.
        await b.enqueue([free])
        assert await raw.llen(b.keys.inbox("ghost")) == 1
        (lease,) = await b.claim(ClaimRequest(["emails", "default"], 10, LEASE, "ghost"))
        assert lease.id == free.id


async def test_wait_for_lease_on_a_paused_queue_waits_until_the_resume(redis_url: str) -> None:
    clock = FakeClock()
    async with (
        RedisBackend(redis_url, clock=clock) as waiter,
        RedisBackend(redis_url, clock=clock) as admin,
    ):
        await admin.pause("emails")
        job = make_job(clock, queue="emails")
        await admin.enqueue([job])
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await waiter.wait_for_lease(["emails"], 0.3, "w1", LEASE) == []
        assert loop.time() - began >= 0.2  # idled: the queued job is not "ready now"
        waiting = asyncio.ensure_future(waiter.wait_for_lease(["emails"], 5.0, "w1", LEASE))
        await asyncio.sleep(0.05)
        await admin.resume("emails")
        async with asyncio.timeout(2):
            assert await waiting == []  # woken (by the resume's wake-up): now claim
        (lease,) = await waiter.claim(ClaimRequest(["emails"], 10, LEASE, "w1"))
        assert lease.id == job.id
