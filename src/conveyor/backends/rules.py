"""Lifecycle rules every backend applies the same way, kept in one place."""

from __future__ import annotations

from conveyor.job import AttemptError, Job, JobState

__all__ = ["key_is_held", "lease_expired_error", "state_for_run_at"]


def state_for_run_at(run_at: float, now: float) -> JobState:
    """A job due now is queued; one due later is scheduled."""
    return JobState.SCHEDULED if run_at > now else JobState.QUEUED


def key_is_held(job: Job, now: float) -> bool:
    """Whether `job` still holds its unique key against a new enqueue."""
    if job.state is JobState.CANCELLED:
        return False
    if not job.state.terminal:
        return True
    return job.unique_until is None or job.unique_until > now


def lease_expired_error(attempt: int, now: float) -> AttemptError:
    """The error recorded when a worker stopped heartbeating (crashed, killed or partitioned)."""
    return AttemptError(
        attempt=attempt,
        type="LeaseExpired",
        message="the worker stopped heartbeating (killed, crashed or stalled); lease expired",
        at=now,
    )
