"""Checkpoints under SIGKILL: a killed worker's job resumes from its last saved checkpoint.

Runs on SQLite and on Redis (`on_both_stores`).
"""

from __future__ import annotations

import sys

import msgspec
import pytest

import conveyor
from tests.faults.apps.checkpointer import build
from tests.faults.conftest import Cluster, Proc, on_both_stores, ready, until, until_async

LEASE = 2.0
PAGES = 200


@on_both_stores
@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_killed_jobs_next_attempt_resumes_from_its_last_checkpoint(
    cluster: Cluster,
) -> None:
    def start(name: str) -> Proc:
        argv = [sys.executable, "-m", "conveyor", "-v", "worker",
                "tests.faults.apps.checkpointer:app", "-c", "2", "--lease", str(LEASE)]  # fmt: skip
        return cluster.spawn(name, argv)

    first = start("first")
    await ready(first)
    app = build(cluster.url)
    try:
        handle = await app.registry.get("pages").enqueue(PAGES)

        def saved(pid: int) -> list[int]:
            return [n for e, n, p, _ in cluster.ledger() if e == "saved" and p == pid]

        await until(lambda: len(saved(first.pid)) >= 20, 15, "the first attempt to save 20")
        cluster.kill(first)
        last = max(saved(first.pid))
        second = start("second")
        await ready(second)

        async def done() -> conveyor.Job | None:
            job = await handle.get()
            return job if job.state is conveyor.JobState.COMPLETED else None

        job = await until_async(done, 30, "the job to complete after the rescue")
        assert isinstance(job, conveyor.Job)
        resumes = [n for e, n, p, _ in cluster.ledger() if e == "resume" and p == second.pid]
        # The kill may land between a save and its ledger line: at most one page more.
        assert resumes and last <= resumes[0] <= last + 1, (last, resumes, cluster.logs())
        assert resumes[0] < PAGES  # resumed mid-way, not from a finished checkpoint
        assert [e.type for e in job.errors] == ["LeaseExpired"]
        assert job.result is not None and msgspec.json.decode(job.result) == second.pid
        assert job.checkpoint == str(PAGES).encode()
    finally:
        await app.aclose()
