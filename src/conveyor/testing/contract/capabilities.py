"""The contract of each optional capability (`conveyor.capabilities`), one mixin each.

A store that provides a capability adds its mixin to its test class; the stores we ship
provide all of them, so `BackendContract` includes every mixin.
"""

from __future__ import annotations

import asyncio

import pytest

from conveyor.backends.base import Backend, ClaimRequest
from conveyor.capabilities import Counters, Locks, Presence, QueueControl, WorkerInfo, require
from conveyor.clock import FakeClock
from conveyor.errors import InvalidOption
from conveyor.job import Completed, JobState
from conveyor.testing.contract.core import make_job, stored

__all__ = ["CountersContract", "LocksContract", "PresenceContract", "QueueControlContract"]


class CountersContract:
    """`Counters`: fixed windows that start at the first increment."""

    async def test_counters_count_within_a_window(self, backend: object, clock: FakeClock) -> None:
        counters = require(backend, Counters, "the counters contract")
        assert await counters.incr("c", 1, 10) == 1
        assert await counters.incr("c", 2, 10) == 3
        assert await counters.incr("other", 5, 10) == 5
        clock.advance(9.9)
        assert await counters.incr("c", 1, 10) == 4
        clock.advance(0.2)  # the window that began at the first increment is over
        assert await counters.incr("c", 1, 10) == 1
        assert await counters.incr("c", -1, 10) == 0  # giving units back

    async def test_counters_are_atomic_under_concurrency(
        self, backend: object, clock: FakeClock
    ) -> None:
        counters = require(backend, Counters, "the counters contract")
        seen = await asyncio.gather(*(counters.incr("race", 1, 60) for _ in range(50)))
        assert sorted(seen) == list(range(1, 51))


class LocksContract:
    """`Locks`: one holder at a time, a ttl, and fencing tokens that only grow."""

    async def test_a_lock_has_one_holder_until_released(
        self, backend: object, clock: FakeClock
    ) -> None:
        locks = require(backend, Locks, "the locks contract")
        first = await locks.acquire_lock("report", "a", 30)
        assert first is not None
        assert await locks.acquire_lock("report", "b", 30) is None
        assert await locks.acquire_lock("other", "b", 30) is not None
        held = await locks.locks()
        assert [(x.name, x.owner, x.token) for x in held] == [
            ("other", "b", held[0].token),
            ("report", "a", first),
        ]
        assert held[1].expires_at == clock.now() + 30
        assert await locks.release_lock("report", first + 1) is False  # not the holder
        assert await locks.release_lock("report", first) is True
        assert await locks.release_lock("report", first) is False  # already free
        second = await locks.acquire_lock("report", "b", 30)
        assert second is not None and second > first  # tokens grow across holders

    async def test_a_lock_expires_and_its_old_token_is_fenced(
        self, backend: object, clock: FakeClock
    ) -> None:
        locks = require(backend, Locks, "the locks contract")
        token = await locks.acquire_lock("job", "a", 10)
        assert token is not None
        clock.advance(5)
        assert await locks.extend_lock("job", token, 10) is True  # now until +15
        clock.advance(9)
        assert await locks.acquire_lock("job", "b", 10) is None  # still held
        clock.advance(1.5)
        assert await locks.locks() == []  # expired: not listed
        newer = await locks.acquire_lock("job", "b", 10)
        assert newer is not None and newer > token
        assert await locks.extend_lock("job", token, 10) is False  # the old holder is fenced
        assert await locks.release_lock("job", token) is False
        assert [x.owner for x in await locks.locks()] == ["b"]

    async def test_racing_acquires_have_one_winner(self, backend: object, clock: FakeClock) -> None:
        locks = require(backend, Locks, "the locks contract")
        tokens = await asyncio.gather(*(locks.acquire_lock("x", f"w{i}", 30) for i in range(20)))
        assert len([t for t in tokens if t is not None]) == 1

    async def test_wait_lock_wakes_on_release_and_at_the_holders_expiry(
        self, backend: object, clock: FakeClock
    ) -> None:
        locks = require(backend, Locks, "the locks contract")
        async with asyncio.timeout(5):
            await locks.wait_lock("free", 30)  # nobody holds it: at once
            token = await locks.acquire_lock("w", "a", 30)
            assert token is not None
            await locks.wait_lock("w", 0.05)  # held: the timeout ends the wait
            async with asyncio.TaskGroup() as tg:
                waiter = tg.create_task(locks.wait_lock("w", 30))
                await asyncio.sleep(0.05)
                assert not waiter.done()
                assert await locks.release_lock("w", token) is True  # wakes the waiter
            token = await locks.acquire_lock("w", "b", 0.2)
            assert token is not None
            async with asyncio.TaskGroup() as tg:
                waiter = tg.create_task(locks.wait_lock("w", 30))
                await asyncio.sleep(0.05)
                assert not waiter.done()
                clock.advance(0.3)  # the holder's ttl passes (a crashed holder): wakes too
            assert await locks.acquire_lock("w", "c", 30) is not None


class PresenceContract:
    """`Presence`: beats that expire, replaced per worker, gone on leave."""

    async def test_beats_list_live_workers(self, backend: object, clock: FakeClock) -> None:
        presence = require(backend, Presence, "the presence contract")
        a = WorkerInfo(id="host:1", host="host", pid=1, queues=("default",), concurrency=8)
        await presence.beat(a, ttl=10)
        await presence.beat(WorkerInfo(id="host:2", host="host", pid=2), ttl=30)
        seen = await presence.workers()
        assert [w.id for w in seen] == ["host:1", "host:2"]
        assert seen[0].queues == ("default",) and seen[0].concurrency == 8
        assert seen[0].seen_at == clock.now()
        clock.advance(5)
        await presence.beat(WorkerInfo(id="host:1", host="host", pid=1, running=3), ttl=10)
        (first, _) = await presence.workers()
        assert first.running == 3 and first.seen_at == clock.now()  # replaced, not added
        clock.advance(20)  # host:1's last beat expired; host:2's has 5 s left
        assert [w.id for w in await presence.workers()] == ["host:2"]
        await presence.leave("host:2")
        assert await presence.workers() == []

    async def test_a_beat_carries_running_jobs_and_reports(
        self, backend: object, clock: FakeClock
    ) -> None:
        presence = require(backend, Presence, "the presence contract")
        info = WorkerInfo(
            id="h:9", jobs=("a" * 32, "b" * 32), stuck=("job x past its 3 s timeout",),
            metrics_url="http://127.0.0.1:9100", version="0.1.0", started_at=clock.now(),
        )  # fmt: skip
        await presence.beat(info, ttl=10)
        (got,) = await presence.workers()
        assert (got.jobs, got.stuck, got.metrics_url) == (info.jobs, info.stuck, info.metrics_url)
        assert (got.version, got.started_at) == ("0.1.0", clock.now())


class QueueControlContract:
    """`QueueControl`: a paused queue gives its jobs to no claim; the others still do."""

    async def test_a_paused_queue_is_skipped_by_claims(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        control = require(backend, QueueControl, "the queue control contract")
        assert await control.pause("emails") is True
        assert await control.pause("emails") is False  # paused already
        assert await control.paused() == ["emails"]
        held = make_job(clock, queue="emails", priority=9)
        other = make_job(clock, queue="default")
        assert await stored(backend, [held, other]) == [True, True]  # enqueue still works
        # The paused queue comes first and holds better jobs: no head-of-line blocking.
        leases = await backend.claim(ClaimRequest(["emails", "default"], 10, 30.0, "w1"))
        assert [x.id for x in leases] == [other.id]
        assert await backend.claim(ClaimRequest(["emails"], 10, 30.0, "w1")) == []
        (job,) = await backend.get([held.id])
        assert job is not None and job.state is JobState.QUEUED
        assert await control.resume("emails") is True
        assert await control.resume("emails") is False
        assert await control.paused() == []
        (lease,) = await backend.claim(ClaimRequest(["emails", "default"], 10, 30.0, "w1"))
        assert lease.id == held.id and lease.job.attempts == 1

    async def test_running_jobs_of_a_paused_queue_finish(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        control = require(backend, QueueControl, "the queue control contract")
        first, second = make_job(clock, queue="emails"), make_job(clock, queue="emails")
        await backend.enqueue([first, second])
        (lease,) = await backend.claim(ClaimRequest(["emails"], 1, 30.0, "w1"))
        await control.pause("emails")
        (extended,) = await backend.extend([lease], 30.0)
        assert extended is not None
        assert await backend.settle([(lease, Completed(None))]) == [True]
        # A job due later, and one given back, wait for the resume too.
        late = make_job(clock, queue="emails", delay=5)
        await backend.enqueue([late])
        clock.advance(10)
        assert await backend.claim(ClaimRequest(["emails"], 10, 30.0, "w1")) == []
        await control.resume("emails")
        got = await backend.claim(ClaimRequest(["emails"], 10, 30.0, "w1"))
        assert sorted(x.id for x in got) == sorted([second.id, late.id])

    async def test_pausing_one_queue_leaves_other_queues_and_prefixes_alone(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        control = require(backend, QueueControl, "the queue control contract")
        await control.pause("a")
        await control.pause("b")
        await control.resume("a")
        assert await control.paused() == ["b"]
        job = make_job(clock, queue="a")
        await backend.enqueue([job])
        assert [x.id for x in await backend.claim(ClaimRequest(["b", "a"], 5, 30.0, "w"))] == [
            job.id
        ]

    async def test_a_wait_on_paused_queues_idles_and_a_resume_wakes_it(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        control = require(backend, QueueControl, "the queue control contract")
        await control.pause("emails")
        await backend.enqueue([make_job(clock, queue="emails")])
        loop = asyncio.get_running_loop()
        began = loop.time()
        await backend.wait(["emails"], 0.2)  # ready work, but paused: not "ready now"
        assert loop.time() - began >= 0.1
        waiting = asyncio.ensure_future(backend.wait(["emails"], 5.0))
        await asyncio.sleep(0.05)
        await control.resume("emails")
        async with asyncio.timeout(2):
            await waiting
        assert len(await backend.claim(ClaimRequest(["emails"], 5, 30.0, "w"))) == 1

    async def test_bad_queue_names_are_refused_and_nothing_is_paused(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        control = require(backend, QueueControl, "the queue control contract")
        for bad in ("", "has space", "a/b", "x" * 65, "-lead", "q\n"):
            with pytest.raises(InvalidOption, match="invalid queue name"):
                await control.pause(bad)
            with pytest.raises(InvalidOption, match="invalid queue name"):
                await control.resume(bad)
        assert await control.paused() == []
