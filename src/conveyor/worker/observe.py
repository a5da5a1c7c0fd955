"""Observers: what a worker tells metrics, rollups and stuck-job reports as it runs jobs.

An observer is a plain object with three methods, called on the worker's event loop,
synchronously, in the code path that did the work: they must be quick (a counter bump, a
dict update) and must not raise (one that raises is logged and dropped from that call).
A worker with no observers pays one empty-tuple test per event.

- `claimed(leases, now)`: jobs leased to this worker (a claim or a handoff), before they
  start; `now` is the clock's epoch time.
- `settled(job, outcome, took, now)`: an attempt whose outcome the store recorded (not one
  whose lease was lost, nor one put back by a shutdown); `took` is how long it ran (the
  worker's monotonic clock), `now` when it was recorded (epoch time).
- `store_error(operation, error)`: a store call of the worker failed (``"claim"``,
  ``"settle"``, ``"extend"``, ``"wait"``, ``"beat"``, ``"rollups"``).

The prometheus exporter (`conveyor.observability.prometheus`) and the rollup writer
(`conveyor.worker.rollups`) are observers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from conveyor.job import Cancelled, Completed, Failed, Job, Lease, Outcome, Retrying

__all__ = ["Observer", "Observers", "outcome_name", "waited"]

log = logging.getLogger("conveyor.worker")


class Observer(Protocol):
    """See the module docstring. Every method is optional to *do* something; all three
    must exist."""

    def claimed(self, leases: Sequence[Lease], now: float) -> None: ...

    def settled(self, job: Job, outcome: Outcome, took: float, now: float) -> None: ...

    def store_error(self, operation: str, error: BaseException) -> None: ...


class Observers:
    """The worker's observers, called in order; one that raises is logged, the rest run."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[Observer] = ()) -> None:
        self.items: tuple[Observer, ...] = tuple(items)

    def add(self, observer: Observer) -> None:
        self.items = (*self.items, observer)

    def claimed(self, leases: Sequence[Lease], now: float) -> None:
        if not leases:
            return
        for o in self.items:
            try:
                o.claimed(leases, now)
            except Exception:
                log.exception("observer %r failed on claimed", o)

    def settled(self, job: Job, outcome: Outcome, took: float, now: float) -> None:
        for o in self.items:
            try:
                o.settled(job, outcome, took, now)
            except Exception:
                log.exception("observer %r failed on settled", o)

    def store_error(self, operation: str, error: BaseException) -> None:
        for o in self.items:
            try:
                o.store_error(operation, error)
            except Exception:
                log.exception("observer %r failed on store_error", o)


def outcome_name(outcome: Outcome) -> str | None:
    """``completed``, ``failed``, ``retried`` or ``cancelled``; `None` for an attempt put
    back by a shutdown (a `Retrying` with an ``Interrupted`` error: not counted)."""
    if isinstance(outcome, Completed):
        return "completed"
    if isinstance(outcome, Retrying):
        return None if outcome.error.type == "Interrupted" else "retried"
    if isinstance(outcome, Failed):
        return "failed"
    if isinstance(outcome, Cancelled):
        return "cancelled"
    return None


def waited(job: Job) -> float:
    """How long a claimed job waited for a worker: from when it was due (its `run_at`, or
    its enqueue for a job due at once) to its start; 0 when the store set no start."""
    if job.started_at is None:
        return 0.0
    due = max(job.run_at, job.enqueued_at)
    return max(0.0, job.started_at - due)
