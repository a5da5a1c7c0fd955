"""The maintenance loop: promote due jobs, rescue expired leases, purge expired results.

Every step is one atomic backend operation, so any number of workers may run this loop at
once with no leader: two racing rescues requeue each job once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from conveyor.backends.base import Backend
from conveyor.clock import Clock
from conveyor.job import JobState

__all__ = ["Maintenance", "MaintenanceStats"]

log = logging.getLogger("conveyor.maintenance")


@dataclass(slots=True)
class MaintenanceStats:
    """What the loop did since it started."""

    promoted: int = 0
    rescued: int = 0
    purged: int = 0
    errors: int = 0


class Maintenance:
    """Time-driven upkeep of the store.

    Args:
        backend: the store.
        clock: the time source.
        sweep_every: seconds between promote/rescue sweeps.
        purge_every: seconds between purges.
        failed_retention: seconds failed jobs are kept (completed and cancelled jobs are
            kept for their own `keep_for`).
    """

    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        *,
        sweep_every: float = 1.0,
        purge_every: float = 60.0,
        failed_retention: float = 7 * 86_400.0,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.sweep_every = sweep_every
        self.purge_every = purge_every
        self.failed_retention = failed_retention
        self.stats = MaintenanceStats()

    async def sweep(self) -> None:
        """One promote + rescue pass."""
        self.stats.promoted += await self.backend.promote()
        rescued = await self.backend.rescue()
        if rescued:
            log.warning("rescued %d job(s) whose worker stopped heartbeating", rescued)
        self.stats.rescued += rescued

    async def purge(self) -> None:
        """Delete finished jobs whose retention ended."""
        n = await self.backend.purge([JobState.COMPLETED, JobState.CANCELLED])
        n += await self.backend.purge(
            [JobState.FAILED], before=self.clock.now() - self.failed_retention
        )
        self.stats.purged += n

    async def run(self) -> None:
        """Loop until cancelled. Store errors are logged and retried at the next tick."""
        next_purge = self.clock.monotonic()
        while True:
            try:
                await self.sweep()
                if self.clock.monotonic() >= next_purge:
                    await self.purge()
                    next_purge = self.clock.monotonic() + self.purge_every
            except Exception:
                self.stats.errors += 1
                log.exception("maintenance pass failed; retrying in %.1fs", self.sweep_every)
            await self.clock.sleep(self.sweep_every)
