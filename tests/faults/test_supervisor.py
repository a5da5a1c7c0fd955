"""`conveyor worker -p N`: the supervisor restarts dead children; orphans stop on their own."""

from __future__ import annotations

import asyncio
import signal
import time

import psutil
import pytest

import conveyor
from tests.faults.conftest import Cluster, Proc, until

GRACE = 3.0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _children_running_jobs(cluster: Cluster, supervisor: Proc, n: int) -> set[int]:
    """Wait until `n` live children of `supervisor` have each started a job."""

    def ready() -> set[int] | None:
        assert supervisor.alive(), supervisor.stderr()
        kids = {p for p in supervisor.remember_descendants() if _alive(p)}
        ran = {p for _, _, p, _ in cluster.starts()}
        return kids if len(kids) == n and kids <= ran else None

    return await until(ready, 30, f"{n} children running jobs")


async def _all_done(app: conveyor.App, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        (stats,) = await app.inspector.stats()
        if stats.completed == total:
            return
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.1)


@pytest.mark.timeout(90)
async def test_supervisor_restarts_a_killed_child_and_its_jobs_run_again(
    cluster: Cluster, app: conveyor.App
) -> None:
    total = 300
    await app.registry.get("asleep").enqueue_many([(i, 0.2) for i in range(total)])
    sup = cluster.worker(
        "-p", "2", "-c", "4", "--lease", "2", "--grace", str(GRACE), name="supervisor"
    )
    first = await _children_running_jobs(cluster, sup, 2)
    victim = min(first)
    psutil.Process(victim).kill()
    # A new child replaces it (restart delay 0.5 s + startup) and takes jobs.
    kids = await until(
        lambda: (k := {p for p in sup.remember_descendants() if _alive(p)}) - first and k,
        15, "a replacement child",
    )  # fmt: skip
    assert len(kids) == 2 and victim not in kids, kids
    await _all_done(app, total, 60)
    (stats,) = await app.inspector.stats()
    assert (stats.completed, stats.failed, stats.total) == (total, 0, total), stats
    done = {n for ev, n, _, _ in cluster.ledger() if ev == "done"}
    assert done == set(range(total))
    await until(lambda: all(_alive(p) for p in kids), 5, "children to settle")
    sup.send(signal.SIGTERM)
    assert cluster.wait_exit(sup, GRACE + 10) == 0, sup.stderr()
    assert not [p for p in kids if _alive(p)]
    assert "restarting it" in sup.stderr(), sup.stderr()


@pytest.mark.timeout(60)
async def test_children_of_a_killed_supervisor_stop_gracefully(
    cluster: Cluster, app: conveyor.App
) -> None:
    total = 400
    ids = [
        h.id
        for h in await app.registry.get("asleep").enqueue_many([(i, 0.3) for i in range(total)])
    ]
    sup = cluster.worker("-p", "2", "-c", "4", "--grace", str(GRACE), name="supervisor")
    kids = await _children_running_jobs(cluster, sup, 2)
    killed_at = time.time()
    sup.send(signal.SIGKILL)  # only the supervisor: it cannot forward anything to its children
    assert cluster.wait_exit(sup, 5) == -signal.SIGKILL
    # Each child notices within ~1 s (its orphan watch), then stops like on SIGTERM.
    await until(lambda: not any(_alive(p) for p in kids), 1 + GRACE + 5, "orphans to exit")
    # Nothing was lost: every job is completed or back in the queue; none is failed or held.
    jobs = await app.backend.get(ids)
    states = {j.state for j in jobs if j is not None}
    assert None not in jobs
    assert states <= {conveyor.JobState.COMPLETED, conveyor.JobState.QUEUED}, states
    late = [e for e in cluster.starts() if e[3] > killed_at + 1.5]
    assert late == [], late  # they stopped claiming once they noticed
    for job in jobs:
        assert job is not None
        assert {e.type for e in job.errors} <= {"Interrupted"}, job.errors


@pytest.mark.timeout(60)
async def test_supervised_children_keep_the_global_options(
    cluster: Cluster, app: conveyor.App
) -> None:
    # `conveyor -v worker -p 2 ...`: the children should log at INFO like a single worker.
    await app.registry.get("asleep").enqueue_many([(i, 0.2) for i in range(40)])
    sup = cluster.worker("-p", "2", "-c", "2", "--grace", str(GRACE), name="supervisor")
    kids = await _children_running_jobs(cluster, sup, 2)
    await asyncio.sleep(0.5)
    sup.send(signal.SIGTERM)
    assert cluster.wait_exit(sup, GRACE + 10) == 0, sup.stderr()
    assert not [p for p in kids if _alive(p)]
    starting = [line for line in sup.stderr().splitlines() if "starting: queues=" in line]
    assert len(starting) == 2, (
        "children of `conveyor -v worker -p 2` lost -v (no INFO 'starting' line)",
        sup.stderr(),
    )
