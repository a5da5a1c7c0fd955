"""Leases held by a worker: the record of each running job, and the heartbeat that keeps
their leases alive (and stops the jobs whose lease was lost or cancelled)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from conveyor.backends.base import Backend
from conveyor.clock import Clock
from conveyor.job import Lease
from conveyor.worker.context import JobContext
from conveyor.worker.stats import WorkerStats

__all__ = ["Running", "flush_progress", "heartbeat"]

log = logging.getLogger("conveyor.worker")


@dataclass(slots=True)
class Running:
    """One job this worker is running."""

    lease: Lease
    task: asyncio.Task[None] | None = None
    lost: bool = False
    interrupted: bool = False
    settling: bool = False  # outcome handed to the settle batcher
    grouped: bool = False  # runs inside a batch-task group (one task for many jobs)
    started: float = 0.0
    context: JobContext | None = None  # what the handler sees as `current_job()`


async def heartbeat(
    backend: Backend,
    running: Mapping[str, Running],
    *,
    every: float,
    lease_for: float,
    clock: Clock,
    stats: WorkerStats,
    worker: str,
) -> None:
    """Extend every running job's lease each `every` seconds, in one call; forever.

    A lease the store refuses (lost to a rescue, or its job had a cancel requested) stops that
    job without settling it. A grouped job (batch task) finishes with its batch, unsettled.
    The progress jobs reported since the last beat is written next, in one more call.
    """
    while True:
        await clock.sleep(every)
        # Jobs whose outcome is on its way to the store need no heartbeat: their settle is
        # fenced by the same token and lands well inside the lease.
        entries = [e for e in running.values() if not (e.lost or e.settling)]
        if not entries:
            continue
        try:
            results = await backend.extend([e.lease for e in entries], lease_for)
        except Exception:
            log.exception("worker %s: heartbeat failed; will retry", worker)
            continue
        for entry, new in zip(entries, results, strict=True):
            if new is not None:
                entry.lease = new
            elif not entry.settling:  # settled while the heartbeat was in flight: not lost
                entry.lost = True
                stats.lost += 1
                log.warning("job %s (%s): lease lost or cancel requested; stopping it",
                            entry.lease.id, entry.lease.job.task)  # fmt: skip
                if entry.task is not None and not entry.grouped:
                    entry.task.cancel()
        await flush_progress(backend, [e for e in entries if not e.lost], worker)


async def flush_progress(backend: Backend, entries: list[Running], worker: str) -> None:
    """Write the progress each of `entries` reported since the last flush, in one call (none
    when nothing was reported). A failed write is logged; a later report replaces it."""
    items: list[tuple[Lease, Mapping[str, bytes | None]]] = []
    for entry in entries:
        raw = entry.context.take_progress() if entry.context is not None else None
        if raw is not None:
            items.append((entry.lease, {"progress": raw}))
    if not items:
        return
    try:
        await backend.annotate(items)
    except Exception:
        log.exception("worker %s: writing progress failed", worker)
