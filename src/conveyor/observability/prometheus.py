"""A worker's Prometheus metrics (extra ``conveyor[metrics]``), on a registry of its own.

`WorkerMetrics` is a worker observer (`conveyor.worker.observe`): it counts what the worker
does as it does it, at the cost of a dict look-up and a counter bump per event (labelled
children are cached per (queue, task), never ``.labels()`` per job). `StoreGauges` reads the
store when scraped (from a cache at most `fresh` seconds old, so a scrape stays cheap on a
big store): job counts per queue and state, and the age of each queue's oldest ready job.
Names follow the Prometheus conventions: base units (seconds), ``_total`` counters, and no
job ids or arguments in labels (their number would grow without bound).

Worker-side metrics:

- ``conveyor_jobs_total{queue,task,outcome}``: attempts by outcome (completed, failed,
  retried, cancelled); an attempt put back by a shutdown is not counted.
- ``conveyor_job_duration_seconds{task}``: how long attempts ran (histogram).
- ``conveyor_pickup_latency_seconds{queue}``: from due to start (histogram).
- ``conveyor_jobs_running``, ``conveyor_worker_slots``: running jobs, and the concurrency.
- ``conveyor_job_retries_total{queue,task}``, ``conveyor_dead_letters_total{queue,task}``.
- ``conveyor_store_errors_total{operation}``: failed store calls of the worker.
- ``conveyor_stuck_reports_total{kind}``: stuck-job reports (`WorkerMetrics.stuck_reported`).

Store gauges: ``conveyor_queue_jobs{queue,state}``,
``conveyor_queue_oldest_ready_age_seconds{queue}``, ``conveyor_store_up`` (1 when the last
read answered) and ``conveyor_store_scrape_timestamp_seconds`` (when a read last answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.backends.base import Backend
from conveyor.clock import Clock
from conveyor.job import Job, JobState, Lease, Outcome
from conveyor.observability.backlog import oldest_ready_age
from conveyor.worker.observe import outcome_name, waited

__all__ = ["StoreGauges", "WorkerMetrics", "oldest_ready_age"]

log = logging.getLogger("conveyor.worker")

#: Attempt durations: 5 ms to 10 minutes.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
#: Pickup latencies: 1 ms to 10 minutes.
LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
)  # fmt: skip

OUTCOMES = ("completed", "failed", "retried", "cancelled")


class _Children:
    """One counter's labelled children, cached: one dict look-up per event."""

    __slots__ = ("_get", "_metric")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._get: dict[tuple[str, ...], Counter | Histogram] = {}

    def __call__(self, *labels: str) -> Counter | Histogram:
        child = self._get.get(labels)
        if child is None:
            child = self._get[labels] = self._metric.labels(*labels)
        return child


class WorkerMetrics:
    """The worker-side metrics, and the observer that feeds them (see the module).

    Args:
        registry: where the metrics are registered (a fresh one of their own by default).
        slots: the worker's concurrency (``conveyor_worker_slots``).
        running: reads the running jobs at scrape time (``conveyor_jobs_running``).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        slots: int = 0,
        running: Callable[[], int] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter(
            "conveyor_jobs", "Job attempts by outcome.", ["queue", "task", "outcome"], registry=r
        )
        self.duration = Histogram(
            "conveyor_job_duration_seconds", "How long job attempts ran.", ["task"],
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.pickup = Histogram(
            "conveyor_pickup_latency_seconds", "From when a job was due to its start.",
            ["queue"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        # livesum: under ``-p N`` the supervisor's scrape sums the live processes' gauges.
        self.running = Gauge(
            "conveyor_jobs_running", "Jobs running now.", registry=r, multiprocess_mode="livesum"
        )
        if running is not None:
            self.running.set_function(running)
        self.slots = Gauge(
            "conveyor_worker_slots", "Jobs the worker runs at once.", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.slots.set(slots)
        #: 1 while the worker claims jobs (only set under ``-p N``, for the supervisor's
        #: ``/readyz``: the sum is how many processes are ready).
        self.ready = Gauge(
            "conveyor_worker_ready", "1 while the worker process claims jobs.", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.retries = Counter(
            "conveyor_job_retries", "Attempts that failed and will be retried.",
            ["queue", "task"], registry=r,
        )  # fmt: skip
        self.dead_letters = Counter(
            "conveyor_dead_letters", "Jobs that failed for good (dead letters).",
            ["queue", "task"], registry=r,
        )  # fmt: skip
        self.store_errors = Counter(
            "conveyor_store_errors", "Failed store calls of the worker.", ["operation"], registry=r
        )
        self.stuck = Counter(
            "conveyor_stuck_reports", "Stuck-job reports by kind.", ["kind"], registry=r
        )
        self._jobs = _Children(self.jobs)
        self._duration = _Children(self.duration)
        self._pickup = _Children(self.pickup)
        self._retries = _Children(self.retries)
        self._dead = _Children(self.dead_letters)
        self._errors = _Children(self.store_errors)
        self._stuck = _Children(self.stuck)

    # The observer protocol (`conveyor.worker.observe.Observer`).

    def claimed(self, leases: Sequence[Lease], now: float) -> None:
        pickup = self._pickup
        for lease in leases:
            job = lease.job
            pickup(job.queue).observe(waited(job))  # type: ignore[union-attr]

    def settled(self, job: Job, outcome: Outcome, took: float, now: float) -> None:
        name = outcome_name(outcome)
        if name is None:
            return
        queue, task = job.queue, job.task
        self._jobs(queue, task, name).inc()  # type: ignore[union-attr]
        self._duration(task).observe(took)  # type: ignore[union-attr]
        if name == "retried":
            self._retries(queue, task).inc()  # type: ignore[union-attr]
        elif name == "failed":
            self._dead(queue, task).inc()  # type: ignore[union-attr]

    def store_error(self, operation: str, error: BaseException) -> None:
        self._errors(operation).inc()  # type: ignore[union-attr]

    def stuck_reported(self, kind: str) -> None:
        """Count a stuck-job report (``"timeout"``, ``"loop_blocked"``)."""
        self._stuck(kind).inc()  # type: ignore[union-attr]


@dataclass(slots=True)
class _Snapshot:
    counts: dict[str, dict[JobState, int]] = field(default_factory=dict)
    ages: dict[str, float] = field(default_factory=dict)
    at: float | None = None  # epoch seconds of the last read that answered


class StoreGauges(Collector):
    """The store gauges, served from a cache that scrapes refresh (a `Collector`).

    Reading the store costs too much for every scrape on a big store (``counts()`` takes
    100-600 ms on a SQLite file of 1,000,000 jobs), so a scrape serves the last read and,
    when it is older than `fresh` seconds, starts a new one in the background: one at a
    time (single flight), waited for at most `wait` seconds (a small store's read lands in
    the same scrape). No scrapes, no store reads. A read that fails, or runs longer than
    `timeout` seconds, sets ``conveyor_store_up`` to 0; the store gauges then keep their
    last values with the old ``conveyor_store_scrape_timestamp_seconds``: that timestamp
    marks the store gauges stale (the cache's age is now minus it). Before the first read
    answered there are no store gauges, only ``conveyor_store_up 0``.

    Args:
        backend: the store.
        queues: the worker's queues (for the oldest ready job); counts cover every queue.
        clock: the time source (epoch seconds for the timestamp).
        fresh: a read younger than this (seconds) is served as is.
        wait: the most seconds a scrape waits for a read it started.
        timeout: a read still running after this many seconds counts as the store down.
    """

    def __init__(
        self,
        backend: Backend,
        queues: Sequence[str],
        clock: Clock,
        *,
        fresh: float = 5.0,
        wait: float = 0.04,
        timeout: float = 1.0,
    ) -> None:
        self.backend = backend
        self.queues = tuple(queues)
        self.clock = clock
        self.fresh = fresh
        self.wait = wait
        self.timeout = timeout
        self.up = False
        #: Why the store is down (for ``/readyz``); "" while it answers.
        self.error = "the store was not read yet"
        self._snap = _Snapshot()
        self._read: asyncio.Task[_Snapshot] | None = None
        self._tried: float | None = None  # monotonic time of the last read's start

    async def refresh(self, wait: float | None = None) -> bool:
        """Start a read if the last is stale and none runs; wait for it at most `wait`
        seconds (default: `StoreGauges.wait`). Whether the store is up."""
        mono = self.clock.monotonic()
        if self._read is None and (self._tried is None or mono - self._tried >= self.fresh):
            self._tried = mono
            self._read = asyncio.get_running_loop().create_task(
                self._fetch(), name="conveyor-metrics-store"
            )
            self._read.add_done_callback(self._settle)
        read = self._read
        if read is not None:
            await asyncio.wait({read}, timeout=self.wait if wait is None else wait)
            if read.done():
                self._settle(read)
            elif self._tried is not None and self.clock.monotonic() - self._tried > self.timeout:
                self.up = False
                self.error = f"the store did not answer within {self.timeout:g}s"
        return self.up

    def _settle(self, read: asyncio.Task[_Snapshot]) -> None:
        if self._read is not read:
            return
        self._read = None
        if read.cancelled():
            self.up, self.error = False, "the store read was cancelled"
            return
        exc = read.exception()
        if exc is not None:
            self.up = False
            self.error = f"the store did not answer: {type(exc).__name__}: {exc}".splitlines()[0]
            return
        self._snap = read.result()
        self.up, self.error = True, ""

    async def _fetch(self) -> _Snapshot:
        counts = await self.backend.counts()
        ages = await oldest_ready_age(self.backend, self.queues)
        return _Snapshot(counts, ages, self.clock.now())

    async def close(self) -> None:
        """Cancel a read still running."""
        read, self._read = self._read, None
        if read is not None:
            read.cancel()
            with contextlib.suppress(BaseException):
                await read

    def collect(self) -> Iterable[Metric]:
        snap = self._snap
        up = GaugeMetricFamily("conveyor_store_up", "1 when the last store read answered.")
        up.add_metric([], 1.0 if self.up else 0.0)
        yield up
        if snap.at is None:
            return
        stamp = GaugeMetricFamily(
            "conveyor_store_scrape_timestamp_seconds",
            "When the store gauges were last read (epoch seconds); older means stale.",
        )
        stamp.add_metric([], snap.at)
        yield stamp
        jobs = GaugeMetricFamily(
            "conveyor_queue_jobs",
            "Jobs in the store by queue and state.",
            labels=["queue", "state"],
        )
        for queue, states in sorted(snap.counts.items()):
            for state in JobState:
                jobs.add_metric([queue, state.value], float(states.get(state, 0)))
        yield jobs
        age = GaugeMetricFamily(
            "conveyor_queue_oldest_ready_age_seconds",
            "How long the oldest ready job of the queue has waited.",
            labels=["queue"],
        )
        for queue in self.queues:
            age.add_metric([queue], snap.ages.get(queue, 0.0))
        yield age
