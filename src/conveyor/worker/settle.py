"""Settling: outcomes go to the store in batches, retried while it is down, then counted.

The settle batcher's items are *groups* of outcomes (one job, or a batch task's group), so
a group costs one future; one flush settles every waiting group in one backend call
(natural batching: outcomes that finish while a settle is in flight go in the next one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from conveyor.backends.base import Backend
from conveyor.clock import Clock
from conveyor.errors import BackendError
from conveyor.job import Lease, Outcome
from conveyor.primitives import Batcher
from conveyor.worker.lease import Running
from conveyor.worker.observe import Observers
from conveyor.worker.service import Service
from conveyor.worker.stats import WorkerStats, record

__all__ = ["BACKOFF_MAX", "BACKOFF_MIN", "Settling"]

log = logging.getLogger("conveyor.worker")

# Backoff while the store is unreachable, in seconds (the claim loop uses it too).
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0


class Settling(Service):
    """The settle service: owns the settle batcher for the worker's lifetime.

    Ready once the batcher runs; `stop()` drains it (every outcome submitted is settled), so
    it stops after every job has ended.

    Args:
        backend: the store.
        clock: the time source.
        stats: the worker's counters (each outcome is recorded here).
        lease_for: the worker's lease length; a settle is retried for three of them.
        capacity: most groups waiting in the batcher.
        observers: told of each outcome the store recorded, and of failed settles.
    """

    name = "settle"

    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        stats: WorkerStats,
        *,
        lease_for: float,
        capacity: int,
        observers: Observers | None = None,
    ) -> None:
        super().__init__()
        self.observers = observers or Observers()
        self.backend = backend
        self.clock = clock
        self.stats = stats
        self.lease_for = lease_for
        self.capacity = capacity
        self._batcher: Batcher[list[tuple[Lease, Outcome]], list[bool]] | None = None

    async def run(self) -> None:
        batcher: Batcher[list[tuple[Lease, Outcome]], list[bool]] = Batcher(
            self._settle_groups, max_size=64, max_wait=0.0, capacity=self.capacity, name="settle"
        )
        try:
            async with batcher:
                self._batcher = batcher
                self.started()
                await self._stop.wait()
        finally:
            self._batcher = None

    async def _settle_groups(
        self, groups: Sequence[list[tuple[Lease, Outcome]]]
    ) -> list[list[bool] | BaseException]:
        """The batcher's handler: every group's outcomes in one backend call."""
        try:
            results = await self.backend.settle([pair for group in groups for pair in group])
        except BackendError as exc:
            return [exc] * len(groups)
        out: list[list[bool] | BaseException] = []
        start = 0
        for group in groups:
            out.append(results[start : start + len(group)])
            start += len(group)
        return out

    async def settle(self, pairs: list[tuple[Running, Outcome]]) -> list[bool]:
        """Record outcomes through the batcher, then count and log them; for each, whether
        the store took it. While the store is down, retry until the leases would have
        expired anyway (then the jobs are rescued and run again: at-least-once)."""
        assert self._batcher is not None
        if not pairs:
            return []
        for entry, _ in pairs:
            entry.settling = True
        items = [(entry.lease, outcome) for entry, outcome in pairs]
        give_up = self.clock.monotonic() + 3 * self.lease_for
        pause = BACKOFF_MIN
        while True:
            try:
                settled = await asyncio.shield(self._batcher.submit(items))
                break
            except BackendError as exc:
                self.observers.store_error("settle", exc)
                if self.clock.monotonic() >= give_up:
                    log.error(
                        "%d job(s) could not record their outcome (%s); they will run again",
                        len(items),
                        exc,
                    )
                    settled = [False] * len(items)
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKOFF_MAX)
        now = self.clock.monotonic()
        observers = self.observers if self.observers.items else None
        wall = self.clock.now() if observers else 0.0
        for (entry, outcome), ok in zip(pairs, settled, strict=True):
            took = now - entry.started
            record(self.stats, entry.lease.job, outcome, ok, took, self.clock)
            if observers is not None and ok:
                observers.settled(entry.lease.job, outcome, took, wall)
        return settled
