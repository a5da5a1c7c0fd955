"""The backend contract: the async, batch-first, fenced operations every job store provides.

A backend stores `Job` records and moves them through the lifecycle in atomic steps. It
sees payloads and results as opaque bytes and never imports user code. Every transition of
a running job is *fenced*: it applies only while the caller's lease token is still the
job's current one, so a stale worker can never settle or extend a job it lost.

Implementations subclass `Backend`. `conveyor.testing.contract.BackendContract` is the
test suite every backend must pass unchanged.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from conveyor.clock import Clock
from conveyor.job import Job, JobState, Lease, Outcome

__all__ = ["Backend", "Counters", "JobFilter", "Page"]


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs `Backend.query` returns. Every field left `None` matches everything."""

    queue: str | None = None
    state: JobState | None = None
    task: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query: the jobs, oldest first, and the cursor of the next page."""

    jobs: list[Job]
    next: str | None


class Counters(Protocol):
    """Optional capability: shared counters for distributed rate limits and locks."""

    async def incr(self, key: str, amount: int, ttl: float) -> int: ...


class Backend(abc.ABC):
    """A durable store of jobs. See DESIGN.md, "The backend contract".

    Ordering of `claim`: queues in the order given, then higher priority first, then
    earlier `run_at`, then enqueue order. Tokens are fresh on every claim.
    """

    clock: Clock

    #: How the producer coalesces concurrent single enqueues for this store: at most
    #: `enqueue_batch` jobs per call, `enqueue_concurrency` calls in flight. An in-process
    #: store wants one large call; a networked one wants several smaller calls in flight,
    #: so the server works on one batch while the callers of the last one build the next.
    enqueue_batch: int = 1000
    enqueue_concurrency: int = 1

    # -- producing -------------------------------------------------------------------------

    @abc.abstractmethod
    async def enqueue(self, jobs: Sequence[Job]) -> list[bool]:
        """Insert jobs. A job whose `key` is held by another job is skipped (`False`).

        A key is held while its job is live (scheduled, queued, running), and after it ends
        (completed or failed) until `unique_until` passes or the job is purged. Cancelled
        jobs release their key. Jobs with `run_at` in the future are stored `scheduled`.
        """

    # -- running ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def claim(
        self, queues: Sequence[str], limit: int, lease_for: float, worker: str
    ) -> list[Lease]:
        """Atomically move up to `limit` ready jobs to running and lease them.

        Scheduled jobs that are due count as ready. Each claim increments `attempts`.
        """

    @abc.abstractmethod
    async def extend(self, leases: Sequence[Lease], lease_for: float) -> list[Lease | None]:
        """Heartbeat. `None` for a lease that was lost or whose job had a cancel requested
        (the job is then moved to cancelled here); the caller must stop that execution and
        must not settle it."""

    @abc.abstractmethod
    async def settle(self, outcomes: Sequence[tuple[Lease, Outcome]]) -> list[bool]:
        """Apply outcomes where the token still matches; a stale lease → `False`, no change."""

    @abc.abstractmethod
    async def release(self, leases: Sequence[Lease]) -> list[bool]:
        """Give back leases on jobs that never started (a worker stopping right after a
        claim): each job is queued again as if it had not been claimed, the attempt not
        counted; one whose cancel was requested meanwhile ends cancelled. Fenced like
        `settle`: `False` for a stale lease, no change."""

    # -- maintenance -----------------------------------------------------------------------

    @abc.abstractmethod
    async def promote(self) -> int:
        """Move due scheduled jobs to queued. Returns how many moved."""

    @abc.abstractmethod
    async def rescue(self) -> int:
        """Requeue running jobs whose lease expired (or fail them when attempts are exhausted;
        cancel them when a cancel was requested). Returns how many were rescued."""

    @abc.abstractmethod
    async def purge(self, states: Iterable[JobState], before: float | None = None) -> int:
        """Delete jobs in terminal `states` whose retention ended (`finished_at + keep_for`
        ≤ now) or, with `before`, that finished before that time. Returns how many."""

    # -- administration --------------------------------------------------------------------

    @abc.abstractmethod
    async def cancel(self, job_id: str, reason: str = "cancelled") -> JobState | None:
        """Cancel a job: scheduled or queued → cancelled at once; running → cancel requested,
        seen at its next heartbeat. Returns the job's state afterwards, `None` if unknown."""

    @abc.abstractmethod
    async def requeue(self, job_id: str) -> bool:
        """Failed or cancelled → queued, keeping id, payload and attempt history; the job gets
        a fresh allowance of attempts. `False` if the job is missing or in another state."""

    @abc.abstractmethod
    async def get(self, ids: Sequence[str]) -> list[Job | None]:
        """Jobs by id, `None` for unknown ids, in the order asked."""

    @abc.abstractmethod
    async def counts(self, queue: str | None = None) -> dict[str, dict[JobState, int]]:
        """Job counts per queue and state (states with zero jobs may be omitted)."""

    @abc.abstractmethod
    async def query(self, filter: JobFilter, after: str | None = None, limit: int = 100) -> Page:
        """Jobs matching `filter`, in enqueue order, `limit` at a time; pass `Page.next` back
        as `after` for the following page."""

    @abc.abstractmethod
    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when work may be ready in `queues`, or after `timeout` seconds. A hint only:
        callers must claim to find out."""

    async def wait_for_lease(
        self, queues: Sequence[str], timeout: float, worker: str, lease_for: float
    ) -> list[Lease]:
        """`wait`, for `worker` with a free slot. A store may hand it a job enqueued while it
        waits, already leased to it for `lease_for` seconds, which saves the claim round trip;
        the caller must then run (or settle) what it gets. Nothing returned means the same as
        `wait` returning: claim to find out. The default does just that."""
        await self.wait(queues, timeout)
        return []

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections and threads. Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
