"""Queue depth over the last hour: the dashboard samples `Inspector.stats` every few seconds
into an in-memory ring (lost on restart; the store keeps no depth history)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from conveyor.inspector import Inspector
from conveyor.job import JobState

__all__ = ["DepthSampler"]

log = logging.getLogger("conveyor.dashboard")


class DepthSampler:
    """A ring of ``(epoch, {queue: ready jobs})`` samples, one every `every` seconds, for
    `keep` seconds."""

    def __init__(self, inspector: Inspector, *, every: float = 5.0, keep: float = 3600.0) -> None:
        self.inspector = inspector
        self.every = every
        self.samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=int(keep / every) + 1)
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        """Take one sample now (a store error is logged and the sample skipped)."""
        try:
            stats = await self.inspector.stats()
        except Exception as exc:  # the store is down: the outage shows on the pages
            log.debug("depth sample skipped: %s", exc)
            return
        self.samples.append((time.time(), {q.queue: q[JobState.QUEUED] for q in stats}))

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.every)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
