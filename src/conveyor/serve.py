"""One process's service: a worker and the maintenance loop under one TaskGroup."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from conveyor.backends.base import Backend
from conveyor.clock import Clock
from conveyor.errors import ClosedError, unwrap_group
from conveyor.registry import Registry
from conveyor.scheduler import Maintenance
from conveyor.worker import Worker, WorkerConfig, WorkerStats

__all__ = ["Server"]


class Server:
    """A worker plus maintenance, run together. `app.worker()` returns one.

    Run it to completion with `await server.run()`, or in the background of an existing
    asyncio program with `async with server:` (it stops gracefully on exit).

    Example:
        async with app.worker(queues="default", concurrency=32):
            ...  # e.g. a FastAPI lifespan: the worker runs while the app serves
    """

    def __init__(
        self, backend: Backend, registry: Registry, config: WorkerConfig, clock: Clock
    ) -> None:
        self.config = config
        self.worker = Worker(backend, registry, config, clock)
        self.maintenance = Maintenance(
            backend,
            clock,
            sweep_every=config.sweep_every,
            purge_every=config.purge_every,
            failed_retention=config.failed_retention,
        )
        self._group: asyncio.TaskGroup | None = None
        self._used = False

    async def run(self) -> WorkerStats:
        """Run until `stop()` (or until idle in burst mode)."""
        if self._used:
            raise ClosedError("a Server runs once; create another with app.worker()")
        self._used = True
        try:
            async with asyncio.TaskGroup() as tg:
                upkeep = (
                    tg.create_task(self.maintenance.run(), name="conveyor-maintenance")
                    if self.config.maintenance
                    else None
                )
                try:
                    stats = await self.worker.run()
                finally:
                    if upkeep is not None:
                        upkeep.cancel()
        except BaseExceptionGroup as eg:
            raise unwrap_group(eg) from None
        return stats

    def stop(self, *, now: bool = False) -> None:
        """Begin a graceful stop (a second call, or `now=True`, cancels running jobs)."""
        self.worker.stop(now=now)

    async def __aenter__(self) -> Self:
        # Touch the store first, so a bad path or a down server fails here, plainly.
        await self.worker.backend.promote()
        group = asyncio.TaskGroup()
        await group.__aenter__()
        group.create_task(self.run(), name="conveyor-server")
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        group, self._group = self._group, None
        if group is not None:
            try:
                await group.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as eg:
                raise unwrap_group(eg) from None
