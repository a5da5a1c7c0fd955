"""Job dependencies on Redis beyond the contract: the store's own parent check (purge race),
chunked calls, queues with ':' in their names, edges that leave nothing behind, wake-ups,
and a release that survives a redis-server restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from conveyor.backends.base import ClaimRequest
from conveyor.backends.redis import RedisBackend
from conveyor.backends.redis.backend import _CHUNK
from conveyor.backends.redis.codec import enqueue_args
from conveyor.backends.redis.scripts import BY_HAND, ENQUEUE_FIELDS
from conveyor.clock import FakeClock
from conveyor.errors import DependencyError
from conveyor.job import Cancelled, Completed, Failed, JobState
from conveyor.testing.contract import err, make_job, stored

from .indexes import index_problems
from .servers import Server

W = "w1"


def _clean(url: str) -> list[str]:
    """What a store under the default prefix has wrong or left behind: index problems, and
    children sets or flags of parents that ended."""
    client = redis.Redis.from_url(url)
    try:
        problems = index_problems(client)
        for key in client.scan_iter(match="{conveyor}:q:*:children:*", count=1000):
            parent = key.decode().rpartition(":children:")[2]
            state = client.hget(f"{{conveyor}}:job:{parent}", "state")
            if state is None or state.decode() in ("completed", "failed", "cancelled"):
                problems.append(f"{key.decode()} outlived its parent ({state!r})")
        for key in client.scan_iter(match="{conveyor}:job:*", count=1000):
            state, flag = client.hmget(key, "state", "children")
            if flag is not None and state in (b"completed", b"failed", b"cancelled"):
                problems.append(f"{key.decode()} ended {state!r} with its children flag")
        return problems
    finally:
        client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def backend(redis_url: str, clock: FakeClock) -> AsyncIterator[RedisBackend]:
    async with RedisBackend(redis_url, clock=clock) as b:
        yield b


async def _run(backend: RedisBackend, queue: str = "default") -> list[str]:
    leases = await backend.claim(ClaimRequest([queue], 1000, 30.0, W))
    assert all(await backend.settle([(lease, Completed(None)) for lease in leases]))
    return [lease.id for lease in leases]


async def test_a_parent_purged_after_the_base_check_writes_nothing(
    backend: RedisBackend, clock: FakeClock, redis_url: str
) -> None:
    """The base checks stored parents with one `get`; a purge can land before the write.
    The enqueue script checks again first, so nothing of the call is written."""
    gone = await backend.enqueue([make_job(clock, keep_for=0.0)])
    assert await _run(backend) == gone
    assert await backend.purge([JobState.COMPLETED]) == 1
    ok = make_job(clock)
    child = make_job(clock, parents=(ok.id,))
    late = make_job(clock, parents=(gone[0],), key="k")
    # What `enqueue` does after `_check_dependencies` passed, with the parent gone since.
    with pytest.raises(DependencyError, match=rf"{late.id} depends on {gone[0]}.*nothing was"):
        await backend._enqueue([ok, child, late], clock.now())
    assert await backend.get([ok.id, child.id, late.id]) == [None, None, None]
    assert await backend.counts() == {}
    assert await stored(backend, [make_job(clock, key="k")]) == [True]  # the key is free
    assert _clean(redis_url) == []


async def test_a_refusal_in_a_later_chunk_says_what_was_stored(
    backend: RedisBackend, clock: FakeClock
) -> None:
    """A call of more than one script's worth of jobs is stored chunk by chunk; a parent
    purged between two chunks stops the call there, and the error says so."""
    jobs = [make_job(clock) for _ in range(_CHUNK)]
    orphan = make_job(clock, parents=("f" * 32,))
    with pytest.raises(
        DependencyError, match=rf"the {_CHUNK} jobs of the call's earlier chunks were stored"
    ):
        await backend._enqueue([*jobs, orphan], clock.now())
    got = await backend.get([jobs[0].id, jobs[-1].id, orphan.id])
    assert [j is not None for j in got] == [True, True, False]


async def test_a_duplicate_parent_in_an_earlier_chunk_stands_for_its_holder(
    backend: RedisBackend, clock: FakeClock, redis_url: str
) -> None:
    holder = make_job(clock, key="step-1")
    assert await stored(backend, [holder]) == [True]
    dup = make_job(clock, key="step-1")
    filler = [make_job(clock) for _ in range(_CHUNK)]
    child = make_job(clock, parents=(dup.id,))  # in the second chunk
    twice = make_job(clock, parents=(holder.id, dup.id))  # the same job twice, once counted
    ids = await backend.enqueue([dup, *filler, child, twice])
    assert ids[0] == holder.id and ids[-2:] == [child.id, twice.id]
    got = {j.id: j for j in await backend.get([child.id, twice.id]) if j is not None}
    assert got[child.id].parents == (holder.id,) and got[child.id].state is JobState.WAITING
    assert got[twice.id].parents == (holder.id, holder.id)
    assert got[twice.id].waiting_for == 1
    lease = (await backend.claim(ClaimRequest(["default"], 1, 30.0, W)))[0]
    assert lease.id == holder.id
    assert await backend.settle([(lease, Completed(None))]) == [True]
    states = [j.state for j in await backend.get([child.id, twice.id]) if j is not None]
    assert states == [JobState.QUEUED, JobState.QUEUED]
    assert _clean(redis_url) == []


async def test_edges_across_queues_with_colons_in_their_names(
    backend: RedisBackend, clock: FakeClock, redis_url: str
) -> None:
    a = make_job(clock, queue="etl:extract")
    b = make_job(clock, queue="etl:load:v2", parents=(a.id,))
    c = make_job(clock, queue="x", parents=(a.id, b.id), on_parent_failure="run")
    d = make_job(clock, queue="etl:load:v2", parents=(b.id,))
    assert all(await stored(backend, [a, b, c, d]))
    assert await _run(backend, "etl:extract") == [a.id]
    leases = await backend.claim(ClaimRequest(["etl:load:v2"], 10, 30.0, W))
    assert [lease.id for lease in leases] == [b.id]
    assert await backend.settle([(leases[0], Failed(err()))]) == [True]
    got = {j.id: j for j in await backend.get([c.id, d.id]) if j is not None}
    assert got[c.id].state is JobState.QUEUED  # runs anyway
    assert got[d.id].state is JobState.CANCELLED
    assert got[d.id].meta["cancel_reason"] == f"parent {b.id} failed"
    counts = await backend.counts()
    assert counts["x"] == {JobState.QUEUED: 1}
    assert _clean(redis_url) == []


async def test_a_release_with_a_cancel_requested_cancels_the_children(
    backend: RedisBackend, clock: FakeClock, redis_url: str
) -> None:
    parent = make_job(clock)
    child = make_job(clock, parents=(parent.id,))
    grandchild = make_job(clock, parents=(child.id,), key="g")
    assert all(await stored(backend, [parent, child, grandchild]))
    (lease,) = await backend.claim(ClaimRequest(["default"], 10, 30.0, W))
    assert await backend.cancel(parent.id) is JobState.RUNNING
    assert await backend.release([lease]) == [True]
    got = await backend.get([parent.id, child.id, grandchild.id])
    assert [j.state for j in got if j is not None] == [JobState.CANCELLED] * 3
    assert got[2] is not None and got[2].meta["cancel_reason"] == f"parent {child.id} cancelled"
    assert await stored(backend, [make_job(clock, key="g")]) == [True]  # its key was let go
    assert _clean(redis_url) == []


async def test_a_long_chain_cascades_in_one_step(
    backend: RedisBackend, clock: FakeClock, redis_url: str
) -> None:
    chain = [make_job(clock)]
    for _ in range(300):
        chain.append(make_job(clock, parents=(chain[-1].id,)))
    assert all(await stored(backend, chain))
    (lease,) = await backend.claim(ClaimRequest(["default"], 10, 30.0, W))
    assert await backend.settle([(lease, Cancelled("stop"))]) == [True]
    counts = await backend.counts("default")
    assert counts["default"] == {JobState.CANCELLED: 301}
    assert _clean(redis_url) == []


async def test_no_dependency_keys_for_jobs_without_parents(
    backend: RedisBackend, clock: FakeClock, raw: aioredis.Redis
) -> None:
    jobs = [make_job(clock) for _ in range(5)]
    assert all(await stored(backend, jobs))
    await _run(backend)
    assert [k async for k in raw.scan_iter(match="*children*")] == []
    for job in jobs:
        assert await raw.hget(f"{{conveyor}}:job:{job.id}", "children") is None


async def test_a_released_child_wakes_an_idle_worker(redis_url: str, clock: FakeClock) -> None:
    """A worker waiting on the child's queue (another backend instance, as another process
    would be) wakes when the parent's settle makes the child ready, long before its timeout."""
    async with (
        RedisBackend(redis_url, clock=clock) as producer,
        RedisBackend(redis_url, clock=clock) as idle,
    ):
        parent = make_job(clock, queue="a")
        child = make_job(clock, queue="b", parents=(parent.id,))
        assert all(await stored(producer, [parent, child]))
        (lease,) = await producer.claim(ClaimRequest(["a"], 1, 30.0, W))
        assert await idle.claim(ClaimRequest(["b"], 1, 30.0, "w2")) == []
        waiting = asyncio.ensure_future(idle.wait(["b"], 5.0))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        start = time.monotonic()
        assert await producer.settle([(lease, Completed(None))]) == [True]
        await asyncio.wait_for(waiting, 2.0)
        assert time.monotonic() - start < 1.0
        (got,) = await idle.claim(ClaimRequest(["b"], 1, 30.0, "w2"))
        assert got.id == child.id


@pytest.mark.timeout(60)
async def test_a_waiting_child_survives_a_restart_and_is_released_after_it(
    tmp_path: Path,
) -> None:
    """redis-server with an fsync'd append-only file is SIGKILLed while a parent runs: a new
    backend (a new process, as far as the store knows) finds the child still waiting, and
    the parent's settle there releases it."""
    server = Server(tmp_path / "redis", ["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    try:
        clock = FakeClock()
        async with RedisBackend(server.url, clock=clock) as first:
            parent = make_job(clock)
            child = make_job(clock, parents=(parent.id,), feed="one")
            other = make_job(clock, parents=(parent.id,), delay=60)
            assert all(await stored(first, [parent, child, other]))
            (lease,) = await first.claim(ClaimRequest(["default"], 10, 30.0, W))
        server.kill()
        server.start()
        async with RedisBackend(server.url, clock=clock) as second:
            got = await second.get([child.id, other.id])
            assert [(j.state, j.waiting_for) for j in got if j is not None] == [
                (JobState.WAITING, 1),
                (JobState.WAITING, 1),
            ]
            assert await second.settle([(lease, Completed(b"42"))]) == [True]
            got = await second.get([child.id, other.id])
            assert [j.state for j in got if j is not None] == [
                JobState.QUEUED,
                JobState.SCHEDULED,
            ]
            (run,) = await second.claim(ClaimRequest(["default"], 10, 30.0, W))
            assert run.id == child.id and run.job.feed == "one"
        assert _clean(server.url) == []
    finally:
        server.stop()


async def test_purge_and_requeue_beside_waiting_jobs(
    backend: RedisBackend, clock: FakeClock, redis_url: str
) -> None:
    """Purge leaves waiting jobs alone; a child cancelled by its parent can be requeued (it
    runs, an operator's choice) or purged like any cancelled job."""
    a = make_job(clock, keep_for=0.0)
    waits = make_job(clock, parents=(a.id,), keep_for=0.0)
    b = make_job(clock, keep_for=0.0)
    doomed = make_job(clock, parents=(b.id,), keep_for=0.0)
    purged = make_job(clock, parents=(b.id,), keep_for=0.0)
    assert all(await stored(backend, [a, waits, b, doomed, purged]))
    leases = {x.id: x for x in await backend.claim(ClaimRequest(["default"], 10, 30.0, W))}
    assert set(leases) == {a.id, b.id}
    assert await backend.settle([(leases[b.id], Failed(err()))]) == [True]
    assert await backend.purge([JobState.FAILED]) == 1  # b; `waits` is still waiting
    assert await backend.requeue(doomed.id)
    assert await backend.purge([JobState.CANCELLED]) == 1  # `purged`
    got = await backend.get([waits.id, doomed.id, purged.id])
    assert got[0] is not None and got[0].state is JobState.WAITING
    assert got[1] is not None and got[1].state is JobState.QUEUED
    assert got[2] is None
    assert await backend.settle([(leases[a.id], Completed(None))]) == [True]
    assert sorted(await _run(backend)) == sorted([waits.id, doomed.id])
    assert _clean(redis_url) == []


async def test_a_child_released_into_a_paused_queue_waits_for_the_resume(
    backend: RedisBackend, clock: FakeClock, raw: aioredis.Redis
) -> None:
    parent = make_job(clock)
    child = make_job(clock, queue="later", parents=(parent.id,))
    assert all(await stored(backend, [parent, child]))
    assert await backend.pause("later")
    assert await _run(backend) == [parent.id]
    assert [j.state for j in await backend.get([child.id]) if j is not None] == [JobState.QUEUED]
    assert await raw.llen("{conveyor}:q:later:wake") == 0  # nobody woken for nothing
    assert await backend.claim(ClaimRequest(["later"], 10, 30.0, W)) == []
    assert await backend.resume("later")
    assert await _run(backend, "later") == [child.id]


# -- holds and link ---------------------------------------------------------------------------


async def test_plain_jobs_carry_no_holds_field(
    backend: RedisBackend, clock: FakeClock, raw: aioredis.Redis
) -> None:
    """`waiting_for` travels with every job (it is a producer field), but a job without
    holds or parents has no hash field for it: plain jobs cost what they did."""
    plain = make_job(clock)
    held = make_job(clock, waiting_for=3)
    # The holds go last in a job's argument array, and only when set.
    sent = [msgspec.msgpack.decode(arg) for arg in enqueue_args([plain, held])[::2]]
    plain_width = len(ENQUEUE_FIELDS) - len(BY_HAND)
    assert [len(a) for a in sent] == [plain_width, plain_width + 1]
    assert ENQUEUE_FIELDS[plain_width] == "waiting_for" and sent[1][-1] == "3"
    assert all(await stored(backend, [plain, held]))
    assert await raw.hget(f"{{conveyor}}:job:{plain.id}", "waiting_for") is None
    assert await raw.hget(f"{{conveyor}}:job:{held.id}", "waiting_for") == b"3"
    assert [k async for k in raw.scan_iter(match="*children*")] == []
    assert await raw.zcard("{conveyor}:q:default:state:waiting") == 1
    got = {j.id: j for j in await backend.get([plain.id, held.id]) if j is not None}
    assert (got[plain.id].state, got[plain.id].waiting_for) == (JobState.QUEUED, 0)
    assert (got[held.id].state, got[held.id].waiting_for) == (JobState.WAITING, 3)


async def test_holds_beside_a_failed_parent_cancel_at_once(
    backend: RedisBackend, clock: FakeClock, redis_url: str
) -> None:
    parent = make_job(clock)
    assert all(await stored(backend, [parent]))
    (lease,) = await backend.claim(ClaimRequest(["default"], 1, 30.0, W))
    assert await backend.settle([(lease, Failed(err()))]) == [True]
    child = make_job(clock, parents=(parent.id,), waiting_for=2, key="k")
    assert all(await stored(backend, [child]))
    (got,) = await backend.get([child.id])
    assert got is not None and got.state is JobState.CANCELLED
    assert got.meta["cancel_reason"] == f"parent {parent.id} failed"
    assert not await backend.link(child.id, holds=-2)
    assert await stored(backend, [make_job(clock, key="k")]) == [True]  # the key is free
    assert _clean(redis_url) == []


async def test_a_parent_purged_after_the_link_check_changes_nothing(
    backend: RedisBackend, clock: FakeClock, raw: aioredis.Redis, redis_url: str
) -> None:
    """The base checks link's parents with a `get`; the script reads them again before
    writing, so a purge in between changes nothing, not even the edges of the others."""
    live = make_job(clock)
    gone = make_job(clock, keep_for=0.0)
    held = make_job(clock, waiting_for=1)
    assert all(await stored(backend, [gone]))
    assert await _run(backend) == [gone.id]
    assert all(await stored(backend, [live, held]))
    assert await backend.purge([JobState.COMPLETED]) == 1
    # What `link` does after `_check_link` passed, with the parent gone since.
    with pytest.raises(DependencyError, match=rf"{held.id} can't wait for {gone.id}.*nothing"):
        await backend._link(held.id, [live.id, gone.id], -1, clock.now())
    (got,) = await backend.get([held.id])
    assert got is not None and (got.state, got.waiting_for, got.parents) == (
        JobState.WAITING,
        1,
        (),
    )
    assert [k async for k in raw.scan_iter(match="*children*")] == []
    assert await raw.hget(f"{{conveyor}}:job:{live.id}", "children") is None
    assert await backend.link(held.id, holds=-1)
    assert sorted(await _run(backend)) == sorted([live.id, held.id])
    assert _clean(redis_url) == []


async def test_link_to_parents_in_other_queues(
    backend: RedisBackend, clock: FakeClock, raw: aioredis.Redis, redis_url: str
) -> None:
    """On a single Redis the edges live in each parent's queue keys, so the parents' own
    settles release the child; the child's `parents` lists old then new, each once."""
    first = make_job(clock, queue="etl:extract")
    held = make_job(clock, queue="etl:load:v2", parents=(first.id,), waiting_for=1)
    a = make_job(clock, queue="etl:extract")
    b = make_job(clock, queue="x")
    assert all(await stored(backend, [first, held, a, b]))
    assert await backend.link(held.id, [first.id, a.id, b.id], holds=-1)
    (got,) = await backend.get([held.id])
    assert got is not None and got.parents == (first.id, a.id, b.id) and got.waiting_for == 3
    assert await raw.smembers(f"{{conveyor}}:q:x:children:{b.id}") == {
        f"etl:load:v2|{held.id}".encode()
    }
    assert sorted(await _run(backend, "etl:extract")) == sorted([first.id, a.id])
    assert [j.state for j in await backend.get([held.id]) if j is not None] == [JobState.WAITING]
    assert await _run(backend, "x") == [b.id]
    assert await _run(backend, "etl:load:v2") == [held.id]
    assert _clean(redis_url) == []


async def test_link_releases_by_run_at_into_a_paused_queue_or_waking_a_worker(
    redis_url: str, clock: FakeClock
) -> None:
    async with (
        RedisBackend(redis_url, clock=clock) as producer,
        RedisBackend(redis_url, clock=clock) as idle,
    ):
        later = make_job(clock, waiting_for=1, delay=60)
        now = make_job(clock, waiting_for=2, queue="b")
        paused = make_job(clock, waiting_for=1, queue="p")
        assert all(await stored(producer, [later, now, paused]))
        assert await producer.pause("p")
        assert await producer.link(paused.id, holds=-1)
        assert await producer.link(later.id, holds=-1)
        assert await producer.link(now.id, holds=-1)  # one hold left
        got = await producer.get([later.id, now.id, paused.id])
        assert [j.state for j in got if j is not None] == [
            JobState.SCHEDULED,
            JobState.WAITING,
            JobState.QUEUED,
        ]
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.llen("{conveyor}:q:p:wake") == 0  # nobody woken for nothing
            assert client.zcard("{conveyor}:q:default:scheduled") == 1
        finally:
            client.close()
        waiting = asyncio.ensure_future(idle.wait(["b"], 5.0))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        start = time.monotonic()
        assert await producer.link(now.id, holds=-5)  # floored at 0: released
        await asyncio.wait_for(waiting, 2.0)
        assert time.monotonic() - start < 1.0
        (lease,) = await idle.claim(ClaimRequest(["b"], 1, 30.0, "w2"))
        assert lease.id == now.id and lease.job.waiting_for == 0


async def test_a_link_that_cancels_cascades_and_leaves_nothing_behind(
    backend: RedisBackend, clock: FakeClock, redis_url: str
) -> None:
    live = make_job(clock)
    bad = make_job(clock)
    assert all(await stored(backend, [bad]))
    (lease,) = await backend.claim(ClaimRequest(["default"], 1, 30.0, W))
    assert await backend.settle([(lease, Cancelled("stop"))]) == [True]
    held = make_job(clock, waiting_for=1, key="held")
    below = make_job(clock, parents=(held.id,), key="below")
    assert all(await stored(backend, [live, held, below]))
    assert await backend.link(held.id, [live.id, bad.id])
    got = await backend.get([held.id, below.id])
    assert [(j.state, j.meta.get("cancel_reason")) for j in got if j is not None] == [
        (JobState.CANCELLED, f"parent {bad.id} cancelled"),
        (JobState.CANCELLED, f"parent {held.id} cancelled"),
    ]
    assert got[0] is not None and got[0].parents == (live.id, bad.id)
    assert await stored(backend, [make_job(clock, key="held"), make_job(clock, key="below")]) == [
        True,
        True,
    ]
    assert not await backend.link(held.id, holds=-1)
    assert _clean(redis_url) == []  # `live` got no edge: it ends with no children flag
    assert live.id in await _run(backend)


async def test_link_with_many_parents_in_one_step(
    backend: RedisBackend, clock: FakeClock, redis_url: str
) -> None:
    """A batch's callback linked to its members at once: one script call, one settle of
    them all releases it."""
    members = [make_job(clock) for _ in range(2000)]
    held = make_job(clock, waiting_for=1)
    assert all(await stored(backend, [*members, held]))
    assert await backend.link(held.id, [m.id for m in members], holds=-1)
    (got,) = await backend.get([held.id])
    assert got is not None and got.waiting_for == 2000 and len(got.parents) == 2000
    leases = await backend.claim(ClaimRequest(["default"], 2000, 30.0, W))
    assert len(leases) == 2000
    assert all(await backend.settle([(lease, Completed(None)) for lease in leases]))
    assert await _run(backend) == [held.id]
    assert _clean(redis_url) == []


async def test_holds_given_back_past_zero_release_a_child_with_live_parents(
    backend: RedisBackend, clock: FakeClock, redis_url: str
) -> None:
    """`waiting_for` floors at 0: the child runs though a parent still runs; that parent's
    end then finds it no longer waiting and leaves it alone (its edge goes with the set)."""
    parent = make_job(clock)
    child = make_job(clock, parents=(parent.id,), waiting_for=1)
    assert all(await stored(backend, [parent, child]))
    (lease,) = await backend.claim(ClaimRequest(["default"], 1, 30.0, W))
    assert lease.id == parent.id
    assert await backend.link(child.id, holds=-5)
    assert await _run(backend) == [child.id]
    assert await backend.settle([(lease, Completed(None))]) == [True]
    got = await backend.get([child.id])
    assert [(j.state, j.attempts) for j in got if j is not None] == [(JobState.COMPLETED, 1)]
    assert _clean(redis_url) == []
