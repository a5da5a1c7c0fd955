"""The Redis-only fault tests, with real worker processes (and a real Redis crash).

The process plumbing and the ledger (kept outside the store) are the SQLite fault tests';
only the store differs. The SIGKILL storm runs on both stores in tests/faults/test_kill.py.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

import conveyor
from conveyor.backends.redis import RedisBackend
from conveyor.errors import BackendError
from tests.faults.apps.ledger import build
from tests.faults.conftest import Cluster, Proc, app_on, ready
from tests.redis.servers import Server


@pytest.fixture
def rcluster(tmp_path: Path, redis_url: str) -> Iterator[Cluster]:
    """The fault harness with its workers on Redis (a key prefix unique to the test)."""
    with Cluster(tmp_path, redis_url) as c:
        yield c


@pytest.fixture
async def rapp(rcluster: Cluster) -> AsyncIterator[conveyor.App]:
    async with app_on(rcluster) as a:
        yield a


async def registered(rapp: conveyor.App, proc: Proc, name: str, for_at_least: float) -> None:
    """Wait until worker `name` is registered as a waiter on "default" for `for_at_least` s
    more (so a job enqueued now is handed to it)."""
    backend = rapp.backend
    assert isinstance(backend, RedisBackend)
    conn = await backend._conn()
    deadline = time.monotonic() + 10
    while True:
        score = await conn.call("ZSCORE", backend.keys.q("default", "waiters"), name)
        sec, usec = await conn.call("TIME")
        if score is not None and float(score) > int(sec) + int(usec) / 1e6 + for_at_least:
            return
        assert time.monotonic() < deadline, proc.stderr()
        await asyncio.sleep(0.02)


@pytest.mark.timeout(60)
async def test_a_job_handed_to_a_waiter_that_was_sigkilled_still_runs(
    rcluster: Cluster, rapp: conveyor.App
) -> None:
    """The handoff's failure case: the waiting worker dies between registering and reading
    its inbox. The job was leased to the dead worker, so it reruns when the lease expires."""
    a = rcluster.worker("-c", "4", "--lease", "2", "--name", "doomed", name="A")
    await ready(a)
    await registered(rapp, a, "doomed", 0.3)
    rcluster.kill(a)
    (handle,) = await rapp.registry.get("record").enqueue_many([(1,)])
    (job,) = await rapp.backend.get([handle.id])
    assert job is not None and job.state is conveyor.JobState.RUNNING and job.worker == "doomed"
    b = rcluster.worker("-c", "4", "--lease", "2", name="B")
    await ready(b)
    deadline = time.monotonic() + 20
    while (job := (await rapp.backend.get([handle.id]))[0]) is None or not job.state.terminal:
        assert time.monotonic() < deadline, rcluster.logs()
        await asyncio.sleep(0.1)
    assert job.state is conveyor.JobState.COMPLETED and msgspec.json.decode(job.result) == b.pid
    assert [e.type for e in job.errors] == ["LeaseExpired"]
    b.send(signal.SIGTERM)
    assert rcluster.wait_exit(b, 10) == 0, b.stderr()


@pytest.mark.timeout(60)
async def test_a_waiter_stopped_with_sigterm_leaves_new_jobs_to_others_at_once(
    rcluster: Cluster, rapp: conveyor.App
) -> None:
    """A worker that stops while waiting ends its registration: the next job is queued, not
    handed to it, and another worker runs it without waiting for any lease to expire."""
    a = rcluster.worker("-c", "4", "--lease", "30", "--name", "leaving", name="A")
    await ready(a)
    await registered(rapp, a, "leaving", 0.0)
    a.send(signal.SIGTERM)
    assert rcluster.wait_exit(a, 10) == 0, a.stderr()
    (handle,) = await rapp.registry.get("record").enqueue_many([(1,)])
    (job,) = await rapp.backend.get([handle.id])
    assert job is not None and job.state is conveyor.JobState.QUEUED
    b = rcluster.worker("-c", "4", "--lease", "30", name="B")
    assert await handle.result(timeout=15) == b.pid  # far sooner than A's 30 s lease
    b.send(signal.SIGTERM)
    assert rcluster.wait_exit(b, 10) == 0, b.stderr()


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_redis_crash_loses_nothing_acknowledged_a_second_before(tmp_path: Path) -> None:
    server = Server(tmp_path / "redis", ["--appendonly", "yes", "--appendfsync", "everysec"])
    server.start()
    cluster = Cluster(tmp_path, server.url)
    app = build(cluster.url)
    acked: list[tuple[float, list[str]]] = []
    try:
        record = app.registry.get("record")
        workers = [
            cluster.worker(
                "-c", "8", "--lease", "2", name=f"w{i}", env={"FAULT_TASK_SLEEP": "0.01"}
            )
            for i in range(2)
        ]
        for w in workers:
            await ready(w)
        crash_at = 0.0
        began = time.monotonic()
        n = 0
        restarted = False
        while time.monotonic() - began < 6.0:
            if not crash_at and time.monotonic() - began > 2.5:
                server.kill()
                crash_at = time.time()
            if crash_at and not restarted and time.time() - crash_at > 1.0:
                server.start()
                restarted = True
            try:
                handles = await record.enqueue_many([(n + i,) for i in range(20)])
                acked.append((time.time(), [h.id for h in handles]))
            except BackendError:
                pass  # the store is down: the producer sees a clear error, nothing is written
            n += 20
            await asyncio.sleep(0.05)
        assert crash_at and restarted

        wanted = [i for at, ids in acked if at < crash_at - 1.0 or at > crash_at for i in ids]

        async def settled() -> bool:
            jobs = await app.backend.get(wanted)
            return all(j is not None and j.state.terminal for j in jobs)

        deadline = time.monotonic() + 30
        while not await settled():
            dead = [w for w in workers if not w.alive()]
            assert not dead, f"a worker died when Redis crashed:\n{cluster.logs()}"
            assert time.monotonic() < deadline, cluster.logs()
            await asyncio.sleep(0.25)
        jobs = await app.backend.get(wanted)
        for job in jobs:
            assert job is not None  # acknowledged more than 1 s before the crash: kept
            assert job.state in (conveyor.JobState.COMPLETED, conveyor.JobState.FAILED)
            if job.state is conveyor.JobState.FAILED:
                assert job.errors and job.errors[-1].message
        assert len(wanted) >= 400, len(wanted)
        # The crash really hit the workers, and they rode it out without a restart.
        assert any("store failed" in w.stderr() for w in workers), cluster.logs()
        for w in workers:
            assert w.alive(), w.stderr()
            w.send(signal.SIGTERM)
        for w in workers:
            assert cluster.wait_exit(w, 15) == 0, w.stderr()
    finally:
        await app.aclose()
        cluster.teardown()
        server.stop()
