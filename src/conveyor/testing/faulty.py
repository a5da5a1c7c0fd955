"""`FaultyBackend`: wraps any store and makes chosen operations fail on demand.

For testing how workers and apps behave when the store misbehaves (outages, slow calls),
without a real outage. Real-server outages are tested separately with real processes.

It is generic: every storage hook of the contract and every capability method of the
wrapped store (counters, locks, presence, and whatever a store adds) goes through the same
fault check, named by the public operation (``"claim"``, ``"incr"``, ...), so a new
operation needs no code here.

Example:
    faulty = FaultyBackend(MemoryBackend())
    faulty.fail("claim", "settle")      # every claim and settle now raises BackendError
    ...
    faulty.heal()
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from conveyor.backends.base import Backend, ClaimRequest, JobFilter, Page
from conveyor.errors import BackendError
from conveyor.job import Job, JobState, Lease, Outcome

__all__ = ["FaultyBackend"]


class FaultyBackend(Backend):
    """Delegates to `inner`, except operations switched to fail with `fail(...)`.

    The contract's guards run here (once); the storage hooks delegate to `inner`'s. A
    capability method of `inner` (``incr``, ``acquire_lock``, ...) is reached through
    attribute access and fails like any operation, so `isinstance(faulty, Locks)` holds
    exactly when it holds for `inner`.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.clock = inner.clock
        self.enqueue_batch = inner.enqueue_batch
        self.enqueue_concurrency = inner.enqueue_concurrency
        self.cross_queue_dependencies = inner.cross_queue_dependencies
        self.failing: set[str] = set()
        self.calls: dict[str, int] = {}
        self.failures = 0

    def __repr__(self) -> str:
        return f"FaultyBackend({self.inner!r})"

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

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks: the inner store's capabilities.
        if name.startswith("_") or name == "inner":
            raise AttributeError(name)
        attr = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        return self._faulty(name, attr)

    def _faulty(self, op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            self._enter(op)
            return await fn(*args, **kwargs)

        return call

    # -- the storage hooks, each a fault point named by its public operation ----------------

    async def _enqueue(self, jobs: Sequence[Job], now: float) -> list[str]:
        self._enter("enqueue")
        return await self.inner._enqueue(jobs, now)

    async def _claim(self, request: ClaimRequest, now: float) -> list[Lease]:
        self._enter("claim")
        return await self.inner._claim(request, now)

    async def _extend(
        self, leases: Sequence[Lease], lease_for: float, now: float
    ) -> list[Lease | None]:
        self._enter("extend")
        return await self.inner._extend(leases, lease_for, now)

    async def _settle(self, outcomes: Sequence[tuple[Lease, Outcome]], now: float) -> list[bool]:
        self._enter("settle")
        return await self.inner._settle(outcomes, now)

    async def _release(self, leases: Sequence[Lease], now: float) -> list[bool]:
        self._enter("release")
        return await self.inner._release(leases, now)

    async def _annotate(
        self, items: Sequence[tuple[Lease, Mapping[str, bytes | None]]], now: float
    ) -> list[bool]:
        self._enter("annotate")
        return await self.inner._annotate(items, now)

    async def _link(self, child: str, parents: Sequence[str], holds: int, now: float) -> bool:
        self._enter("link")
        return await self.inner._link(child, parents, holds, now)

    async def _promote(self, now: float) -> int:
        self._enter("promote")
        return await self.inner._promote(now)

    async def _rescue(self, now: float) -> int:
        self._enter("rescue")
        return await self.inner._rescue(now)

    async def _purge(self, states: frozenset[JobState], before: float | None, now: float) -> int:
        self._enter("purge")
        return await self.inner._purge(states, before, now)

    async def _cancel(self, job_id: str, reason: str, now: float) -> JobState | None:
        self._enter("cancel")
        return await self.inner._cancel(job_id, reason, now)

    async def _requeue(self, ids: Sequence[str], now: float) -> list[bool]:
        self._enter("requeue")
        return await self.inner._requeue(ids, now)

    async def _delete(self, ids: Sequence[str], now: float) -> list[bool]:
        self._enter("delete")
        return await self.inner._delete(ids, now)

    async def _get(self, ids: Sequence[str]) -> list[Job | None]:
        self._enter("get")
        return await self.inner._get(ids)

    async def _counts(self, queue: str | None) -> dict[str, dict[JobState, int]]:
        self._enter("counts")
        return await self.inner._counts(queue)

    def _valid_cursor(self, after: str) -> bool:
        return self.inner._valid_cursor(after)

    async def _query(self, filter: JobFilter, after: str | None, limit: int) -> Page:
        self._enter("query")
        return await self.inner._query(filter, after, limit)

    async def _wait(self, queues: Sequence[str], timeout: float) -> None:
        self._enter("wait")
        await self.inner.wait(queues, timeout)

    async def wait_for_lease(
        self, queues: Sequence[str], timeout: float, worker: str, lease_for: float
    ) -> list[Lease]:
        self._open()
        self._enter("wait")
        return await self.inner.wait_for_lease(queues, timeout, worker, lease_for)

    async def _aclose(self) -> None:
        await self.inner.aclose()
