"""The inspector: read and administer jobs — counts, listings, one job, requeue, cancel, purge,
pausing queues, the lanes of flow control and their circuits, workers online, locks held, and
job metrics over time."""

from __future__ import annotations

import builtins
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import msgspec

from conveyor.backends.base import Backend, JobFilter, Page
from conveyor.capabilities import (
    FlowControl,
    LaneInfo,
    LockInfo,
    Locks,
    Presence,
    QueueControl,
    Rollups,
    WorkerInfo,
    require,
)
from conveyor.errors import InvalidOption, JobNotFound
from conveyor.fields import STATES
from conveyor.job import TERMINAL, Job, JobState, new_job_id
from conveyor.names import check_key, check_queue
from conveyor.rollup import MetricsReport, summarize

__all__ = ["CircuitChange", "Inspector", "LaneCounts", "PauseChange", "QueueCounts", "held_back"]

log = logging.getLogger("conveyor.inspector")


_BY_NAME = {s.value: s for s in STATES}


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Jobs in one queue, by state: ``counts.queued``, ``counts.failed``, ... (one attribute
    per `JobState`, derived from the state table) or ``counts[JobState.QUEUED]``.

    Attributes:
        queue: the queue's name.
        by_state: the count of every state (0 for states with no jobs).
        paused: whether the queue is paused (`Inspector.pause`): claims take none of its jobs.
    """

    queue: str
    by_state: Mapping[JobState, int] = field(default_factory=dict)
    paused: bool = False

    def __getitem__(self, state: JobState) -> int:
        return self.by_state.get(state, 0)

    def __getattr__(self, name: str) -> int:
        state = _BY_NAME.get(name)
        if state is None:
            raise AttributeError(f"QueueCounts has no attribute {name!r}")
        return self.by_state.get(state, 0)

    @property
    def total(self) -> int:
        """All jobs stored for this queue."""
        return sum(self.by_state.values())


@dataclass(frozen=True, slots=True)
class PauseChange:
    """What `Inspector.pause` / `Inspector.resume` did.

    Attributes:
        queue: the queue's name.
        changed: `False` if the queue was paused (for `resume`: running) already.
        known: `False` if no job in the store uses the queue yet (allowed: a queue can be
            paused before its first job; but it may be a typo).
    """

    queue: str
    changed: bool
    known: bool


@dataclass(frozen=True, slots=True)
class CircuitChange:
    """What `Inspector.open_circuit` / `Inspector.close_circuit` did.

    Attributes:
        queue, lane: the lane.
        previous: its circuit's state before: ``"closed"``, ``"open"`` or ``"half_open"``.
        state: its state now (``"open"`` or ``"closed"``).
        until: when an opened circuit lets a probe through (None: closed, or open until
            closed by hand).
        known: `False` if the store kept no such lane before (it is created; but the name
            may be a typo).
    """

    queue: str
    lane: str
    previous: str
    state: str
    until: float | None
    known: bool


@dataclass(frozen=True, slots=True)
class LaneCounts:
    """The lanes of one queue, summed (`inspect stats`).

    Attributes:
        queue: the queue's name.
        lanes: lanes the store keeps for it.
        held: lanes with ready jobs that can start none now (`held_back`).
        open: lanes whose circuit is open or half-open.
    """

    queue: str
    lanes: int = 0
    held: int = 0
    open: int = 0


def held_back(lane: LaneInfo) -> bool:
    """Whether `lane` has ready jobs it can start none of now: every concurrency slot
    taken, no rate token, its circuit open (or half-open with its probe running)."""
    if not lane.ready:
        return False
    return (
        (lane.concurrency > 0 and lane.running >= lane.concurrency)
        or (lane.rate > 0 and lane.tokens < 1)
        or lane.circuit_state == "open"
        or (lane.circuit_state == "half_open" and lane.running > 0)
    )


async def _per_page(
    op: Callable[[list[str]], Awaitable[list[bool]]], ids: Sequence[str], size: int = 500
) -> int:
    """Apply a by-id store operation `size` ids per call; how many it applied to."""
    done = 0
    for start in range(0, len(ids), size):
        done += sum(await op(list(ids[start : start + size])))
    return done


class Inspector:
    """Administration over a backend. `app.inspector` returns one.

    Example:
        for q in await app.inspector.stats():
            print(q.queue, q.queued, q.failed)
        await app.inspector.requeue_all_failed()
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def stats(self, queue: str | None = None) -> list[QueueCounts]:
        """Counts per queue and state, sorted by queue name, each marked `paused` if it is
        (a paused queue with no jobs is listed too)."""
        counts = await self.backend.counts(queue)
        paused: set[str] = set()
        if isinstance(self.backend, QueueControl):  # a store without it pauses nothing
            paused = set(await self.backend.paused())
            if queue is not None:
                paused &= {queue}
        return [
            QueueCounts(
                q, {state: counts.get(q, {}).get(state, 0) for state in STATES}, q in paused
            )
            for q in sorted(counts.keys() | paused)
        ]

    async def pause(self, queue: str) -> PauseChange:
        """Pause `queue` for every worker on every host: from the store's next claim on, none
        of its jobs start (and the Redis handoff delivers none); running jobs finish;
        enqueues are still accepted. Lasts until `resume`, across restarts.

        Example:
            await app.inspector.pause("emails")
        """
        control = require(self.backend, QueueControl, "inspector.pause()")
        check_queue(queue)
        known = await self._known(queue)
        changed = await control.pause(queue)  # last: in effect when this returns
        if not known:
            log.warning("paused queue %r, which no job in the store uses yet", queue)
        return PauseChange(queue, changed, known)

    async def resume(self, queue: str) -> PauseChange:
        """Let workers claim from `queue` again (idle ones wake at once)."""
        control = require(self.backend, QueueControl, "inspector.resume()")
        check_queue(queue)
        changed = await control.resume(queue)
        return PauseChange(queue, changed, await self._known(queue))

    async def paused(self) -> list[str]:
        """The paused queues, by name."""
        return await require(self.backend, QueueControl, "inspector.paused()").paused()

    async def _known(self, queue: str) -> bool:
        counts = await self.backend.counts(queue)
        return any(n for per in counts.values() for n in per.values())

    # -- flow control ----------------------------------------------------------------------

    async def lanes(self, queue: str | None = None) -> list[LaneInfo]:
        """The lanes of flow control (of `queue`, or of every queue), by queue then lane:
        ready and running jobs, limits, tokens, circuit state. Idle lanes may be left out.

        Example:
            for lane in await app.inspector.lanes("default"):
                print(lane.lane, lane.running, lane.concurrency, lane.circuit_state)
        """
        control = require(self.backend, FlowControl, "inspector.lanes()")
        if queue is not None:
            check_queue(queue)
        return await control.lanes(queue)

    async def lane_counts(self, queue: str | None = None) -> list[LaneCounts]:
        """`lanes` summed per queue (queues with no lane are left out); empty for a store
        without flow control."""
        if not isinstance(self.backend, FlowControl):
            return []
        out: dict[str, LaneCounts] = {}
        for lane in await self.backend.lanes(queue):
            c = out.get(lane.queue) or LaneCounts(lane.queue)
            out[lane.queue] = LaneCounts(
                lane.queue,
                c.lanes + 1,
                c.held + held_back(lane),
                c.open + (lane.circuit_state != "closed"),
            )
        return [out[q] for q in sorted(out)]

    async def open_circuit(
        self, lane: str, *, queue: str = "default", duration: float | None = None
    ) -> CircuitChange:
        """Open `lane`'s circuit by hand, for every worker: none of its jobs starts (running
        ones finish) for `duration` seconds, then one probe is let through as for an opened
        circuit; with no `duration`, until `close_circuit`. A task with limits has the lane
        of its name (``limit_key``: ``"<task>:<key>"``; ``group``: the group).

        Raises:
            InvalidOption: a bad lane or queue name, or `duration` not > 0.

        Example:
            await app.inspector.open_circuit("push_crm", duration=600)
        """
        return await self._set_circuit(queue, lane, "open", duration)

    async def close_circuit(self, lane: str, *, queue: str = "default") -> CircuitChange:
        """Close `lane`'s circuit: its jobs start again at once (idle workers wake), with
        the failure window reset."""
        return await self._set_circuit(queue, lane, "closed", None)

    async def _set_circuit(
        self, queue: str, lane: str, state: str, duration: float | None
    ) -> CircuitChange:
        feature = f"inspector.{'open' if state == 'open' else 'close'}_circuit()"
        control = require(self.backend, FlowControl, feature)
        check_queue(queue)
        if not isinstance(lane, str) or not lane:
            raise InvalidOption(f"lane must be a non-empty string, got {lane!r}")
        try:
            check_key(lane)
        except InvalidOption:
            raise InvalidOption(
                f"invalid lane {lane[:300]!r}: use 1-255 characters from A-Z a-z 0-9 _ . : @ / "
                "+ = # - (a task's name, '<task>:<key>', or a group)"
            ) from None
        if duration is not None and (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not 0 < duration < float("inf")
        ):
            raise InvalidOption(
                f"circuit duration must be a number of seconds > 0, got {duration!r}"
            )
        known = any(info.lane == lane for info in await control.lanes(queue))
        previous = await control.set_circuit(queue, lane, state, duration)
        until = None
        if state == "open" and duration is not None:
            now = next((i for i in await control.lanes(queue) if i.lane == lane), None)
            until = now.open_until if now is not None else None
        if not known:
            log.warning(
                "set the circuit of lane %r of queue %r, which the store did not keep", lane, queue
            )
        return CircuitChange(queue, lane, previous, state, until, known)

    async def job(self, job_id: str) -> Job:
        """One job with its attempts. Raises `JobNotFound`."""
        (job,) = await self.backend.get([job_id])
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r} (never stored, or purged)")
        return job

    async def list(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        task: str | None = None,
        key: str | None = None,
        lane: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> Page:
        """One page of jobs in enqueue order; pass `page.next` as `after` for the next.
        `lane` selects a flow-control lane: a tenant group's value, or ``<task>:<key>``."""
        return await self.backend.query(JobFilter(queue, state, task, key, lane), after, limit)

    async def iter(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        task: str | None = None,
        key: str | None = None,
        lane: str | None = None,
    ) -> AsyncIterator[Job]:
        """Every matching job, fetched a page at a time."""
        after: str | None = None
        while True:
            page = await self.list(
                state=state, queue=queue, task=task, key=key, lane=lane, after=after, limit=500
            )
            for job in page.jobs:
                yield job
            if page.next is None:
                return
            after = page.next

    async def requeue(self, job_id: str) -> bool:
        """Put one failed or cancelled job back in its queue (history kept)."""
        return await self.backend.requeue(job_id)

    async def requeue_many(self, ids: Sequence[str]) -> int:
        """Put failed or cancelled jobs back in their queues, in one store call per 500;
        returns how many were (the others were in no such state, or unknown)."""
        return await _per_page(self.backend.requeue_many, ids)

    async def delete(self, ids: Sequence[str]) -> int:
        """Delete jobs that have ended (completed, failed, cancelled), one store call per
        500; returns how many were (live or unknown ones are left alone)."""
        return await _per_page(self.backend.delete, ids)

    async def copy(self, job_id: str) -> str:
        """Enqueue a new job like `job_id` (same task, arguments, queue, priority, limits,
        retries, timeout, meta and parents) that runs from the start; returns its id. The
        copy takes no unique key (it would be a duplicate of the original) and keeps none of
        the original's attempts, errors, result or progress. Raises `JobNotFound`."""
        job = await self.job(job_id)
        now = self.backend.clock.now()
        fresh = msgspec.structs.replace(
            job,
            id=new_job_id(now),
            state=JobState.WAITING if job.parents else JobState.QUEUED,
            run_at=now,
            enqueued_at=now,
            attempts=0,
            key=None,
            unique_until=None,
            deadline=None if job.deadline is not None and job.deadline <= now else job.deadline,
            waiting_for=0,
            result=None,
            errors=(),
            started_at=None,
            finished_at=None,
            worker=None,
            cancel_requested=False,
            checkpoint=None,
            progress={},
            meta={**job.meta, "copy_of": job.id},
        )
        (new_id,) = await self.backend.enqueue([fresh])
        return new_id

    async def workers(self) -> builtins.list[WorkerInfo]:
        """The workers online (their presence beats have not expired), by id."""
        return await require(self.backend, Presence, "inspector.workers()").workers()

    async def locks(self) -> builtins.list[LockInfo]:
        """The locks held now (`app.lock`), by name; none on a store without `Locks`."""
        if not isinstance(self.backend, Locks):
            return []
        return await self.backend.locks()

    async def metrics(
        self,
        since: timedelta | float = 3600.0,
        *,
        until: float | None = None,
        by: Literal["task", "queue"] = "task",
        queue: str | None = None,
    ) -> MetricsReport:
        """Job metrics over time, from the store's per-minute rollups (never a scan of jobs):
        counts by outcome, throughput per minute, duration and wait percentiles and the
        failure rate, per task (``by="task"``) or per queue, and in total.

        Args:
            since: how far back: a `timedelta` or seconds (e.g. ``timedelta(hours=1)``).
            until: the end of the range (epoch seconds; default now).
            by: group by ``"task"`` or ``"queue"``.
            queue: only this queue's jobs.

        Raises:
            InvalidOption: a negative or non-finite `since`, a bad `by` or queue name.
        """
        back = since.total_seconds() if isinstance(since, timedelta) else since
        if (
            isinstance(back, bool)
            or not isinstance(back, int | float)
            or not (math.isfinite(back) and back > 0)
        ):
            raise InvalidOption(f"metrics: since must be a duration > 0, not {since!r}")
        if by not in ("task", "queue"):
            raise InvalidOption(f"metrics: by must be 'task' or 'queue', not {by!r}")
        if queue is not None:
            check_queue(queue)
        store = require(self.backend, Rollups, "inspector.metrics()")
        end = self.backend.clock.now() if until is None else until
        rows = await store.rollups(end - back, end, queue=queue)
        return summarize(rows, since=end - back, until=end, by=by)

    async def requeue_all_failed(
        self,
        *,
        queue: str | None = None,
        task: str | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        """Requeue every failed (dead-letter) job matching the filters, one store call per
        page of jobs. Returns how many; `progress(n)` is called after each page with the
        number requeued so far.

        The cursor moves on in enqueue order, so a job that fails again meanwhile is not
        requeued twice by one call; one that can't be requeued (its unique key is held by a
        newer job) is passed over.
        """
        done, after = 0, None
        wanted = JobFilter(queue=queue, state=JobState.FAILED, task=task)
        while True:
            page = await self.backend.query(wanted, after, 500)
            if not page.jobs:
                return done
            done += sum(await self.backend.requeue_many([job.id for job in page.jobs]))
            if progress is not None:
                progress(done)
            if page.next is None:
                return done
            after = page.next

    async def count(self, state: JobState, *, queue: str | None = None) -> int:
        """How many jobs are in `state` (in `queue`, or in all queues)."""
        counts = await self.backend.counts(queue)
        return sum(per.get(state, 0) for per in counts.values())

    async def cancel(self, job_id: str, reason: str = "cancelled by an operator") -> JobState:
        """Cancel one job; a running one stops at its next heartbeat. Raises `JobNotFound`."""
        state = await self.backend.cancel(job_id, reason)
        if state is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return state

    async def purge(self, states: Iterable[JobState] = TERMINAL, *, older_than: float = 0) -> int:
        """Delete finished jobs that ended more than `older_than` seconds ago."""
        before = self.backend.clock.now() - older_than
        return await self.backend.purge(states, before=before)
