"""The maintenance loop: promote due jobs, rescue expired leases, purge expired results.

Every step is one atomic backend operation, so any number of workers may run this loop at
once with no leader: two racing rescues requeue each job once. It is a `Service` of the
worker process (see `serve`): ready at once, cancelled mid-pass by a stop (a pass has
nothing to finish: the next one, here or in another worker, does the same work).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from conveyor.backends.base import Backend
from conveyor.clock import Clock
from conveyor.errors import BackendError
from conveyor.job import JobState
from conveyor.worker.service import Service

__all__ = ["Maintenance", "MaintenanceStats"]

log = logging.getLogger("conveyor.maintenance")


@dataclass(slots=True)
class MaintenanceStats:
    """What the loop did since it started."""

    promoted: int = 0
    rescued: int = 0
    purged: int = 0
    errors: int = 0


class Maintenance(Service):
    """Time-driven upkeep of the store, as a service.

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
        super().__init__()
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

    name = "maintenance"

    async def run(self) -> None:
        """Loop until stopped (or cancelled). A failing pass is retried at the next tick: a
        store error is logged once per outage, in one line; anything else with its
        traceback (a bug)."""
        self.started()
        await self.cancel_on_stop(self._loop())

    async def _loop(self) -> None:
        next_purge = self.clock.monotonic()
        failing = False
        while True:
            try:
                await self.sweep()
                if self.clock.monotonic() >= next_purge:
                    await self.purge()
                    next_purge = self.clock.monotonic() + self.purge_every
            except BackendError as exc:
                self.stats.errors += 1
                if not failing:
                    log.error("maintenance pass failed (%s); retrying every %.1fs", exc,
                              self.sweep_every)  # fmt: skip
                failing = True
            except Exception:
                self.stats.errors += 1
                log.exception("maintenance pass failed; retrying in %.1fs", self.sweep_every)
            else:
                if failing:
                    log.warning("maintenance: the store answers again")
                failing = False
            await self.clock.sleep(self.sweep_every)
