"""The inspector over real stores: counts from the state table, paged bulk requeue."""

from __future__ import annotations

from pathlib import Path

import pytest

import conveyor
from conveyor.backends.base import ClaimRequest
from conveyor.backends.memory import MemoryBackend
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.clock import FakeClock
from conveyor.fields import STATES
from conveyor.inspector import Inspector
from conveyor.job import AttemptError, Failed, JobState
from conveyor.testing import FaultyBackend
from conveyor.testing.contract import make_job


async def test_queue_counts_have_one_attribute_per_state(app: conveyor.App) -> None:
    @app.task(queue="emails")
    def send(to: str) -> None: ...

    await send.enqueue("a")
    await send.options(delay=60).enqueue("b")
    (counts,) = await app.inspector.stats()
    assert counts.queue == "emails" and counts.total == 2
    assert (counts.queued, counts.scheduled, counts.failed) == (1, 1, 0)
    assert counts[JobState.QUEUED] == 1
    assert set(counts.by_state) == set(STATES)  # every state, zero or not
    with pytest.raises(AttributeError):
        _ = counts.nonsense  # type: ignore[attr-defined]


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_requeue_all_failed_takes_one_store_call_per_page(store: str, tmp_path: Path) -> None:
    clock = FakeClock()
    inner = (
        MemoryBackend(clock=clock)
        if store == "memory"
        else SQLiteBackend(tmp_path / "j.db", clock=clock)
    )
    backend = FaultyBackend(inner)
    try:
        jobs = [make_job(clock, max_attempts=1) for _ in range(1203)]
        await backend.enqueue(jobs)
        leases = await backend.claim(ClaimRequest(["default"], 2000, 30, "w"))
        error = AttemptError(1, "ValueError", "boom")
        await backend.settle([(lease, Failed(error)) for lease in leases])
        seen: list[int] = []
        inspector = Inspector(backend)
        assert await inspector.requeue_all_failed(progress=seen.append) == 1203
        assert seen == [500, 1000, 1203]
        assert backend.calls["requeue"] == 3  # one store call per page, not one per job
        assert await inspector.count(JobState.QUEUED) == 1203
        assert await inspector.count(JobState.FAILED) == 0
        (again,) = await backend.get([jobs[0].id])
        assert again is not None and again.errors == (error,)  # history kept
    finally:
        await backend.aclose()
