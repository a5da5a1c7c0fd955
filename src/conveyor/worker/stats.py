"""The worker's counters, and the one log line per settled outcome."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from conveyor.clock import Clock
from conveyor.job import Cancelled, Completed, Failed, Job, Outcome, Retrying

__all__ = ["WorkerStats", "record"]

log = logging.getLogger("conveyor.worker")


@dataclass(slots=True)
class WorkerStats:
    """Counters since the worker started."""

    claimed: int = 0
    completed: int = 0
    retried: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0  # leases lost (expired, fenced or cancel requested) while running
    interrupted: int = 0  # cancelled by shutdown and put back


def record(
    stats: WorkerStats, job: Job, outcome: Outcome, settled: bool, took: float, clock: Clock
) -> None:
    """Count one outcome and log it: debug for successes, one warning line per failure."""
    if not settled:
        stats.lost += 1
        log.warning(
            "job %s (%s) attempt %d: lease lost before settle; its outcome was dropped "
            "(the job runs again elsewhere)", job.id, job.task, job.attempts,
        )  # fmt: skip
    elif isinstance(outcome, Completed):
        stats.completed += 1
        log.debug("job %s (%s) attempt %d completed in %.3fs", job.id, job.task, job.attempts,
                  took)  # fmt: skip
    elif isinstance(outcome, Retrying):
        if outcome.error.type != "Interrupted":
            stats.retried += 1
        log.warning(
            "job %s (%s) attempt %d failed, retry in %.1fs: %s: %s", job.id, job.task,
            job.attempts, max(0.0, outcome.run_at - clock.now()), outcome.error.type,
            outcome.error.message,
        )  # fmt: skip
    elif isinstance(outcome, Failed):
        stats.failed += 1
        log.warning(
            "job %s (%s) attempt %d failed for good: %s: %s", job.id, job.task, job.attempts,
            outcome.error.type, outcome.error.message,
        )  # fmt: skip
    elif isinstance(outcome, Cancelled):
        stats.cancelled += 1
        log.info("job %s (%s) cancelled: %s", job.id, job.task, outcome.reason)
