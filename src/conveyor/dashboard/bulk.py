"""Bulk requeue / delete of dead letters matching a filter, run in the background of the
dashboard process one page (≤ 500 jobs) per store call, with its progress kept for the page."""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass

from conveyor.backends.base import JobFilter
from conveyor.inspector import Inspector
from conveyor.job import JobState

__all__ = ["BulkRun", "BulkRuns"]

log = logging.getLogger("conveyor.dashboard")


@dataclass
class BulkRun:
    """One background run: what, how many done, whether it ended (and how)."""

    id: int
    action: str
    task: str
    error: str
    done: int = 0
    finished: bool = False
    failure: str = ""


class BulkRuns:
    """The bulk runs of this process (the newest 20 are kept)."""

    def __init__(self, inspector: Inspector) -> None:
        self.inspector = inspector
        self.runs: dict[int, BulkRun] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, action: str, task: str, error: str) -> BulkRun:
        run = BulkRun(next(self._ids), action, task, error)
        self.runs[run.id] = run
        for old in sorted(self.runs)[:-20]:
            if self.runs[old].finished:
                del self.runs[old]
        job = asyncio.get_running_loop().create_task(self._run(run))
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)
        return run

    async def _run(self, run: BulkRun) -> None:
        wanted = JobFilter(state=JobState.FAILED, task=run.task or None)
        after: str | None = None
        try:
            while True:
                page = await self.inspector.backend.query(wanted, after, 500)
                ids = [
                    j.id
                    for j in page.jobs
                    if not run.error
                    or (j.last_error is not None and j.last_error.type == run.error)
                ]
                if ids:
                    if run.action == "requeue":
                        run.done += await self.inspector.requeue_many(ids)
                    else:
                        run.done += await self.inspector.delete(ids)
                if page.next is None:
                    break
                after = page.next
        except Exception as exc:
            log.warning("bulk %s stopped: %s", run.action, exc)
            run.failure = f"{type(exc).__name__}: {exc}"
        finally:
            run.finished = True

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
