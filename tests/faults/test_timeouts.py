"""Timeouts end hung attempts; a blocking sync handler does not starve its own heartbeat."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

import conveyor
from tests.faults.conftest import Cluster, ready


async def _until_state(
    app: conveyor.App, job_id: str, states: set[conveyor.JobState], timeout: float
) -> conveyor.Job:
    deadline = time.monotonic() + timeout
    while True:
        (job,) = await app.backend.get([job_id])
        assert job is not None
        if job.state in states:
            return job
        assert time.monotonic() < deadline, (job.state, job.errors)
        await asyncio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_async_handler_that_never_returns_times_out(
    cluster: Cluster, app: conveyor.App
) -> None:
    worker = cluster.worker("-c", "2", "--lease", "2")
    await ready(worker)
    (handle,) = await app.registry.get("never_returns").enqueue_many([(5,)])
    job = await _until_state(app, handle.id, {conveyor.JobState.FAILED}, 15)
    # timeout=0.5, RetryPolicy(max_attempts=2): timed out, retried, timed out, dead letter.
    assert job.attempts == 2
    assert [e.type for e in job.errors] == ["Timeout", "Timeout"], job.errors
    assert all("0.5" in e.message for e in job.errors), job.errors
    events = cluster.ledger()
    assert [ev for ev, *_ in events] == ["start", "start"]
    worker.send(signal.SIGTERM)
    assert cluster.wait_exit(worker, 10) == 0, worker.stderr()


@pytest.mark.timeout(60)
async def test_blocking_sync_handler_keeps_its_lease(cluster: Cluster, app: conveyor.App) -> None:
    # Two workers: if the first one's lease lapsed, the second would rescue and rerun the job.
    w1 = cluster.worker("-c", "2", "--lease", "2", name="w1")
    await ready(w1)
    (handle,) = await app.registry.get("sleepy").enqueue_many([(9, 8.0)])
    w2 = cluster.worker("-c", "2", "--lease", "2", name="w2")
    await ready(w2)
    job = await _until_state(
        app, handle.id, {conveyor.JobState.COMPLETED, conveyor.JobState.FAILED}, 25
    )
    assert job.state is conveyor.JobState.COMPLETED, job.errors
    assert job.attempts == 1
    assert job.errors == ()
    events = cluster.ledger()
    assert [ev for ev, *_ in events] == ["start", "done"], events
    assert events[1][3] - events[0][3] >= 8.0
    for w in (w1, w2):
        assert "lease lost" not in w.stderr() and "rescued" not in w.stderr(), w.stderr()
        w.send(signal.SIGTERM)
    for w in (w1, w2):
        assert cluster.wait_exit(w, 10) == 0, w.stderr()
