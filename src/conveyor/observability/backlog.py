"""The age of each queue's oldest ready job, read cheaply (one one-job page per queue): for
the Prometheus gauges and the dashboard's queues page (no extra dependency)."""

from __future__ import annotations

from collections.abc import Sequence

from conveyor.backends.base import Backend, JobFilter
from conveyor.job import JobState

__all__ = ["oldest_ready_age"]


async def oldest_ready_age(backend: Backend, queues: Sequence[str]) -> dict[str, float]:
    """Seconds each queue's oldest ready job has waited (store clock); queues with none
    ready are left out. One ``query`` of one job per queue.

    (``conveyor.cli.autoscale`` has a richer one over all queues at once, leaving out paused
    queues and held lanes; this one reports every ready job, as an operator sees it.)
    """
    now = backend.clock.now()
    ages: dict[str, float] = {}
    for queue in queues:
        page = await backend.query(JobFilter(queue=queue, state=JobState.QUEUED), limit=1)
        if page.jobs:
            job = page.jobs[0]
            ages[queue] = max(0.0, now - max(job.run_at, job.enqueued_at))
    return ages
