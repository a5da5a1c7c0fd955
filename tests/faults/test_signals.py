"""Graceful shutdown at the CLI edge: SIGTERM stops claiming, waits `grace`, puts the rest back.

Each scenario runs with long jobs of both handler kinds: ``sync`` (a thread, the default
kind of task) and ``async`` (a coroutine on the worker's loop).
"""

from __future__ import annotations

import asyncio
import signal
import time

import psutil
import pytest

import conveyor
from tests.faults.conftest import Cluster, ready, until

LONG = 10.0
QUICK = 0.2
GRACE = 3.0
SLACK = 3.0  # seconds a process may take to exit after its grace (closing the store, ...)
TOLERANCE = 0.25  # a job claimed just before the signal may write its "start" a bit later

LONG_TASK = {"sync": "sleepy", "async": "asleep"}


async def _enqueue(
    app: conveyor.App, kind: str, longs: int, quicks: int
) -> tuple[list[str], list[str]]:
    long_task = app.registry.get(LONG_TASK[kind])
    quick_task = app.registry.get("sleepy")
    long_ids = [h.id for h in await long_task.enqueue_many([(i, LONG) for i in range(longs)])]
    quick_ids = [
        h.id for h in await quick_task.enqueue_many([(100 + i, QUICK) for i in range(quicks)])
    ]
    return long_ids, quick_ids


def _assert_put_back(jobs: list[conveyor.Job | None]) -> None:
    for job in jobs:
        assert job is not None
        assert job.state in (conveyor.JobState.QUEUED, conveyor.JobState.SCHEDULED), job
        assert job.attempts == 1, job
        assert [e.type for e in job.errors] == ["Interrupted"], job.errors


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.timeout(60)
async def test_sigterm_finishes_within_grace_and_puts_the_rest_back(
    cluster: Cluster, app: conveyor.App, kind: str
) -> None:
    long_ids, quick_ids = await _enqueue(app, kind, longs=2, quicks=12)
    worker = cluster.worker("-c", "4", "--grace", str(GRACE), "--lease", "2")
    await ready(worker)
    # Both long jobs and a few quick ones running (the quick ones cycle through two slots).
    await until(lambda: len(cluster.starts()) >= 5, 20, "jobs to be running")
    signalled = time.time()
    worker.send(signal.SIGTERM)
    code = cluster.wait_exit(worker, GRACE + SLACK + 10)
    took = time.time() - signalled

    assert code == 0, worker.stderr()

    events = [e for e in cluster.ledger() if e[3] <= signalled + GRACE + SLACK + 10]
    # No job starts after the signal.
    late = [e for e in events if e[0] == "start" and e[3] > signalled + TOLERANCE]
    assert late == [], late
    # Quick jobs running at the signal finished within grace and are completed.
    started_quick = {n for ev, n, _, _ in events if ev == "start" and n >= 100}
    done_quick = {n: at for ev, n, _, at in events if ev == "done" and n >= 100}
    assert started_quick <= set(done_quick), (started_quick, done_quick)
    assert all(at <= signalled + GRACE for at in done_quick.values())
    quick_jobs = await app.backend.get(quick_ids)
    for n, job in enumerate(quick_jobs, start=100):
        assert job is not None
        if n in started_quick:
            assert job.state is conveyor.JobState.COMPLETED, job
        else:  # never started: still waiting, and a claim handed back used no attempt
            assert job.state is conveyor.JobState.QUEUED, job
            assert not job.errors and job.attempts == 0, job
    # The long jobs are back in the queue, with an "Interrupted" attempt error.
    _assert_put_back(await app.backend.get(long_ids))
    (stats,) = await app.inspector.stats()
    assert stats.failed == 0 and stats.running == 0, stats
    assert stats.total == len(long_ids) + len(quick_ids), stats
    # The process exited within grace plus a little (checked last: the rest holds regardless).
    assert took <= GRACE + SLACK, (
        f"exited {took:.1f} s after SIGTERM; grace is {GRACE} s", worker.stderr()[-2000:],
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.timeout(60)
async def test_second_sigterm_cancels_at_once(
    cluster: Cluster, app: conveyor.App, kind: str
) -> None:
    long_ids, _ = await _enqueue(app, kind, longs=3, quicks=0)
    worker = cluster.worker("-c", "4", "--grace", "30", "--lease", "2")
    await ready(worker)
    await until(lambda: len(cluster.starts()) >= 3, 20, "the long jobs to be running")
    signalled = time.time()
    worker.send(signal.SIGTERM)
    await asyncio.sleep(0.5)  # two signals sent back to back may merge into one (POSIX)
    time_between = time.time() - signalled
    assert worker.alive(), "the first SIGTERM must not end a 30 s grace at once"
    worker.send(signal.SIGTERM)
    code = cluster.wait_exit(worker, 20)
    took = time.time() - signalled - time_between
    assert code == 0, worker.stderr()
    _assert_put_back(await app.backend.get(long_ids))
    assert "cancelling 3 job(s)" in worker.stderr(), worker.stderr()
    assert took <= 2.5, (
        f"exited {took:.1f} s after the second SIGTERM (grace is 30 s)", worker.stderr()[-2000:],
    )  # fmt: skip


@pytest.mark.timeout(60)
async def test_sigterm_to_the_supervisor_stops_every_child_cleanly(
    cluster: Cluster, app: conveyor.App
) -> None:
    await app.registry.get("asleep").enqueue_many([(i, 0.5) for i in range(200)])
    supervisor = cluster.worker("-p", "2", "-c", "2", "--grace", str(GRACE), name="supervisor")
    # Children run without -v (it is a global option); readiness = both ran a job.
    await until(
        lambda: len({p for _, _, p, _ in cluster.starts()}) >= 2, 30, "both children to run jobs"
    )
    children = supervisor.remember_descendants()
    assert len(children) == 2, children
    assert {p for _, _, p, _ in cluster.starts()} == children
    signalled = time.time()
    supervisor.send(signal.SIGTERM)
    code = cluster.wait_exit(supervisor, GRACE + SLACK + 10)
    took = time.time() - signalled
    assert code == 0, supervisor.stderr()
    assert took <= GRACE + SLACK, took
    assert not [p for p in children if psutil.pid_exists(p) and _not_zombie(p)], children
    late = [e for e in cluster.ledger() if e[0] == "start" and e[3] > signalled + TOLERANCE]
    assert late == []
    (stats,) = await app.inspector.stats()
    assert stats.failed == 0 and stats.running == 0, stats
    assert stats.total == 200


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
