"""Invariant 2 (fencing): a worker frozen past its lease can't overwrite the job's real outcome."""

from __future__ import annotations

import asyncio
import signal
import time

import msgspec
import pytest

import conveyor
from tests.faults.conftest import Cluster, Proc, on_both_stores, ready, until, write_locked


async def _freeze(cluster: Cluster, proc: Proc) -> None:
    """SIGSTOP `proc` (on SQLite: at a moment it holds no write lock).

    A process frozen inside a write transaction would stall every other process for the
    busy timeout; that is SQLite's nature, not what this test is about.
    """
    for _ in range(100):
        proc.send(signal.SIGSTOP)
        await asyncio.sleep(0.02)
        if cluster.store != "sqlite" or not write_locked(cluster.db):
            return
        proc.send(signal.SIGCONT)
        await asyncio.sleep(0.05)
    raise AssertionError("could not freeze the worker outside a write transaction")


# record: the handler sleeps in a thread, so when A thaws its heartbeat or its settle may meet
# the new token first. stall_loop: the handler blocks A's event loop, so A thaws inside the
# handler and must try to settle before any heartbeat can run: the fenced settle path.
@on_both_stores
@pytest.mark.parametrize("task", ["record", "stall_loop"])
@pytest.mark.timeout(60)
async def test_stale_worker_cannot_overwrite_the_rescuers_result(
    cluster: Cluster, app: conveyor.App, task: str
) -> None:
    a = cluster.worker("-c", "1", "--lease", "2", name="A", env={"FAULT_TASK_SLEEP": "4"})
    await ready(a)
    (handle,) = await app.registry.get(task).enqueue_many([(1,)])
    await until(lambda: cluster.starts(a.pid), 15, "A to start the job")
    await _freeze(cluster, a)
    frozen_at = time.monotonic()

    b = cluster.worker("-c", "1", "--lease", "2", name="B", env={"FAULT_TASK_SLEEP": "0.2"})

    async def completed_by_b() -> conveyor.Job | None:
        (job,) = await app.backend.get([handle.id])
        assert job is not None
        if job.state is conveyor.JobState.COMPLETED:
            return job
        return None

    job = None
    deadline = time.monotonic() + 20
    while job is None:
        assert time.monotonic() < deadline, cluster.logs()
        await asyncio.sleep(0.1)
        job = await completed_by_b()
    assert msgspec.json.decode(job.result) == b.pid
    assert time.monotonic() - frozen_at < 20
    assert a.alive()

    a.send(signal.SIGCONT)
    # A wakes up with its 4 s sleep over: it finishes the handler (at-least-once: the side
    # effect happens twice), then either its heartbeat or its settle meets the new token.
    await until(
        lambda: [e for e in cluster.ledger() if e[0] == "done" and e[2] == a.pid],
        10, "A's handler to finish",
    )  # fmt: skip
    await until(lambda: "lease lost" in a.stderr(), 10, "A to report its lost lease")
    await asyncio.sleep(1.0)  # room for any late settle from A to (wrongly) land

    (final,) = await app.backend.get([handle.id])
    assert final is not None
    assert final.state is conveyor.JobState.COMPLETED
    assert msgspec.json.decode(final.result) == b.pid  # B's outcome stands
    assert final.attempts == 2
    assert [e.type for e in final.errors] == ["LeaseExpired"]
    (stats,) = await app.inspector.stats()
    assert (stats.total, stats.completed) == (1, 1), stats
    events = cluster.ledger()
    assert sorted((ev, p) for ev, _, p, _ in events) == sorted(
        [("start", a.pid), ("done", a.pid), ("start", b.pid), ("done", b.pid)]
    )
    # Both workers still run, and stop cleanly.
    for w in (a, b):
        w.send(signal.SIGTERM)
    for w in (a, b):
        assert cluster.wait_exit(w, 10) == 0, w.stderr()
    assert "lost=1" in a.stderr(), a.stderr()
    if task == "stall_loop":
        assert "lease lost before settle" in a.stderr(), a.stderr()
