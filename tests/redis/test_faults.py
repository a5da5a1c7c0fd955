"""The fault tests on Redis, with real worker processes (and a real Redis crash).

The process plumbing and the ledger (kept outside the store) are the SQLite fault tests';
only the store differs.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

import conveyor
from conveyor.backends.redis import RedisBackend
from conveyor.errors import BackendError
from conveyor.testing.redis_server import RedisServer
from tests.faults.apps.ledger import build
from tests.faults.conftest import Cluster, Proc, ready, until

APP = "tests.redis.apps.ledger:app"
LEASE = 2.0


class RedisCluster(Cluster):
    """The fault harness with workers on Redis (prefix unique to the test)."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        super().__init__(tmp_path)
        sep = "&" if "?" in url else "?"
        self.url = f"{url}{sep}prefix=fault-{uuid.uuid4().hex[:8]}"

    def worker(
        self, *options: str, name: str = "worker", env: dict[str, str] | None = None
    ) -> Proc:
        argv = [sys.executable, "-m", "conveyor", "-v", "worker", APP, *options]
        return self.spawn(name, argv, env)


@pytest.fixture
def rcluster(tmp_path: Path, redis_url: str) -> Iterator[RedisCluster]:
    c = RedisCluster(tmp_path, redis_url)
    try:
        yield c
    finally:
        c.teardown()


@pytest.fixture
async def rapp(rcluster: RedisCluster) -> AsyncIterator[conveyor.App]:
    a = build(rcluster.url)
    try:
        yield a
    finally:
        await a.aclose()


JOBS = 2_000
CONCURRENCY = 8
STORM = 16.0
KILL_EVERY = 2.0
TASK_SLEEP = "0.12"  # keeps 2 x 8 slots busy for about the whole storm


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sigkill_storm_loses_nothing(rcluster: RedisCluster, rapp: conveyor.App) -> None:
    record = rapp.registry.get("record")
    handles = await record.enqueue_many([(i,) for i in range(JOBS)])
    ids = [h.id for h in handles]

    def start(slot: int) -> Proc:
        return rcluster.worker(
            "-c", str(CONCURRENCY), "--lease", str(LEASE), "--grace", "5",
            name=f"w{slot}", env={"FAULT_TASK_SLEEP": TASK_SLEEP},
        )  # fmt: skip

    workers = [start(0), start(1)]
    await ready(workers[0])
    await ready(workers[1])
    killed: list[Proc] = []
    kills_that_hit = 0
    began = time.monotonic()
    slot = 0
    for k in range(1, int(STORM / KILL_EVERY) + 1):
        await asyncio.sleep(max(0.0, began + k * KILL_EVERY - time.monotonic()))
        victim = workers[slot]
        assert victim.alive(), victim.stderr()
        rcluster.kill(victim)
        killed.append(victim)
        events = rcluster.ledger()
        opened = collections.Counter((n, p) for ev, n, p, _ in events if ev == "start")
        opened.subtract((n, p) for ev, n, p, _ in events if ev == "done")
        kills_that_hit += any(p == victim.pid and c > 0 for (_, p), c in opened.items())
        workers[slot] = start(slot)
        slot = 1 - slot

    deadline = time.monotonic() + 45
    while (await rapp.inspector.stats())[0].completed < JOBS:
        assert time.monotonic() < deadline, (await rapp.inspector.stats(), rcluster.logs())
        await asyncio.sleep(0.25)
    for w in workers:
        await ready(w)
        w.send(signal.SIGTERM)
    for w in workers:
        assert rcluster.wait_exit(w, 15) == 0, w.stderr()

    kills = len(killed)
    assert kills_that_hit >= kills - 2, (kills_that_hit, kills)
    events = rcluster.ledger()
    started = collections.Counter(n for ev, n, _, _ in events if ev == "start")
    done = collections.Counter(n for ev, n, _, _ in events if ev == "done")
    # No job lost; every job completed; the dead letter is empty.
    assert set(done) == set(range(JOBS)), sorted(set(range(JOBS)) - set(done))[:20]
    (stats,) = await rapp.inspector.stats()
    assert (stats.completed, stats.failed, stats.queued, stats.running, stats.scheduled) == (
        JOBS, 0, 0, 0, 0,
    ), stats  # fmt: skip
    # Extra executions are bounded by what the kills interrupted.
    extra = sum(started.values()) - JOBS
    killed_pids = {p.pid for p in killed}
    per_run = collections.Counter((n, p) for ev, n, p, _ in events if ev == "start")
    per_run.subtract((n, p) for ev, n, p, _ in events if ev == "done")
    cut_short = sum(c for (_, p), c in per_run.items() if c > 0 and p in killed_pids)
    assert [(n, p) for (n, p), c in per_run.items() if c > 0 and p not in killed_pids] == []
    assert 1 <= cut_short <= extra <= kills * CONCURRENCY, (cut_short, extra, kills)
    # The store agrees: each re-run was caused by an expired lease.
    jobs = await rapp.backend.get(ids)
    for n, job in enumerate(jobs):
        assert job is not None and job.attempts >= started[n], (n, job)
        assert [e.type for e in job.errors] == ["LeaseExpired"] * (job.attempts - 1), (n, job)


@pytest.mark.timeout(60)
async def test_frozen_worker_cannot_settle_or_extend(
    rcluster: RedisCluster, rapp: conveyor.App
) -> None:
    a = rcluster.worker("-c", "1", "--lease", "2", name="A", env={"FAULT_TASK_SLEEP": "4"})
    await ready(a)
    (handle,) = await rapp.registry.get("record").enqueue_many([(1,)])
    await until(lambda: rcluster.starts(a.pid), 15, "A to start the job")
    a.send(signal.SIGSTOP)
    b = rcluster.worker("-c", "1", "--lease", "2", name="B", env={"FAULT_TASK_SLEEP": "0.2"})

    async def state() -> conveyor.JobState:
        (job,) = await rapp.backend.get([handle.id])
        assert job is not None
        return job.state

    deadline = time.monotonic() + 20
    while await state() is not conveyor.JobState.COMPLETED:
        assert time.monotonic() < deadline, rcluster.logs()
        await asyncio.sleep(0.1)
    a.send(signal.SIGCONT)
    await until(
        lambda: [e for e in rcluster.ledger() if e[0] == "done" and e[2] == a.pid],
        10, "A's handler to finish",
    )  # fmt: skip
    await until(lambda: "lease lost" in a.stderr(), 10, "A to report its lost lease")
    await asyncio.sleep(1.0)  # room for a late settle from A to (wrongly) land
    (final,) = await rapp.backend.get([handle.id])
    assert final is not None and final.state is conveyor.JobState.COMPLETED
    assert msgspec.json.decode(final.result) == b.pid  # B's outcome stands
    assert final.attempts == 2 and [e.type for e in final.errors] == ["LeaseExpired"]
    for w in (a, b):
        w.send(signal.SIGTERM)
    for w in (a, b):
        assert rcluster.wait_exit(w, 10) == 0, w.stderr()
    assert "lost=1" in a.stderr(), a.stderr()


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
    rcluster: RedisCluster, rapp: conveyor.App
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
    rcluster: RedisCluster, rapp: conveyor.App
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


class AofRedis:
    """A redis-server with AOF (everysec) on a fixed port and dir, so it can be killed and
    started again with its data."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "redis"
        self.dir.mkdir()
        with RedisServer() as probe:  # borrow a free port the usual way
            self.port = probe.port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "",
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            ).stdout.strip()
            != "PONG"
        ):
            assert time.monotonic() < deadline, (self.dir / "redis.log").read_text()
            time.sleep(0.02)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_redis_crash_loses_nothing_acknowledged_a_second_before(tmp_path: Path) -> None:
    server = AofRedis(tmp_path)
    server.start()
    cluster = RedisCluster(tmp_path, server.url)
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
