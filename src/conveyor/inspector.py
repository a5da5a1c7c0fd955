"""The inspector: read and administer jobs — counts, listings, one job, requeue, cancel, purge,
pausing queues."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from conveyor.backends.base import Backend, JobFilter, Page
from conveyor.capabilities import QueueControl, require
from conveyor.errors import JobNotFound
from conveyor.fields import STATES
from conveyor.job import TERMINAL, Job, JobState
from conveyor.names import check_queue

__all__ = ["Inspector", "PauseChange", "QueueCounts"]

log = logging.getLogger("conveyor.inspector")


_BY_NAME = {s.value: s for s in STATES}


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Jobs in one queue, by state: ``counts.queued``, ``counts.failed``, ... (one attribute
    per `JobState`, derived from the state table) or ``counts[JobState.QUEUED]``.

    Attributes:
        queue: the queue's name.
        by_state: the count of every state (0 for states with no jobs).
        paused: whether the queue is paused (`Inspector.pause`): claims take none of its jobs.
    """

    queue: str
    by_state: Mapping[JobState, int] = field(default_factory=dict)
    paused: bool = False

    def __getitem__(self, state: JobState) -> int:
        return self.by_state.get(state, 0)

    def __getattr__(self, name: str) -> int:
        state = _BY_NAME.get(name)
        if state is None:
            raise AttributeError(f"QueueCounts has no attribute {name!r}")
        return self.by_state.get(state, 0)

    @property
    def total(self) -> int:
        """All jobs stored for this queue."""
        return sum(self.by_state.values())


@dataclass(frozen=True, slots=True)
class PauseChange:
    """What `Inspector.pause` / `Inspector.resume` did.

    Attributes:
        queue: the queue's name.
        changed: `False` if the queue was paused (for `resume`: running) already.
        known: `False` if no job in the store uses the queue yet (allowed: a queue can be
            paused before its first job; but it may be a typo).
    """

    queue: str
    changed: bool
    known: bool


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
        """Counts per queue and state, sorted by queue name, each marked `paused` if it is
        (a paused queue with no jobs is listed too)."""
        counts = await self.backend.counts(queue)
        paused: set[str] = set()
        if isinstance(self.backend, QueueControl):  # a store without it pauses nothing
            paused = set(await self.backend.paused())
            if queue is not None:
                paused &= {queue}
        return [
            QueueCounts(
                q, {state: counts.get(q, {}).get(state, 0) for state in STATES}, q in paused
            )
            for q in sorted(counts.keys() | paused)
        ]

    async def pause(self, queue: str) -> PauseChange:
        """Pause `queue` for every worker on every host: from the store's next claim on, none
        of its jobs start (and the Redis handoff delivers none); running jobs finish;
        enqueues are still accepted. Lasts until `resume`, across restarts.

        Example:
            await app.inspector.pause("emails")
        """
        control = require(self.backend, QueueControl, "inspector.pause()")
        check_queue(queue)
        known = await self._known(queue)
        changed = await control.pause(queue)  # last: in effect when this returns
        if not known:
            log.warning("paused queue %r, which no job in the store uses yet", queue)
        return PauseChange(queue, changed, known)

    async def resume(self, queue: str) -> PauseChange:
        """Let workers claim from `queue` again (idle ones wake at once)."""
        control = require(self.backend, QueueControl, "inspector.resume()")
        check_queue(queue)
        changed = await control.resume(queue)
        return PauseChange(queue, changed, await self._known(queue))

    async def paused(self) -> list[str]:
        """The paused queues, by name."""
        return await require(self.backend, QueueControl, "inspector.paused()").paused()

    async def _known(self, queue: str) -> bool:
        counts = await self.backend.counts(queue)
        return any(n for per in counts.values() for n in per.values())

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

    async def requeue_all_failed(
        self,
        *,
        queue: str | None = None,
        task: str | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        """Requeue every failed (dead-letter) job matching the filters, one store call per
        page of jobs. Returns how many; `progress(n)` is called after each page with the
        number requeued so far.

        The cursor moves on in enqueue order, so a job that fails again meanwhile is not
        requeued twice by one call; one that can't be requeued (its unique key is held by a
        newer job) is passed over.
        """
        done, after = 0, None
        wanted = JobFilter(queue=queue, state=JobState.FAILED, task=task)
        while True:
            page = await self.backend.query(wanted, after, 500)
            if not page.jobs:
                return done
            done += sum(await self.backend.requeue_many([job.id for job in page.jobs]))
            if progress is not None:
                progress(done)
            if page.next is None:
                return done
            after = page.next

    async def count(self, state: JobState, *, queue: str | None = None) -> int:
        """How many jobs are in `state` (in `queue`, or in all queues)."""
        counts = await self.backend.counts(queue)
        return sum(per.get(state, 0) for per in counts.values())

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
