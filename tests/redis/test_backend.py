"""What only a Redis store can show: scripts, server time, wake-ups, URLs, loops, garbage."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis.asyncio as aioredis

import conveyor
from conveyor.backends import from_url
from conveyor.backends.base import ClaimRequest, JobFilter
from conveyor.backends.redis import RedisBackend
from conveyor.backends.redis.connect import parse_url
from conveyor.clock import FakeClock
from conveyor.errors import ConfigError, StoreUnavailable
from conveyor.job import Completed, Failed, JobState
from conveyor.testing import drain
from conveyor.testing.contract import err, make_job, stored
from conveyor.testing.redis_server import RedisServer

W = "w1"


async def test_from_url_and_settings(redis_url: str) -> None:
    backend = from_url(f"{redis_url}?prefix=shop")
    assert isinstance(backend, RedisBackend)
    assert backend.keys.prefix == "shop" and backend.server_time  # real clock → server time
    await backend.aclose()
    s = parse_url("rediss://alice:s3cret@h:6380/2?prefix=a.b")
    assert (s.url, s.prefix, s.cluster) == ("rediss://alice:s3cret@h:6380/2", "a.b", False)
    assert "s3cret" not in s.safe_url and "alice" in s.safe_url
    c = parse_url("redis+cluster://h:7000")
    assert (c.url, c.prefix, c.cluster) == ("redis://h:7000", "conveyor", True)
    for bad in ("redis://h/0?prefix={x}", "redis://h/0?prefix=", "redis+cluster://h/3"):
        with pytest.raises(ConfigError):
            parse_url(bad)


async def test_unreachable_server_fails_fast_with_store_unavailable() -> None:
    # A port nobody listens on: connection refused, retried with backoff, then a clear error.
    async with RedisBackend("redis://:hunter2@127.0.0.1:1/0", clock=FakeClock()) as b:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unavailable") as info:
            await b.claim(ClaimRequest(["default"], 10, 30, W))
        assert time.monotonic() - start < 3.0
        assert "hunter2" not in str(info.value)


async def test_lost_functions_and_scripts_are_reloaded(redis_url: str, raw: aioredis.Redis) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        await b.enqueue([make_job(clock)])
        await raw.function_flush()
        await raw.script_flush()
        assert await stored(b, [make_job(clock)]) == [True]  # not found → FUNCTION LOAD → again
        assert len(await b.claim(ClaimRequest(["default"], 10, 30, W))) == 2


async def test_scripts_run_as_eval_where_function_load_is_refused(
    redis_url: str, raw: aioredis.Redis
) -> None:
    """An ACL user without FUNCTION (some managed services) still gets a working store."""
    await raw.function_flush()
    await raw.acl_setuser(
        "nofn", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-function"], reset=True,
    )  # fmt: skip
    try:
        clock = FakeClock()
        url = redis_url.replace("redis://", "redis://nofn:pw@")
        async with RedisBackend(url, clock=clock) as b:
            job = make_job(clock)
            assert await stored(b, [job]) == [True]
            (lease,) = await b.claim(ClaimRequest(["default"], 10, 30, W))
            assert await b.settle([(lease, Completed(None))]) == [True]
            (done,) = await b.get([job.id])
            assert done is not None and done.state is JobState.COMPLETED
        assert await raw.function_list() == []  # never loaded: it ran as scripts
    finally:
        await raw.acl_deluser("nofn")


async def test_claim_order_at_the_extremes(redis_url: str) -> None:
    """The ready-set rank keeps exact order for extreme priorities and sub-ms run_at gaps."""
    clock = FakeClock()
    now = clock.now()
    async with RedisBackend(redis_url, clock=clock) as b:
        jobs = [
            make_job(clock, priority=0, run_at=now - 0.000002),
            make_job(clock, priority=0, run_at=now - 0.000003),  # a microsecond earlier
            make_job(clock, priority=-(10**9)),
            make_job(clock, priority=10**9),
            make_job(clock, priority=1, run_at=0.0),
            make_job(clock, priority=1, run_at=0.0),  # same rank prefix: enqueue order
        ]
        assert await stored(b, jobs) == [True] * 6
        leases = await b.claim(ClaimRequest(["default"], 10, 30, W))
        order = [jobs.index(next(j for j in jobs if j.id == lease.id)) for lease in leases]
        assert order == [3, 4, 5, 1, 0, 2]


async def test_wait_wakes_within_50ms_of_an_enqueue_elsewhere(redis_url: str) -> None:
    clock = FakeClock()
    async with (
        RedisBackend(redis_url, clock=clock) as waiter,
        RedisBackend(redis_url, clock=clock) as producer,
    ):
        await waiter.wait(["default"], 0.01)  # connect and load scripts first
        for _ in range(5):
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(waiter.wait(["other", "default"], 5.0))
            await asyncio.sleep(0.05)
            assert not task.done()
            sent = loop.time()
            await producer.enqueue([make_job(clock)])
            await task
            assert loop.time() - sent < 0.05
            assert len(await waiter.claim(ClaimRequest(["default"], 10, 30, W))) == 1


async def test_wait_returns_at_once_when_work_is_ready_and_at_the_next_due_time(
    redis_url: str,
) -> None:
    async with RedisBackend(redis_url) as b:  # real clock, server time
        loop = asyncio.get_running_loop()
        await b.enqueue([make_job(FakeClock(time.time()), run_at=time.time() + 0.2)])
        start = loop.time()
        await b.wait(["default"], 5.0)
        waited = loop.time() - start
        assert 0.1 < waited < 0.4, waited  # woke near the scheduled job's due time
        assert len(await b.claim(ClaimRequest(["default"], 1, 30, W))) == 1
        await b.enqueue([make_job(FakeClock(time.time()))])
        start = loop.time()
        await b.wait(["default"], 5.0)
        assert loop.time() - start < 0.05


async def test_production_mode_judges_leases_by_server_time(
    redis_url: str, raw: aioredis.Redis
) -> None:
    # The process clock is 20 years off; with server_time the scripts never read it.
    skewed = FakeClock(start=1_000_000_000.0)
    async with RedisBackend(redis_url, clock=skewed, server_time=True) as b:
        await b.enqueue([make_job(FakeClock(time.time()))])
        before = await raw.time()
        (lease,) = await b.claim(ClaimRequest(["default"], 1, 30, W))
        after = await raw.time()
        low, high = before[0] + before[1] / 1e6, after[0] + after[1] / 1e6
        assert low + 30 <= lease.expires_at <= high + 30
        assert low <= (lease.job.started_at or 0) <= high
        assert await b.rescue() == 0  # judged by the server: 30 s left, not 20 years gone
    async with RedisBackend(redis_url) as auto:
        assert auto.server_time  # the default SystemClock → server time


async def test_two_event_loops_share_one_backend_and_close_cleanly(redis_url: str) -> None:
    """enqueue_sync runs on the portal's loop; the app's loop is this one. No ResourceWarning
    (filterwarnings = error) when the App closes both loops' clients."""
    app = conveyor.App(redis_url)

    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    handle = await asyncio.to_thread(add.enqueue_sync, 1, 2)
    other = await add.enqueue(3, 4)
    stats = await drain(app)
    assert stats.completed == 2
    assert await handle.result(timeout=1) == 3 and await other.result(timeout=1) == 7
    await app.aclose()


def test_sync_only_app_closes_portal_client(redis_url: str) -> None:
    app = conveyor.App(redis_url)

    @app.task
    def shout(s: str) -> str:
        return s.upper()

    shout.enqueue_sync("hi")
    app.close()  # the portal's loop is closed before the backend: sockets closed directly


async def test_end_to_end_app_on_redis(redis_url: str) -> None:
    async with conveyor.App(f"{redis_url}?prefix=e2e") as app:

        @app.task
        async def mul(a: int, b: int) -> int:
            return a * b

        handles = [await mul.enqueue(i, i) for i in range(20)]
        server = app.worker(concurrency=4)
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(server.run())
            results = [await h.result(timeout=5) for h in handles]
            server.stop()
        assert results == [i * i for i in range(20)]
        assert run.result().completed == 20
        counts = await app.backend.counts()
        assert counts == {"default": {JobState.COMPLETED: 20}}


async def test_garbage_in_a_job_hash_fails_the_job_with_a_reason(
    redis_url: str, raw: aioredis.Redis
) -> None:
    app = conveyor.App(redis_url)

    @app.task
    async def ok(n: int) -> int:
        return n

    try:
        good = await ok.enqueue(1)
        bad = await ok.enqueue(2)
        key = f"{{conveyor}}:job:{bad.id}"
        await raw.hset(
            key,
            mapping={
                "state": "zombie",
                "payload": b"\x00{not json",
                "attempts": "many",
                "max_attempts": "x",
                "meta": "{{{",
                "errors": "[oops",
            },
        )
        (snapshot,) = await app.backend.get([bad.id])
        assert snapshot is not None and snapshot.state is JobState.FAILED  # unknown state, flagged
        assert snapshot.meta["invalid_state"] == "zombie"
        stats = await drain(app)
        assert stats.completed == 1 and stats.failed == 1
        (job,) = await app.backend.get([bad.id])
        assert job is not None and job.state is JobState.FAILED
        assert job.errors and job.errors[-1].type == "PoisonPayload" and job.errors[-1].message
        assert await good.result(timeout=1) == 1
    finally:
        await app.aclose()


async def test_racing_rescuers_on_separate_connections_requeue_each_job_once(
    redis_url: str,
) -> None:
    clock = FakeClock()
    backends = [RedisBackend(redis_url, clock=clock) for _ in range(4)]
    try:
        await backends[0].enqueue([make_job(clock, queue=f"q{i % 3}") for i in range(300)])
        await backends[0].claim(ClaimRequest(["q0", "q1", "q2"], 300, 5, W))
        clock.advance(6)
        results = await asyncio.gather(*(b.rescue() for b in backends for _ in range(3)))
        assert sum(results) == 300
        jobs = (await backends[1].query(JobFilter(state=JobState.QUEUED), limit=1000)).jobs
        assert len(jobs) == 300
        assert all(len(j.errors) == 1 and j.errors[0].type == "LeaseExpired" for j in jobs)
    finally:
        for b in backends:
            await b.aclose()


async def test_query_pages_across_queues_and_batches(redis_url: str) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        jobs = [
            make_job(clock, queue=f"q{i % 4}", task="t.a" if i % 7 else "t.b") for i in range(900)
        ]
        await b.enqueue(jobs)
        await b.claim(ClaimRequest(["q1"], 50, 30, W))
        seen: list[str] = []
        after = None
        while True:
            page = await b.query(JobFilter(task="t.a"), after=after, limit=97)
            seen += [j.id for j in page.jobs]
            if page.next is None:
                break
            after = page.next
        assert seen == [j.id for j in jobs if j.task == "t.a"]
        # One call that needs several merge rounds (200 rows per source per round).
        rare = await b.query(JobFilter(task="t.b"), limit=150)
        assert [j.id for j in rare.jobs] == [j.id for j in jobs if j.task == "t.b"]
        assert rare.next is None
        running = await b.query(JobFilter(state=JobState.RUNNING, queue="q1"), limit=100)
        assert len(running.jobs) == 50 and running.next is None
        counts = await b.counts()
        assert counts["q1"] == {JobState.RUNNING: 50, JobState.QUEUED: 175}


async def test_retention_purge_and_purge_before_across_chunks(redis_url: str) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        await b.enqueue([make_job(clock, keep_for=10) for _ in range(1200)])
        leases = await b.claim(ClaimRequest(["default"], 1200, 30, W))
        assert all(await b.settle([(lease, Completed(None)) for lease in leases]))
        clock.advance(11)
        assert await b.purge([JobState.COMPLETED]) == 1200
        assert await b.counts() == {}


async def test_counters_capability(redis_url: str, raw: aioredis.Redis) -> None:
    async with RedisBackend(redis_url) as b:
        assert await b.incr("api:42", 1, 2.0) == 1
        assert await b.incr("api:42", 5, 2.0) == 6
        ttl = await raw.pttl("conveyor:counter:api:42")
        assert 0 < ttl <= 2000  # the window started at the first increment, not extended


async def test_warns_when_job_keys_could_be_evicted(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer(["--maxmemory-policy", "allkeys-lru"]) as server:
        async with RedisBackend(server.url) as b:
            with caplog.at_level(logging.WARNING, "conveyor.backends.redis"):
                await b.counts()
                await b.counts()
    warned = [r for r in caplog.records if "maxmemory-policy=allkeys-lru" in r.getMessage()]
    assert len(warned) == 1


async def test_requeue_many_is_one_script_call_per_page(redis_url: str) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, clock=clock) as b:
        jobs = [make_job(clock, max_attempts=1, queue=q) for q in ("a", "b") for _ in range(300)]
        await b.enqueue(jobs)
        leases = await b.claim(ClaimRequest(["a", "b"], 1000, 30, W))
        await b.settle([(lease, Failed(err())) for lease in leases])
        conn = await b._conn()
        before = await conn.client.info("commandstats")
        ids = [j.id for j in jobs]
        assert await b.requeue_many([*ids, "unknown"]) == [True] * 600 + [False]
        after = await conn.client.info("commandstats")
        calls = _fcalls(after) - _fcalls(before)
        assert calls == 2  # 600 jobs: two script calls of 500 and 100, not 600
        counts = await b.counts()
        assert counts["a"] == {JobState.QUEUED: 300} and counts["b"] == {JobState.QUEUED: 300}
        assert await b.requeue_many(ids[:3]) == [False] * 3  # queued now: nothing to requeue


def _fcalls(stats: dict[str, dict[str, int]]) -> int:
    return sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_fcall", "cmdstat_evalsha"))
