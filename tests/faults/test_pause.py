"""Pausing a queue while two worker processes drain it: nothing starts once the pause has
propagated (one claim cycle), the rest run after the resume, nothing is lost or run twice.

Runs on SQLite and on Redis (`on_both_stores`); the ledger is kept outside the store.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time

import pytest

import conveyor
from tests.faults.conftest import Cluster, on_both_stores, ready, until

JOBS = 10_000
CONCURRENCY = 8


@on_both_stores
@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_pause_mid_drain_stops_starts_and_resume_finishes_the_rest(
    cluster: Cluster, app: conveyor.App
) -> None:
    record = app.registry.get("record")
    handles = await record.enqueue_many([(i,) for i in range(JOBS)])
    workers = [
        cluster.worker(
            "-c", str(CONCURRENCY), "--lease", "10", name=f"w{i}",
            env={"FAULT_TASK_SLEEP": "0.001"},
        )
        for i in range(2)
    ]  # fmt: skip
    for w in workers:
        await ready(w)

    def starts() -> list[tuple[int, float]]:
        return [(n, at) for ev, n, _, at in cluster.ledger() if ev == "start"]

    await until(lambda: len(starts()) >= JOBS // 4, 30, "a quarter of the jobs to start", 0.01)
    change = await app.inspector.pause("default")
    paused_at = time.time()
    assert change.changed and change.known
    await asyncio.sleep(1.5)  # many claim cycles: anything still starting would show
    before_resume = starts()
    late = [(n, at) for n, at in before_resume if at > paused_at]
    # Only what was claimed before the pause took effect starts after it: at most one claim
    # (the free slots) per worker, and each of those was leased before the pause returned.
    assert len(late) <= 2 * CONCURRENCY, (len(late), cluster.logs())
    claimed = {j.id: j for j in await app.backend.get([handles[n].id for n, _ in late]) if j}
    for n, _ in late:
        job = claimed[handles[n].id]
        assert job.started_at is not None and job.started_at <= paused_at, (n, job, paused_at)
    propagation = max((at for _, at in late), default=paused_at) - paused_at
    assert propagation < 1.0, propagation
    (stats,) = await app.inspector.stats()
    assert stats.paused and stats.queued > 0 and stats.running == 0, stats
    started_before = {n for n, _ in before_resume}
    print(
        f"pause on {cluster.store}: {len(started_before)} jobs started before, "
        f"{len(late)} started after pause() returned (claimed before it), the last "
        f"{propagation * 1000:.1f} ms after"
    )

    resumed_at = time.time()  # before the call: workers may start as soon as it commits
    resumed = await app.inspector.resume("default")
    assert resumed.changed

    async def all_completed() -> bool:
        (s,) = await app.inspector.stats()
        return s.completed == JOBS

    deadline = time.monotonic() + 40
    while not await all_completed():
        assert time.monotonic() < deadline, (await app.inspector.stats(), cluster.logs())
        await asyncio.sleep(0.1)
    for w in workers:
        w.send(signal.SIGTERM)
    for w in workers:
        assert cluster.wait_exit(w, 15) == 0, w.stderr()

    events = cluster.ledger()
    started = collections.Counter(n for ev, n, _, _ in events if ev == "start")
    done = collections.Counter(n for ev, n, _, _ in events if ev == "done")
    assert set(done) == set(range(JOBS))  # nothing lost
    assert max(started.values()) == 1 and max(done.values()) == 1  # none twice
    # Everything that had not started by the pause started after the resume.
    after = {n for ev, n, _, at in events if ev == "start" and at >= resumed_at}
    assert after == set(range(JOBS)) - started_before
    (stats,) = await app.inspector.stats()
    assert (stats.completed, stats.queued, stats.running, stats.failed) == (JOBS, 0, 0, 0)
