"""The rollup writer: settled attempts go to the store's per-minute `Rollups`.

An observer (`worker.observe`) folds each outcome the store recorded into a `RollupBuffer`
(a dict update, no I/O); the service writes the buffer about once a second, one row per
(minute, queue, task) touched, so a busy worker adds one small store call a second, not one
per job. The last write happens after every job has settled (the service stops after the
settle service). A failed write puts the rows back and is retried at the next tick, so a
store outage loses no counts while the worker lives; a worker killed with SIGKILL loses at
most its last second's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from conveyor.capabilities import Rollups
from conveyor.errors import BackendError
from conveyor.job import Job, Lease, Outcome
from conveyor.rollup import RollupBuffer
from conveyor.worker.observe import Observers, outcome_name, waited
from conveyor.worker.service import Service

__all__ = ["RollupWriter"]

log = logging.getLogger("conveyor.worker")

_MAX_ROWS = 50_000  # rows kept through a long store outage before the oldest are dropped


class RollupWriter(Service):
    """Writes rollups every `every` seconds; an `Observer` of the worker.

    Args:
        store: the store, with `Rollups`.
        keep_for: how long the store keeps each minute (`WorkerConfig.rollup_retention`).
        every: seconds between writes.
        observers: told of failed writes.
    """

    name = "rollups"

    def __init__(
        self,
        store: Rollups,
        *,
        keep_for: float,
        every: float = 1.0,
        observers: Observers | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.keep_for = keep_for
        self.every = every
        self.observers = observers or Observers()
        self.buffer = RollupBuffer()
        self._failing = False

    # -- the observer ----------------------------------------------------------------------

    def claimed(self, leases: Sequence[Lease], now: float) -> None:
        pass

    def settled(self, job: Job, outcome: Outcome, took: float, now: float) -> None:
        name = outcome_name(outcome)
        if name is not None:
            self.buffer.add(now, job.queue, job.task, name, took, waited(job))

    def store_error(self, operation: str, error: BaseException) -> None:
        pass

    # -- the service -----------------------------------------------------------------------

    async def flush(self) -> None:
        """Write what the buffer holds (kept for the next try if the store fails)."""
        rows = self.buffer.take()
        if not rows:
            return
        try:
            await self.store.add_rollups(rows, self.keep_for)
        except BackendError as exc:
            self.observers.store_error("rollups", exc)
            self.buffer.put_back(rows)
            if len(self.buffer) > _MAX_ROWS:
                dropped = self.buffer.take()
                dropped.sort(key=lambda r: r.minute)
                self.buffer.put_back(dropped[len(dropped) - _MAX_ROWS :])
            if not self._failing:
                log.warning("rollups could not be written (%s); kept for the next try", exc)
            self._failing = True
        else:
            self._failing = False

    async def run(self) -> None:
        self.started()
        try:
            while not self._stop.is_set():
                try:
                    async with asyncio.timeout(self.every):
                        await self._stop.wait()
                except TimeoutError:
                    pass
                await self.flush()
        finally:
            await self.flush()
