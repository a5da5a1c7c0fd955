"""Invariant 1 (at-least-once) under SIGKILL: a dead worker's jobs run again, nothing is lost.

The SIGKILL storm runs on SQLite and on Redis (`on_both_stores`).
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from dataclasses import dataclass

import msgspec
import pytest

import conveyor
from tests.faults.conftest import Cluster, Proc, on_both_stores, ready, until

LEASE = 2.0
SWEEP = 1.0  # WorkerConfig.sweep_every default: the maintenance loop's rescue interval


@pytest.mark.timeout(60)
async def test_killed_workers_job_runs_again_within_lease_plus_sweep(
    cluster: Cluster, app: conveyor.App
) -> None:
    first = cluster.worker("-c", "2", "--lease", str(LEASE), name="first")
    await ready(first)
    (handle,) = await app.registry.get("block_first").enqueue_many([(7,)])
    await until(lambda: cluster.starts(first.pid), 15, "the first attempt to start")
    # The rescuer is up before the kill, so what we time is the library's bound, not startup.
    second = cluster.worker("-c", "2", "--lease", str(LEASE), name="second")
    await ready(second)
    assert first.alive()
    killed_at = time.time()
    cluster.kill(first)

    again = await until(lambda: cluster.starts(second.pid), 15, "the job to start again")
    delay = again[0][3] - killed_at
    # The lease was renewed at most lease/4 before the kill, so it cannot expire sooner than
    # 0.75 x lease after it (a rescue before that would break "no double claim").
    assert 0.75 * LEASE - 0.1 <= delay <= LEASE + SWEEP + 2.0, (delay, cluster.logs())

    async def completed() -> conveyor.Job | None:
        (job,) = await app.backend.get([handle.id])
        return job if job is not None and job.state is conveyor.JobState.COMPLETED else None

    deadline = time.monotonic() + 10
    job = await completed()
    while job is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        job = await completed()
    assert job is not None, cluster.logs()
    assert job.attempts == 2
    assert [e.type for e in job.errors] == ["LeaseExpired"]
    assert msgspec.json.decode(job.result) == second.pid
    second.send(signal.SIGTERM)
    assert cluster.wait_exit(second, 10) == 0, second.stderr()


JOBS = 2_000
CONCURRENCY = 8
KILL_EVERY = 2.0


@dataclass(frozen=True)
class Storm:
    """How long a store's storm lasts, and how slow its jobs are."""

    seconds: float
    task_sleep: str  # FAULT_TASK_SLEEP
    misses: int  # kills allowed to land when the victim runs no job


# The issue suggests a task of a few ms, but 2,000 such jobs finish in ~2 s, long before a
# storm gets going. JOBS x task_sleep / (2 workers x CONCURRENCY) is about the storm's length,
# so the two workers stay busy for (nearly) the whole storm, and the kills land on running
# jobs (asserted below).
STORMS = {
    "sqlite": Storm(seconds=20.0, task_sleep="0.15", misses=3),
    "redis": Storm(seconds=16.0, task_sleep="0.12", misses=2),
}


@on_both_stores
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sigkill_storm_loses_nothing(cluster: Cluster, app: conveyor.App) -> None:
    storm = STORMS[cluster.store]
    record = app.registry.get("record")
    handles = await record.enqueue_many([(i,) for i in range(JOBS)])
    ids = [h.id for h in handles]

    def start(slot: int) -> Proc:
        return cluster.worker(
            "-c", str(CONCURRENCY), "--lease", str(LEASE), "--grace", "5",
            name=f"w{slot}", env={"FAULT_TASK_SLEEP": storm.task_sleep},
        )  # fmt: skip

    workers = [start(0), start(1)]
    await ready(workers[0])
    await ready(workers[1])
    killed: list[Proc] = []
    hit_running = 0
    kills_that_hit = 0
    progress: list[int] = []  # distinct jobs done at each kill
    began = time.monotonic()
    slot = 0
    for k in range(1, int(storm.seconds / KILL_EVERY) + 1):
        await asyncio.sleep(max(0.0, began + k * KILL_EVERY - time.monotonic()))
        victim = workers[slot]
        assert victim.alive(), victim.stderr()
        cluster.kill(victim)
        killed.append(victim)
        events = cluster.ledger()
        opened = collections.Counter((n, p) for ev, n, p, _ in events if ev == "start")
        opened.subtract((n, p) for ev, n, p, _ in events if ev == "done")
        hits = sum(1 for (_, p), k in opened.items() if p == victim.pid and k > 0)
        hit_running += hits
        kills_that_hit += hits > 0
        progress.append(len({n for ev, n, _, _ in events if ev == "done"}))
        workers[slot] = start(slot)
        slot = 1 - slot

    async def all_completed() -> bool:
        (stats,) = await app.inspector.stats()
        return stats.completed == JOBS

    storm_end = time.monotonic()
    deadline = storm_end + 45
    while not await all_completed():
        assert time.monotonic() < deadline, (await app.inspector.stats(), cluster.logs())
        await asyncio.sleep(0.25)
    drained_at = time.monotonic()
    for w in workers:
        await ready(w)  # a SIGTERM before the handlers are installed would just kill it
        w.send(signal.SIGTERM)
    for w in workers:
        assert cluster.wait_exit(w, 15) == 0, w.stderr()
    print(
        f"storm on {cluster.store}: {len(killed)} kills, {hit_running} running jobs hit, "
        f"jobs done at each kill {progress}, drained {drained_at - storm_end:.1f} s after the storm"
    )

    kills = len(killed)
    assert kills == int(storm.seconds / KILL_EVERY)
    # The storm really hit running jobs (otherwise this test proves nothing).
    assert kills_that_hit >= kills - storm.misses, (kills_that_hit, kills, progress)

    events = cluster.ledger()
    started = collections.Counter(n for ev, n, _, _ in events if ev == "start")
    done = collections.Counter(n for ev, n, _, _ in events if ev == "done")
    # 1. No job lost: every job's handler finished at least once.
    assert set(done) == set(range(JOBS)), sorted(set(range(JOBS)) - set(done))[:20]
    # 2. Every job completed in the store, and the dead letter is empty.
    (stats,) = await app.inspector.stats()
    assert (stats.completed, stats.failed, stats.queued, stats.running, stats.scheduled) == (
        JOBS, 0, 0, 0, 0,
    ), stats  # fmt: skip
    failed = await app.inspector.list(state=conveyor.JobState.FAILED)
    assert failed.jobs == []
    # 3. Extra executions are bounded by what the kills interrupted.
    extra = sum(started.values()) - JOBS
    killed_pids = {p.pid for p in killed}
    per_run = collections.Counter((n, p) for ev, n, p, _ in events if ev == "start")
    per_run.subtract((n, p) for ev, n, p, _ in events if ev == "done")
    cut_short = sum(k for (_, p), k in per_run.items() if k > 0 and p in killed_pids)
    survivors_cut = [(n, p) for (n, p), k in per_run.items() if k > 0 and p not in killed_pids]
    assert survivors_cut == [], survivors_cut  # only killed processes left runs unfinished
    assert cut_short >= 1
    assert cut_short <= extra <= kills * CONCURRENCY, (cut_short, extra, kills)
    # 4. The store agrees with the ledger: each re-run was caused by an expired lease, and
    #    the stored result came from a worker that really finished the job.
    jobs = await app.backend.get(ids)
    finished_by = collections.defaultdict(set)
    for ev, n, p, _ in events:
        if ev == "done":
            finished_by[n].add(p)
    for n, job in enumerate(jobs):
        assert job is not None
        assert job.attempts >= started[n], (n, job.attempts, started[n])
        assert [e.type for e in job.errors] == ["LeaseExpired"] * (job.attempts - 1), (n, job)
        assert msgspec.json.decode(job.result) in finished_by[n], (n, job.result)
