"""The in-memory backend: the reference implementation of the contract, for tests and demos.

All state lives in dicts and heaps behind one lock, so one instance may be shared by several
event loops and threads of one process. Nothing survives the process.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Mapping, Sequence

import msgspec
from msgspec.structs import replace

from conveyor.backends import rules
from conveyor.backends._wake import Wakeup
from conveyor.backends.base import Backend, ClaimRequest, JobFilter, Page
from conveyor.backends.lanes import Lane, check_circuit_change, outcome_of
from conveyor.capabilities import LaneInfo, LockInfo, Rollup, WorkerInfo
from conveyor.clock import Clock, SystemClock
from conveyor.errors import DependencyError
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
from conveyor.names import check_queue
from conveyor.rollup import check_rows

__all__ = ["MemoryBackend", "from_url"]

_Entry = tuple[int, float, int, int, str]  # (-priority, run_at, seq, version, id)


class MemoryBackend(Backend):
    """Jobs in process memory. `App("memory://")` uses it.

    Example:
        backend = MemoryBackend()
        await backend.enqueue([job])
        leases = await backend.claim(ClaimRequest(["default"], 10, 30.0, "w1"))
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
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (value, expires_at)
        self._locks: dict[str, tuple[str | None, int, float]] = {}  # name -> (owner, token, exp)
        self._lock_freed = Wakeup()  # lock waiters (apart from job waiters: no spurious claims)
        self._presence: dict[str, tuple[WorkerInfo, float]] = {}  # id -> (info, expires_at)
        # (minute, queue, task) -> (values, expires_at): the `Rollups` capability
        self._rollups: dict[tuple[int, str, str], tuple[dict[str, float], float]] = {}
        self._paused: set[str] = set()
        self._children: dict[str, list[str]] = {}  # parent id -> ids of waiting children
        self._ended: list[Job] = []  # parents that ended in this step, children to count
        self._lanes: dict[str, dict[str, Lane]] = {}  # queue -> lane name -> its state
        self._lane_ready: dict[tuple[str, str], list[_Entry]] = {}  # (queue, lane) -> heap
        self._turns: dict[str, tuple[float, float, bool]] = {}  # queue -> (vtime, plain pass,
        # plain active): the pass of the last job served, and the plain jobs' turn state

    # -- helpers (call with the lock held) -------------------------------------------------

    def _put(self, job: Job) -> None:
        """Store `job` and index it by state (a parent that ended is noted: `_count_ended`
        tells its children, before the lock is let go)."""
        old = self._jobs.get(job.id)
        self._jobs[job.id] = job
        if job.id in self._children and job.state in TERMINAL:
            self._ended.append(job)
        version = self._version.get(job.id, 0) + 1
        self._version[job.id] = version
        seq = self._seq[job.id]
        if old is not None and old.lane and old.state is JobState.RUNNING is not job.state:
            self._left_running(old, job)
        if job.state is JobState.QUEUED:
            if job.lane:
                heap = self._lane_ready.setdefault((job.queue, job.lane), [])
                lanes = self._lanes.setdefault(job.queue, {})
                lane = lanes.get(job.lane)
                if lane is None:
                    lanes[job.lane] = Lane.new(job, self.clock.now())
                else:
                    lane.configure(job)
            else:
                heap = self._ready.setdefault(job.queue, [])
            heapq.heappush(heap, (-job.priority, job.run_at, seq, version, job.id))
        elif job.state is JobState.SCHEDULED:
            heapq.heappush(self._scheduled, (job.run_at, seq, version, job.id))

    def _left_running(self, running: Job, after: Job) -> None:
        """A lane job left running: its slot comes back, its circuit counts the outcome,
        and idle workers are woken if that lets a ready job of the lane start."""
        lane = self._lanes.get(running.queue, {}).get(running.lane)
        if lane is None:
            return
        freed = lane.left(running.id, outcome_of(running, after), self.clock.now())
        if freed and self._lane_ready.get((running.queue, running.lane)):
            self.local_wakeup.notify()

    def _top(self, heap: list[_Entry] | None) -> Job | None:
        """The best job still queued in `heap` (stale entries are dropped), not popped."""
        while heap:
            _, _, _, version, job_id = heap[0]
            job = self._jobs.get(job_id)
            if job and job.state is JobState.QUEUED and self._version[job_id] == version:
                return job
            heapq.heappop(heap)
        return None

    def _take_turns(self, queue: str, lanes: dict[str, Lane], want: int, now: float) -> list[Job]:
        """Up to `want` ready jobs of `queue`, served in turns (see `Backend.claim`); each
        is popped from its heap and holds its lane's slot, token or probe."""
        vtime, plain_pass, plain_active = self._turns.get(queue, (0.0, 0.0, False))
        plain = self._ready.get(queue)
        out: list[Job] = []
        while len(out) < want:
            best: tuple[float, int, str] | None = None
            if self._top(plain) is not None:
                if not plain_active:
                    plain_pass, plain_active = max(plain_pass, vtime), True
                best = (plain_pass, 0, "")
            else:
                plain_active = False
            for name, lane in lanes.items():
                if self._top(self._lane_ready.get((queue, name))) is None or not lane.can_take(now):
                    lane.active = False
                    continue
                if not lane.active:
                    lane.pass_, lane.active = max(lane.pass_, vtime), True
                if best is None or (lane.pass_, 1, name) < best:
                    best = (lane.pass_, 1, name)
            if best is None:
                break
            vtime = best[0]
            if best[1] == 0:
                assert plain is not None
                plain_pass += 1.0
                job_id = heapq.heappop(plain)[4]
            else:
                lane = lanes[best[2]]
                job_id = heapq.heappop(self._lane_ready[(queue, best[2])])[4]
                lane.take(job_id, now)
                lane.pass_ += 1.0 / lane.weight
            out.append(self._jobs[job_id])
        self._turns[queue] = (vtime, plain_pass, plain_active)
        for name in [n for n, lane in lanes.items() if self._idle(queue, n, lane, now)]:
            del lanes[name]
            self._lane_ready.pop((queue, name), None)
        return out

    def _idle(self, queue: str, name: str, lane: Lane, now: float) -> bool:
        return self._top(self._lane_ready.get((queue, name))) is None and lane.idle(now)

    def _promote_due(self, now: float) -> int:
        moved = 0
        while self._scheduled and self._scheduled[0][0] <= now:
            _, _, version, job_id = heapq.heappop(self._scheduled)
            job = self._jobs.get(job_id)
            if job and job.state is JobState.SCHEDULED and self._version[job_id] == version:
                self._put(replace(job, state=JobState.QUEUED))
                moved += 1
        return moved

    def _count_ended(self, now: float) -> None:
        """Each waiting child of a parent that ended counts it: runnable once every parent
        has ended, or cancelled (and so, in turn, its children) by a parent that failed."""
        woke = False
        while self._ended:
            parent = self._ended.pop()
            for child_id in self._children.pop(parent.id, ()):
                child = self._jobs.get(child_id)
                if child is None or child.state is not JobState.WAITING:
                    continue
                if parent.state is JobState.COMPLETED or child.on_parent_failure == "run":
                    if child.waiting_for > 1:
                        self._jobs[child_id] = replace(child, waiting_for=child.waiting_for - 1)
                        continue
                    state = rules.state_for_run_at(child.run_at, now)
                    self._put(replace(child, state=state, waiting_for=0))
                    woke = woke or state is JobState.QUEUED
                else:
                    reason = f"parent {parent.id} {parent.state.value}"
                    self._put(self._cancelled(child, Cancelled(reason), now))
        if woke:
            self.local_wakeup.notify()

    def _blocked(self, job: Job, now: float) -> Job:
        """`job` as stored by an enqueue, by its parents' states (see `Backend.enqueue`)."""
        waiting: list[str] = []
        for parent_id in job.parents:
            parent = self._jobs[parent_id]
            if not parent.state.terminal:
                waiting.append(parent_id)
            elif parent.state is not JobState.COMPLETED and job.on_parent_failure != "run":
                reason = f"parent {parent_id} {parent.state.value}"
                return self._cancelled(job, Cancelled(reason), now)
        if not waiting and not job.waiting_for:
            return replace(job, state=rules.state_for_run_at(job.run_at, now))
        for parent_id in waiting:
            self._children.setdefault(parent_id, []).append(job.id)
        return replace(job, state=JobState.WAITING, waiting_for=len(waiting) + job.waiting_for)

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

    async def _enqueue(self, jobs: Sequence[Job], now: float) -> list[str]:
        out: list[str] = []
        with self._lock:
            if any(job.parents for job in jobs):
                self._check_parents(jobs)
            renamed: dict[str, str] = {}  # a duplicate's id -> its key's holder
            for job in jobs:
                if job.id in self._jobs:  # stored already (a retried call)
                    out.append(job.id)
                    continue
                if job.key is not None:
                    holder = self._jobs.get(self._keys.get(job.key, ""))
                    if holder is not None and rules.key_is_held(holder, now):
                        out.append(holder.id)
                        renamed[job.id] = holder.id
                        continue
                self._seq[job.id] = next(self._counter)
                if job.parents or job.waiting_for:
                    parents = tuple(renamed.get(p, p) for p in job.parents)
                    job = self._blocked(replace(job, parents=parents), now)
                else:
                    job = replace(job, state=rules.state_for_run_at(job.run_at, now))
                if job.key is not None and job.state is not JobState.CANCELLED:
                    self._keys[job.key] = job.id
                self._put(job)
                out.append(job.id)
        return out

    async def _link(self, child: str, parents: Sequence[str], holds: int, now: float) -> bool:
        with self._lock:
            job = self._jobs.get(child)
            if job is None or job.state is not JobState.WAITING:
                return False
            for parent_id in parents:
                if parent_id not in self._jobs:
                    raise DependencyError(
                        f"job {child} can't wait for {parent_id}, which this store doesn't "
                        "hold (unknown, or already purged); nothing was changed"
                    )
            new = [p for p in parents if p not in job.parents]
            live = [p for p in new if not self._jobs[p].state.terminal]
            job = replace(job, parents=(*job.parents, *new))
            for parent_id in new:
                parent = self._jobs[parent_id]
                failed = parent.state.terminal and parent.state is not JobState.COMPLETED
                if failed and job.on_parent_failure != "run":
                    reason = f"parent {parent_id} {parent.state.value}"
                    self._put(self._cancelled(job, Cancelled(reason), now))
                    self._count_ended(now)
                    return True
            for parent_id in live:
                self._children.setdefault(parent_id, []).append(child)
            left = max(0, job.waiting_for + len(live) + holds)
            if left:
                self._jobs[child] = replace(job, waiting_for=left)
            else:
                self._put(
                    replace(job, state=rules.state_for_run_at(job.run_at, now), waiting_for=0)
                )
            return True

    def _check_parents(self, jobs: Sequence[Job]) -> None:
        earlier: set[str] = set()
        for job in jobs:
            for parent in job.parents:
                if parent not in earlier and parent not in self._jobs:
                    raise DependencyError(
                        f"job {job.id} depends on {parent}, which this store doesn't hold "
                        "(unknown, or already purged); nothing was written"
                    )
            earlier.add(job.id)

    # -- running ---------------------------------------------------------------------------

    async def _claim(self, request: ClaimRequest, now: float) -> list[Lease]:
        limit, lease_for, worker = request.limit, request.lease_for, request.worker
        leases: list[Lease] = []
        with self._lock:
            self._promote_due(now)
            for queue in request.queues:
                if queue in self._paused:
                    continue
                lanes = self._lanes.get(queue)
                if lanes:
                    for job in self._take_turns(queue, lanes, limit - len(leases), now):
                        leases.append(self._lease(job, lease_for, worker, now))
                    continue
                heap = self._ready.get(queue)
                while heap and len(leases) < limit:
                    _, _, _, version, job_id = heapq.heappop(heap)
                    found = self._jobs.get(job_id)
                    if found is None or found.state is not JobState.QUEUED:
                        continue
                    if self._version[job_id] != version:
                        continue
                    leases.append(self._lease(found, lease_for, worker, now))
                if len(leases) >= limit:
                    break
        return leases

    def _lease(self, job: Job, lease_for: float, worker: str, now: float) -> Lease:
        token = self._tokens.get(job.id, 0) + 1
        self._tokens[job.id] = token
        self._expiry[job.id] = now + lease_for
        running = replace(
            job, state=JobState.RUNNING, attempts=job.attempts + 1, started_at=now, worker=worker
        )
        self._put(running)
        return Lease(running, token, now + lease_for)

    async def _extend(
        self, leases: Sequence[Lease], lease_for: float, now: float
    ) -> list[Lease | None]:
        out: list[Lease | None] = []
        with self._lock:
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
            self._count_ended(now)
        return out

    async def _settle(self, outcomes: Sequence[tuple[Lease, Outcome]], now: float) -> list[bool]:
        out: list[bool] = []
        with self._lock:
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
            self._count_ended(now)
        return out

    async def _release(self, leases: Sequence[Lease], now: float) -> list[bool]:
        out: list[bool] = []
        with self._lock:
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
            self._count_ended(now)
        return out

    async def _annotate(
        self, items: Sequence[tuple[Lease, Mapping[str, bytes | None]]], now: float
    ) -> list[bool]:
        out: list[bool] = []
        with self._lock:
            for lease, values in items:
                job = self._live_lease(lease)
                if job is None:
                    out.append(False)
                    continue
                changes: dict[str, object] = {}
                if "checkpoint" in values:
                    changes["checkpoint"] = values["checkpoint"]
                if "progress" in values:
                    raw = values["progress"]
                    changes["progress"] = {} if raw is None else _json_object(raw)
                self._put(replace(job, **changes))
                out.append(True)
        return out

    def _cancelled(self, job: Job, outcome: Cancelled, now: float) -> Job:
        if job.key is not None and self._keys.get(job.key) == job.id:
            del self._keys[job.key]
        meta = {**job.meta, "cancel_reason": outcome.reason}
        return self._finish(job, JobState.CANCELLED, now, meta=meta)

    # -- maintenance -----------------------------------------------------------------------

    async def _promote(self, now: float) -> int:
        with self._lock:
            return self._promote_due(now)

    async def _rescue(self, now: float) -> int:
        rescued = 0
        with self._lock:
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
            self._count_ended(now)
        return rescued

    async def _purge(self, states: frozenset[JobState], before: float | None, now: float) -> int:
        with self._lock:
            doomed = [
                j
                for j in self._jobs.values()
                if j.state in states
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

    async def _delete(self, ids: Sequence[str], now: float) -> list[bool]:
        with self._lock:
            out = []
            for job_id in ids:
                job = self._jobs.get(job_id)
                ok = job is not None and job.state in TERMINAL
                if ok:
                    assert job is not None
                    self._forget(job)
                out.append(ok)
            return out

    def _forget(self, job: Job) -> None:
        for table in (self._jobs, self._seq, self._version, self._tokens, self._expiry):
            table.pop(job.id, None)
        if job.key is not None and self._keys.get(job.key) == job.id:
            del self._keys[job.key]

    # -- administration --------------------------------------------------------------------

    async def _cancel(self, job_id: str, reason: str, now: float) -> JobState | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state in (JobState.WAITING, JobState.SCHEDULED, JobState.QUEUED):
                job = self._cancelled(job, Cancelled(reason), now)
                self._put(job)
                self._count_ended(now)
            elif job.state is JobState.RUNNING:
                meta = {**job.meta, "cancel_reason": reason}
                job = replace(job, cancel_requested=True, meta=meta)
                self._jobs[job_id] = job
            return job.state

    async def _requeue(self, ids: Sequence[str], now: float) -> list[bool]:
        with self._lock:
            return [self._requeue_one(job_id, now) for job_id in ids]

    def _requeue_one(self, job_id: str, now: float) -> bool:
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
        return True

    async def _get(self, ids: Sequence[str]) -> list[Job | None]:
        with self._lock:
            return [self._jobs.get(i) for i in ids]

    async def _counts(self, queue: str | None) -> dict[str, dict[JobState, int]]:
        out: dict[str, dict[JobState, int]] = {}
        with self._lock:
            for job in self._jobs.values():
                if queue is None or job.queue == queue:
                    per = out.setdefault(job.queue, {})
                    per[job.state] = per.get(job.state, 0) + 1
        return out

    async def _query(self, filter: JobFilter, after: str | None, limit: int) -> Page:
        with self._lock:
            start = int(after) if after else 0
            matches = sorted(
                (self._seq[j.id], j)
                for j in self._jobs.values()
                if self._seq[j.id] > start
                and (filter.queue is None or j.queue == filter.queue)
                and (filter.state is None or j.state is filter.state)
                and (filter.task is None or j.task == filter.task)
                and (filter.key is None or j.key == filter.key)
                and (filter.lane is None or j.lane == filter.lane)
            )
        page = [job for _, job in matches[:limit]]
        nxt = str(matches[limit - 1][0]) if len(matches) > limit else None
        return Page(page, nxt)

    async def _wait(self, queues: Sequence[str], timeout: float) -> None:
        with self._lock:
            now = self.clock.now()
            live = [q for q in queues if q not in self._paused]
            if any(self._ready.get(q) for q in live):
                return
            if self._scheduled:
                timeout = min(timeout, max(0.0, self._scheduled[0][0] - now))
            for q in live:
                for name, lane in self._lanes.get(q, {}).items():
                    if self._top(self._lane_ready.get((q, name))) is None:
                        continue
                    if lane.can_take(now):
                        return
                    due = lane.wake_at(now)
                    if due is not None:
                        timeout = min(timeout, max(0.0, due - now))
        await self.local_wakeup.wait(timeout)

    async def _aclose(self) -> None:
        pass

    # -- capabilities (see `conveyor.capabilities`) ----------------------------------------

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        """`Counters`: add to a fixed-window counter."""
        self._open()
        now = self.clock.now()
        with self._lock:
            value, expires = self._counters.get(key, (0, 0.0))
            if expires <= now:
                value, expires = 0, now + ttl
            value += amount
            self._counters[key] = (value, expires)
            return value

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> int | None:
        """`Locks`: take a free or expired lock; its new fencing token."""
        self._open()
        now = self.clock.now()
        with self._lock:
            holder, token, expires = self._locks.get(name, (None, 0, 0.0))
            if holder is not None and expires > now:
                return None
            self._locks[name] = (owner, token + 1, now + ttl)
            return token + 1

    async def extend_lock(self, name: str, token: int, ttl: float) -> bool:
        """`Locks`: hold for `ttl` more seconds if `token` still holds it."""
        self._open()
        now = self.clock.now()
        with self._lock:
            holder = self._holder(name, token, now)
            if holder is not None:
                self._locks[name] = (holder, token, now + ttl)
            return holder is not None

    async def release_lock(self, name: str, token: int) -> bool:
        """`Locks`: free the lock if `token` still holds it."""
        self._open()
        now = self.clock.now()
        with self._lock:
            holder = self._holder(name, token, now)
            if holder is not None:
                self._locks[name] = (None, token, 0.0)
        if holder is not None:
            self._lock_freed.notify()
        return holder is not None

    async def wait_lock(self, name: str, timeout: float) -> None:
        """`Locks`: until a release in this store, the holder's expiry or `timeout`."""
        self._open()
        now = self.clock.now()
        with self._lock:
            holder, _, expires = self._locks.get(name, (None, 0, 0.0))
            if holder is None or expires <= now:
                return
        await self._lock_freed.wait(min(timeout, expires - now))

    def _holder(self, name: str, token: int, now: float) -> str | None:
        """Who holds `name` with `token`, if that holding is live (call with the lock held)."""
        holder, current, expires = self._locks.get(name, (None, 0, 0.0))
        return holder if current == token and expires > now else None

    async def locks(self) -> list[LockInfo]:
        """`Locks`: the locks held now."""
        self._open()
        now = self.clock.now()
        with self._lock:
            return [
                LockInfo(name, owner, token, expires)
                for name, (owner, token, expires) in sorted(self._locks.items())
                if owner is not None and expires > now
            ]

    async def pause(self, queue: str) -> bool:
        """`QueueControl`: stop claims from `queue`; `True` if it was running."""
        self._open()
        check_queue(queue)
        with self._lock:
            if queue in self._paused:
                return False
            self._paused.add(queue)
            return True

    async def resume(self, queue: str) -> bool:
        """`QueueControl`: claims take from `queue` again; `True` if it was paused."""
        self._open()
        check_queue(queue)
        with self._lock:
            if queue not in self._paused:
                return False
            self._paused.discard(queue)
        self._woke(True)  # idle workers of this process claim what waited
        return True

    async def paused(self) -> list[str]:
        """`QueueControl`: the paused queues, by name."""
        self._open()
        with self._lock:
            return sorted(self._paused)

    async def lanes(self, queue: str | None = None) -> list[LaneInfo]:
        """`FlowControl`: the lanes kept, by queue then name (idle ones are forgotten)."""
        self._open()
        now = self.clock.now()
        with self._lock:
            ready: dict[tuple[str, str], int] = {}
            for job in self._jobs.values():
                if job.lane and job.state is JobState.QUEUED:
                    ready[(job.queue, job.lane)] = ready.get((job.queue, job.lane), 0) + 1
            out: list[LaneInfo] = []
            for q in sorted(self._lanes):
                if queue is not None and q != queue:
                    continue
                lanes = self._lanes[q]
                for name in sorted(lanes):
                    n = ready.get((q, name), 0)
                    if n == 0 and lanes[name].idle(now):
                        del lanes[name]
                        continue
                    out.append(lanes[name].info(q, name, n, now))
            return out

    async def set_circuit(
        self, queue: str, lane: str, state: str, duration: float | None = None
    ) -> str:
        """`FlowControl`: open or close a lane's circuit by hand; the state it was in."""
        self._open()
        check_circuit_change(queue, lane, state, duration)
        now = self.clock.now()
        with self._lock:
            lanes = self._lanes.setdefault(queue, {})
            found = lanes.get(lane)
            if found is None:
                found = lanes[lane] = Lane(tokens_at=now)
            old = found.set_circuit(state, duration, now)
        self._woke(True)
        return old

    async def beat(self, worker: WorkerInfo, ttl: float) -> None:
        """`Presence`: record `worker` as alive for `ttl` seconds."""
        self._open()
        now = self.clock.now()
        with self._lock:
            self._presence[worker.id] = (replace(worker, seen_at=now), now + ttl)

    async def workers(self) -> list[WorkerInfo]:
        """`Presence`: workers heard from within their ttl."""
        self._open()
        now = self.clock.now()
        with self._lock:
            for worker_id, (_, expires) in list(self._presence.items()):
                if expires <= now:
                    del self._presence[worker_id]
            return [info for _, (info, _) in sorted(self._presence.items())]

    async def leave(self, worker_id: str) -> None:
        """`Presence`: forget `worker_id`."""
        self._open()
        with self._lock:
            self._presence.pop(worker_id, None)

    async def add_rollups(self, rows: Sequence[Rollup], keep_for: float) -> None:
        """`Rollups`: add each row's values to its minute's."""
        self._open()
        check_rows(rows, keep_for)
        now = self.clock.now()
        with self._lock:
            for key, (_, expires) in list(self._rollups.items()):
                if expires <= now:
                    del self._rollups[key]
            for row in rows:
                key = (row.minute, row.queue, row.task)
                values, expires = self._rollups.get(key, ({}, 0.0))
                for name, amount in row.values.items():
                    values[name] = values.get(name, 0.0) + float(amount)
                self._rollups[key] = (values, max(expires, row.minute + 60 + keep_for))

    async def rollups(
        self, since: float, until: float | None = None, *, queue: str | None = None
    ) -> list[Rollup]:
        """`Rollups`: the rows of the minutes overlapping ``[since, until)``."""
        self._open()
        now = self.clock.now()
        end = now if until is None else until
        first = since // 60 * 60
        with self._lock:
            return [
                Rollup(minute=m, queue=q, task=t, values=dict(values))
                for (m, q, t), (values, expires) in sorted(self._rollups.items())
                if first <= m < end and expires > now and (queue is None or q == queue)
            ]


def from_url(url: str, clock: Clock | None = None) -> MemoryBackend:
    """``memory://``: a new, empty in-process store."""
    return MemoryBackend(clock=clock)


def _json_object(raw: bytes) -> dict[str, object]:
    return msgspec.json.decode(raw, type=dict[str, object])
