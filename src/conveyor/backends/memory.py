"""The in-memory backend: the reference implementation of the contract, for tests and demos.

All state lives in dicts and heaps behind one lock, so one instance may be shared by several
event loops and threads of one process. Nothing survives the process.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterable, Sequence

from msgspec.structs import replace

from conveyor.backends import rules
from conveyor.backends._wake import Wakeup
from conveyor.backends.base import Backend, JobFilter, Page
from conveyor.clock import Clock, SystemClock
from conveyor.errors import ClosedError
from conveyor.job import (
    TERMINAL,
    Cancelled,
    Completed,
    Failed,
    Job,
    JobState,
    Lease,
    Outcome,
    Retrying,
)

__all__ = ["MemoryBackend"]

_Entry = tuple[int, float, int, int, str]  # (-priority, run_at, seq, version, id)


class MemoryBackend(Backend):
    """Jobs in process memory. `App("memory://")` uses it.

    Example:
        backend = MemoryBackend()
        await backend.enqueue([job])
        leases = await backend.claim(["default"], limit=10, lease_for=30, worker="w1")
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._seq: dict[str, int] = {}
        self._version: dict[str, int] = {}
        self._tokens: dict[str, int] = {}
        self._expiry: dict[str, float] = {}
        self._keys: dict[str, str] = {}
        self._ready: dict[str, list[_Entry]] = {}
        self._scheduled: list[tuple[float, int, int, str]] = []
        self._counter = itertools.count(1)
        self._wakeup = Wakeup()
        self._closed = False

    # -- helpers (call with the lock held) -------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("the memory backend is closed")

    def _put(self, job: Job) -> None:
        """Store `job` and index it by state."""
        self._jobs[job.id] = job
        version = self._version.get(job.id, 0) + 1
        self._version[job.id] = version
        seq = self._seq[job.id]
        if job.state is JobState.QUEUED:
            heap = self._ready.setdefault(job.queue, [])
            heapq.heappush(heap, (-job.priority, job.run_at, seq, version, job.id))
        elif job.state is JobState.SCHEDULED:
            heapq.heappush(self._scheduled, (job.run_at, seq, version, job.id))

    def _promote_due(self, now: float) -> int:
        moved = 0
        while self._scheduled and self._scheduled[0][0] <= now:
            _, _, version, job_id = heapq.heappop(self._scheduled)
            job = self._jobs.get(job_id)
            if job and job.state is JobState.SCHEDULED and self._version[job_id] == version:
                self._put(replace(job, state=JobState.QUEUED))
                moved += 1
        return moved

    def _live_lease(self, lease: Lease) -> Job | None:
        job = self._jobs.get(lease.id)
        if job is None or job.state is not JobState.RUNNING:
            return None
        if self._tokens.get(lease.id) != lease.token:
            return None
        return job

    def _finish(self, job: Job, state: JobState, now: float, **changes: object) -> Job:
        return replace(job, state=state, finished_at=now, worker=None, **changes)

    # -- producing -------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[Job]) -> list[bool]:
        now = self.clock.now()
        out: list[bool] = []
        with self._lock:
            self._check()
            for job in jobs:
                if job.key is not None:
                    holder = self._jobs.get(self._keys.get(job.key, ""))
                    if holder is not None and rules.key_is_held(holder, now):
                        out.append(False)
                        continue
                    self._keys[job.key] = job.id
                self._seq[job.id] = next(self._counter)
                self._put(replace(job, state=rules.state_for_run_at(job.run_at, now)))
                out.append(True)
        if any(out):
            self._wakeup.notify()
        return out

    # -- running ---------------------------------------------------------------------------

    async def claim(
        self, queues: Sequence[str], limit: int, lease_for: float, worker: str
    ) -> list[Lease]:
        now = self.clock.now()
        leases: list[Lease] = []
        with self._lock:
            self._check()
            self._promote_due(now)
            for queue in queues:
                heap = self._ready.get(queue)
                while heap and len(leases) < limit:
                    _, _, _, version, job_id = heapq.heappop(heap)
                    job = self._jobs.get(job_id)
                    if job is None or job.state is not JobState.QUEUED:
                        continue
                    if self._version[job_id] != version:
                        continue
                    token = self._tokens.get(job_id, 0) + 1
                    self._tokens[job_id] = token
                    self._expiry[job_id] = now + lease_for
                    running = replace(
                        job,
                        state=JobState.RUNNING,
                        attempts=job.attempts + 1,
                        started_at=now,
                        worker=worker,
                    )
                    self._put(running)
                    leases.append(Lease(running, token, now + lease_for))
                if len(leases) >= limit:
                    break
        return leases

    async def extend(self, leases: Sequence[Lease], lease_for: float) -> list[Lease | None]:
        now = self.clock.now()
        out: list[Lease | None] = []
        with self._lock:
            self._check()
            for lease in leases:
                # Fencing is by token alone: a lease past its expiry that nobody rescued yet
                # is still the only claim on the job, so extending it is safe.
                job = self._live_lease(lease)
                if job is None:
                    out.append(None)
                    continue
                if job.cancel_requested:
                    self._expiry.pop(lease.id, None)
                    self._put(self._cancelled(job, Cancelled("cancel requested"), now))
                    out.append(None)
                    continue
                self._expiry[lease.id] = now + lease_for
                out.append(Lease(job, lease.token, now + lease_for))
        return out

    async def settle(self, outcomes: Sequence[tuple[Lease, Outcome]]) -> list[bool]:
        now = self.clock.now()
        out: list[bool] = []
        requeued = False
        with self._lock:
            self._check()
            for lease, outcome in outcomes:
                job = self._live_lease(lease)
                if job is None:
                    out.append(False)
                    continue
                self._expiry.pop(lease.id, None)
                if isinstance(outcome, Completed):
                    new = self._finish(job, JobState.COMPLETED, now, result=outcome.result)
                elif isinstance(outcome, Retrying):
                    state = rules.state_for_run_at(outcome.run_at, now)
                    requeued = True
                    new = replace(
                        job,
                        state=state,
                        run_at=outcome.run_at,
                        worker=None,
                        errors=(*job.errors, outcome.error),
                    )
                elif isinstance(outcome, Failed):
                    new = self._finish(
                        job, JobState.FAILED, now, errors=(*job.errors, outcome.error)
                    )
                else:
                    new = self._cancelled(job, outcome, now)
                self._put(new)
                out.append(True)
        if requeued:
            self._wakeup.notify()
        return out

    async def release(self, leases: Sequence[Lease]) -> list[bool]:
        now = self.clock.now()
        out: list[bool] = []
        with self._lock:
            self._check()
            for lease in leases:
                job = self._live_lease(lease)
                if job is None:
                    out.append(False)
                    continue
                self._expiry.pop(lease.id, None)
                if job.cancel_requested:
                    self._put(self._cancelled(job, Cancelled("cancel requested"), now))
                else:
                    self._put(
                        replace(
                            job,
                            state=rules.state_for_run_at(job.run_at, now),
                            attempts=max(0, job.attempts - 1),
                            worker=None,
                            started_at=None,
                        )
                    )
                out.append(True)
        if any(out):
            self._wakeup.notify()
        return out

    def _cancelled(self, job: Job, outcome: Cancelled, now: float) -> Job:
        if job.key is not None and self._keys.get(job.key) == job.id:
            del self._keys[job.key]
        meta = {**job.meta, "cancel_reason": outcome.reason}
        return self._finish(job, JobState.CANCELLED, now, meta=meta)

    # -- maintenance -----------------------------------------------------------------------

    async def promote(self) -> int:
        with self._lock:
            self._check()
            moved = self._promote_due(self.clock.now())
        if moved:
            self._wakeup.notify()
        return moved

    async def rescue(self) -> int:
        now = self.clock.now()
        rescued = 0
        with self._lock:
            self._check()
            for job_id, expiry in list(self._expiry.items()):
                if expiry > now:
                    continue
                del self._expiry[job_id]
                job = self._jobs[job_id]
                if job.state is not JobState.RUNNING:
                    continue
                rescued += 1
                if job.cancel_requested:
                    self._put(self._cancelled(job, Cancelled("cancel requested"), now))
                    continue
                error = rules.lease_expired_error(job.attempts, now)
                if job.attempts >= job.max_attempts:
                    new = self._finish(job, JobState.FAILED, now, errors=(*job.errors, error))
                else:
                    new = replace(
                        job, state=JobState.QUEUED, worker=None, errors=(*job.errors, error)
                    )
                self._put(new)
        if rescued:
            self._wakeup.notify()
        return rescued

    async def purge(self, states: Iterable[JobState], before: float | None = None) -> int:
        wanted = set(states) & TERMINAL
        now = self.clock.now()
        with self._lock:
            self._check()
            doomed = [
                j
                for j in self._jobs.values()
                if j.state in wanted
                and j.finished_at is not None
                and (
                    j.finished_at < before
                    if before is not None
                    else j.finished_at + j.keep_for <= now
                )
            ]
            for job in doomed:
                self._forget(job)
        return len(doomed)

    def _forget(self, job: Job) -> None:
        for table in (self._jobs, self._seq, self._version, self._tokens, self._expiry):
            table.pop(job.id, None)
        if job.key is not None and self._keys.get(job.key) == job.id:
            del self._keys[job.key]

    # -- administration --------------------------------------------------------------------

    async def cancel(self, job_id: str, reason: str = "cancelled") -> JobState | None:
        now = self.clock.now()
        with self._lock:
            self._check()
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state in (JobState.SCHEDULED, JobState.QUEUED):
                job = self._cancelled(job, Cancelled(reason), now)
                self._put(job)
            elif job.state is JobState.RUNNING:
                meta = {**job.meta, "cancel_reason": reason}
                job = replace(job, cancel_requested=True, meta=meta)
                self._jobs[job_id] = job
            return job.state

    async def requeue(self, job_id: str) -> bool:
        now = self.clock.now()
        with self._lock:
            self._check()
            job = self._jobs.get(job_id)
            if job is None or job.state not in (JobState.FAILED, JobState.CANCELLED):
                return False
            if job.key is not None:
                holder = self._jobs.get(self._keys.get(job.key, ""))
                if holder is not None and holder.id != job.id and rules.key_is_held(holder, now):
                    return False
                self._keys[job.key] = job.id
            self._put(
                replace(
                    job,
                    state=JobState.QUEUED,
                    run_at=now,
                    attempts=0,
                    finished_at=None,
                    cancel_requested=False,
                    result=None,
                )
            )
        self._wakeup.notify()
        return True

    async def get(self, ids: Sequence[str]) -> list[Job | None]:
        with self._lock:
            self._check()
            return [self._jobs.get(i) for i in ids]

    async def counts(self, queue: str | None = None) -> dict[str, dict[JobState, int]]:
        out: dict[str, dict[JobState, int]] = {}
        with self._lock:
            self._check()
            for job in self._jobs.values():
                if queue is None or job.queue == queue:
                    per = out.setdefault(job.queue, {})
                    per[job.state] = per.get(job.state, 0) + 1
        return out

    async def query(self, filter: JobFilter, after: str | None = None, limit: int = 100) -> Page:
        with self._lock:
            self._check()
            start = self._seq.get(after, 0) if after else 0
            if after and after not in self._seq:
                start = int(after) if after.isdigit() else 0
            matches = sorted(
                (self._seq[j.id], j)
                for j in self._jobs.values()
                if self._seq[j.id] > start
                and (filter.queue is None or j.queue == filter.queue)
                and (filter.state is None or j.state is filter.state)
                and (filter.task is None or j.task == filter.task)
                and (filter.key is None or j.key == filter.key)
            )
        page = [job for _, job in matches[:limit]]
        nxt = str(matches[limit - 1][0]) if len(matches) > limit else None
        return Page(page, nxt)

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        with self._lock:
            self._check()
            now = self.clock.now()
            if any(self._ready.get(q) for q in queues):
                return
            if self._scheduled:
                timeout = min(timeout, max(0.0, self._scheduled[0][0] - now))
        await self._wakeup.wait(timeout)

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
        self._wakeup.notify()
