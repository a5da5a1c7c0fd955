"""`FaultyBackend`: wraps any backend and makes chosen operations fail on demand.

For testing how workers and apps behave when the store misbehaves (outages, slow calls),
without a real outage. Real-server outages are tested separately with real processes.

Example:
    faulty = FaultyBackend(MemoryBackend())
    faulty.fail("claim", "settle")      # every claim and settle now raises BackendError
    ...
    faulty.heal()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from conveyor.backends.base import Backend, JobFilter, Page
from conveyor.errors import BackendError
from conveyor.job import Job, JobState, Lease, Outcome

__all__ = ["FaultyBackend"]


class FaultyBackend(Backend):
    """Delegates to `inner`, except operations switched to fail with `fail(...)`."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.clock = inner.clock
        self.failing: set[str] = set()
        self.calls: dict[str, int] = {}
        self.failures = 0

    def fail(self, *operations: str) -> None:
        """Make these operations raise `BackendError` until `heal()`."""
        self.failing.update(operations)

    def heal(self) -> None:
        """Stop failing."""
        self.failing.clear()

    def _enter(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        if op in self.failing:
            self.failures += 1
            raise BackendError(f"injected fault: {op} failed")

    async def enqueue(self, jobs: Sequence[Job]) -> list[bool]:
        self._enter("enqueue")
        return await self.inner.enqueue(jobs)

    async def claim(
        self, queues: Sequence[str], limit: int, lease_for: float, worker: str
    ) -> list[Lease]:
        self._enter("claim")
        return await self.inner.claim(queues, limit, lease_for, worker)

    async def extend(self, leases: Sequence[Lease], lease_for: float) -> list[Lease | None]:
        self._enter("extend")
        return await self.inner.extend(leases, lease_for)

    async def settle(self, outcomes: Sequence[tuple[Lease, Outcome]]) -> list[bool]:
        self._enter("settle")
        return await self.inner.settle(outcomes)

    async def release(self, leases: Sequence[Lease]) -> list[bool]:
        self._enter("release")
        return await self.inner.release(leases)

    async def promote(self) -> int:
        self._enter("promote")
        return await self.inner.promote()

    async def rescue(self) -> int:
        self._enter("rescue")
        return await self.inner.rescue()

    async def purge(self, states: Iterable[JobState], before: float | None = None) -> int:
        self._enter("purge")
        return await self.inner.purge(states, before)

    async def cancel(self, job_id: str, reason: str = "cancelled") -> JobState | None:
        self._enter("cancel")
        return await self.inner.cancel(job_id, reason)

    async def requeue(self, job_id: str) -> bool:
        self._enter("requeue")
        return await self.inner.requeue(job_id)

    async def get(self, ids: Sequence[str]) -> list[Job | None]:
        self._enter("get")
        return await self.inner.get(ids)

    async def counts(self, queue: str | None = None) -> dict[str, dict[JobState, int]]:
        self._enter("counts")
        return await self.inner.counts(queue)

    async def query(self, filter: JobFilter, after: str | None = None, limit: int = 100) -> Page:
        self._enter("query")
        return await self.inner.query(filter, after, limit)

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        self._enter("wait")
        await self.inner.wait(queues, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()
