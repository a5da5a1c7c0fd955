"""The inspector: read and administer jobs — counts, listings, one job, requeue, cancel, purge."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from conveyor.backends.base import Backend, JobFilter, Page
from conveyor.errors import JobNotFound
from conveyor.job import TERMINAL, Job, JobState

__all__ = ["Inspector", "QueueCounts"]


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Jobs in one queue, by state."""

    queue: str
    scheduled: int = 0
    queued: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        """All jobs stored for this queue."""
        return sum(getattr(self, s.value) for s in JobState)


class Inspector:
    """Administration over a backend. `app.inspector` returns one.

    Example:
        for q in await app.inspector.stats():
            print(q.queue, q.queued, q.failed)
        await app.inspector.requeue_all_failed()
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def stats(self, queue: str | None = None) -> list[QueueCounts]:
        """Counts per queue and state, sorted by queue name."""
        counts = await self.backend.counts(queue)
        return [
            QueueCounts(q, **{state.value: n for state, n in per.items()})
            for q, per in sorted(counts.items())
        ]

    async def job(self, job_id: str) -> Job:
        """One job with its attempts. Raises `JobNotFound`."""
        (job,) = await self.backend.get([job_id])
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r} (never stored, or purged)")
        return job

    async def list(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        task: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> Page:
        """One page of jobs in enqueue order; pass `page.next` as `after` for the next."""
        return await self.backend.query(JobFilter(queue, state, task), after, limit)

    async def iter(
        self, *, state: JobState | None = None, queue: str | None = None, task: str | None = None
    ) -> AsyncIterator[Job]:
        """Every matching job, fetched a page at a time."""
        after: str | None = None
        while True:
            page = await self.list(state=state, queue=queue, task=task, after=after, limit=500)
            for job in page.jobs:
                yield job
            if page.next is None:
                return
            after = page.next

    async def requeue(self, job_id: str) -> bool:
        """Put one failed or cancelled job back in its queue (history kept)."""
        return await self.backend.requeue(job_id)

    async def requeue_all_failed(self, *, queue: str | None = None, task: str | None = None) -> int:
        """Requeue every failed (dead-letter) job matching the filters. Returns how many."""
        ids = [job.id async for job in self.iter(state=JobState.FAILED, queue=queue, task=task)]
        n = 0
        for job_id in ids:
            n += await self.backend.requeue(job_id)
        return n

    async def cancel(self, job_id: str, reason: str = "cancelled by an operator") -> JobState:
        """Cancel one job; a running one stops at its next heartbeat. Raises `JobNotFound`."""
        state = await self.backend.cancel(job_id, reason)
        if state is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return state

    async def purge(self, states: Iterable[JobState] = TERMINAL, *, older_than: float = 0) -> int:
        """Delete finished jobs that ended more than `older_than` seconds ago."""
        before = self.backend.clock.now() - older_than
        return await self.backend.purge(states, before=before)
