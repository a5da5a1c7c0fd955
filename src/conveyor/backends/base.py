"""The backend contract: the async, batch-first, fenced operations every job store provides.

A backend stores `Job` records and moves them through the lifecycle in atomic steps. It
sees payloads and results as opaque bytes and never imports user code. Every transition of
a running job is *fenced*: it applies only while the caller's lease token is still the
job's current one, so a stale worker can never settle or extend a job it lost.

`Backend`'s public methods are template methods: they own the guards (empty input, a
closed store, bad limits), read `now` from the clock once, split large inputs into chunks
of `op_batch`, and wake local waiters after changes that make work ready. A store
implements only the storage, in the `_`-prefixed abstract hooks, each one atomic. The
optional capabilities (counters, locks, presence) are protocols in `conveyor.capabilities`.

`conveyor.testing.contract.BackendContract` is the test suite every backend must pass
unchanged.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Self, TypeVar

import msgspec

from conveyor.backends._wake import Wakeup
from conveyor.capabilities import Counters
from conveyor.clock import Clock
from conveyor.errors import ClosedError, DependencyError, InvalidOption
from conveyor.job import TERMINAL, Job, JobState, Lease, Outcome

__all__ = [
    "ANNOTATIONS",
    "FEEDS",
    "MAX_PAGE",
    "MAX_PARENTS",
    "PARENT_POLICIES",
    "Backend",
    "ClaimRequest",
    "Counters",
    "JobFilter",
    "Page",
]

#: The job fields a running job writes about itself through `Backend.annotate`.
ANNOTATIONS = ("checkpoint", "progress")

#: The largest page `Backend.query` returns.
MAX_PAGE = 10_000

#: What a job does when a parent fails or is cancelled (`Job.on_parent_failure`).
PARENT_POLICIES = ("cancel", "run")
#: How parents' results reach a job's handler (`Job.feed`).
FEEDS = ("", "one", "all")
#: The most parents one job may have (a chord callback has one per member).
MAX_PARENTS = 100_000

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs `Backend.query` returns. Every field left `None` matches everything."""

    queue: str | None = None
    state: JobState | None = None
    task: str | None = None
    key: str | None = None
    lane: str | None = None  # a flow-control lane: a tenant group, or "<task>:<key>"


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query: the jobs, oldest first, and the cursor of the next page."""

    jobs: list[Job]
    next: str | None


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What a worker asks of `Backend.claim`: up to `limit` ready jobs from `queues`.

    Attributes:
        queues: queue names, in the order to take them.
        limit: the most jobs to lease (a worker asks for its free slots).
        lease_for: seconds each lease lasts before it must be extended.
        worker: the claiming worker's name (recorded on the job).

    Everything that changes *which* job a claim may take (paused queues, concurrency and
    rate limits, tenant groups, dependencies) is decided inside each store's atomic claim;
    what a worker must say about it goes here as new fields with defaults.

    Example:
        leases = await backend.claim(ClaimRequest(["default"], 10, 30.0, "w1"))
    """

    queues: Sequence[str]
    limit: int
    lease_for: float
    worker: str


class Backend(abc.ABC):
    """A durable store of jobs. See DESIGN.md, "The backend contract".

    Ordering of `claim`: queues in the order given, then higher priority first, then
    earlier `run_at`, then enqueue order. Tokens are fresh on every claim.
    """

    clock: Clock

    #: How the producer coalesces concurrent single enqueues for this store: at most
    #: `enqueue_batch` jobs per call, `enqueue_concurrency` calls in flight. An in-process
    #: store wants one large call; a networked one wants several smaller calls in flight,
    #: so the server works on one batch while the callers of the last one build the next.
    enqueue_batch: int = 1000
    enqueue_concurrency: int = 1
    #: The most items one storage hook call gets (enqueue, extend, settle, release, get):
    #: bounds how long one call holds a server or a write lock. 0: no limit.
    op_batch: ClassVar[int] = 0

    _closed: bool = False
    _local: Wakeup | None = None

    # -- plumbing for stores ---------------------------------------------------------------

    @property
    def local_wakeup(self) -> Wakeup:
        """Waiters in this process, woken after changes that may make work ready (stores
        whose `wait` can't be told by the store itself use it)."""
        if self._local is None:
            self._local = Wakeup()
        return self._local

    def _open(self) -> None:
        if self._closed:
            raise ClosedError(f"the store {self!r} is closed")

    async def _chunked(
        self, hook: Callable[[Sequence[T], float], Awaitable[list[R]]], items: Sequence[T]
    ) -> list[R]:
        self._open()
        if not items:
            return []
        now = self.clock.now()
        size = self.op_batch
        if not size or len(items) <= size:
            return await hook(items, now)
        out: list[R] = []
        for start in range(0, len(items), size):
            out += await hook(items[start : start + size], now)
        return out

    def _woke(self, changed: object) -> None:
        if changed and self._local is not None:
            self._local.notify()

    # -- producing -------------------------------------------------------------------------

    #: Whether a job's parents may be in other queues than its own (a Redis Cluster keeps
    #: each queue in its own slot, and one atomic step can't span slots).
    cross_queue_dependencies: bool = True

    async def enqueue(self, jobs: Sequence[Job]) -> list[str]:
        """Insert jobs; for each, the id of the job that now holds its place: its own id
        when stored, the id of the job holding its `key` when it was a duplicate (skipped).

        A key is held while its job is live (waiting, scheduled, queued, running), and after
        it ends (completed or failed) until `unique_until` passes or the job is purged.
        Cancelled jobs release their key. Jobs with `run_at` in the future are stored
        `scheduled`.

        Dependencies: a job with `parents` is stored `waiting` while any parent has not
        ended, `waiting_for` counting those, plus the holds it was enqueued with (its own
        `waiting_for`, given back with `link`: a job enqueued with holds waits for them
        even without parents). A parent is a stored job or a job earlier in
        the same call (a parent skipped there as a duplicate stands for its key's holder).
        A parent that already ended counts as ended: completed, or failed/cancelled with
        ``on_parent_failure="run"``; one that failed or was cancelled otherwise makes the
        job stored `cancelled` at once, its ``cancel_reason`` naming the parent. An unknown
        (or purged) parent, a job its own parent, a parent later in the call (a cycle) or a
        parent in another queue where `cross_queue_dependencies` is false is a
        `DependencyError`, and nothing of the call is written.

        When a parent ends (every path: settle, rescue, cancel, a heartbeat that finds a
        cancel request), in the same atomic step each waiting child counts it: completed,
        or with the policy ``"run"``, its `waiting_for` drops and at 0 it becomes scheduled
        or queued (by its `run_at`); failed or cancelled with the policy ``"cancel"``, the
        child is cancelled (``cancel_reason`` ``"parent <id> failed"``) and so, in turn,
        are its own waiting children. Each parent→child edge counts once: a parent
        requeued and ended again changes nothing for its children.
        """
        for job in jobs:
            holds = job.waiting_for
            if holds and (isinstance(holds, bool) or not 0 < holds <= MAX_PARENTS):
                raise InvalidOption(
                    f"job {job.id}: waiting_for (holds) must be within 0..{MAX_PARENTS}, "
                    f"not {holds!r}"
                )
        if any(job.parents for job in jobs):
            await self._check_dependencies(jobs)
        if self.op_batch and len(jobs) > self.op_batch and any(job.parents for job in jobs):
            out = await self._enqueue_graph(jobs)
        else:
            out = await self._chunked(self._enqueue, jobs)
        self._woke(out)
        return out

    @abc.abstractmethod
    async def _enqueue(self, jobs: Sequence[Job], now: float) -> list[str]:
        """Store `jobs` in one atomic step (see `enqueue`); parents are checked for shape
        (`_check_dependencies`), and the store checks that stored parents exist."""

    async def _check_dependencies(self, jobs: Sequence[Job]) -> None:
        """Refuse, before anything is written, a graph that can't be stored: policies and
        feeds that don't exist, cycles, parents neither earlier in the call nor stored."""
        self._open()
        position = {job.id: i for i, job in enumerate(jobs)}
        outside: dict[str, Job] = {}
        for i, job in enumerate(jobs):
            if job.on_parent_failure not in PARENT_POLICIES:
                raise InvalidOption(
                    f"on_parent_failure must be one of {', '.join(PARENT_POLICIES)}, "
                    f"not {job.on_parent_failure!r}"
                )
            if job.feed not in FEEDS:
                raise InvalidOption(f"feed must be one of {FEEDS!r}, not {job.feed!r}")
            if len(job.parents) > MAX_PARENTS:
                raise DependencyError(
                    f"job {job.id} has {len(job.parents)} parents; at most {MAX_PARENTS}"
                )
            if len(set(job.parents)) != len(job.parents):
                raise DependencyError(f"job {job.id} lists a parent twice")
            for parent in job.parents:
                if not parent or "," in parent:
                    raise DependencyError(f"job {job.id}: {parent!r} is not a job id")
                at = position.get(parent)
                if at is None:
                    outside[parent] = job
                elif at >= i:
                    what = "itself" if at == i else f"{parent}, which comes after it"
                    raise DependencyError(
                        f"job {job.id} depends on {what}: a cycle (a call lists parents "
                        "before their children)"
                    )
                elif not self.cross_queue_dependencies and jobs[at].queue != job.queue:
                    raise DependencyError(_cross_queue(self, job, parent, jobs[at].queue))
        if not outside:
            return
        ids = list(outside)
        found = await self._chunked(lambda part, now: self._get(part), ids)
        for parent, got in zip(ids, found, strict=True):
            child = outside[parent]
            if got is None:
                raise DependencyError(
                    f"job {child.id} depends on {parent}, which this store doesn't hold "
                    "(unknown, or already purged); nothing was written"
                )
            if not self.cross_queue_dependencies and got.queue != child.queue:
                raise DependencyError(_cross_queue(self, child, parent, got.queue))

    async def link(self, child: str, parents: Sequence[str] = (), holds: int = 0) -> bool:
        """Make a waiting job wait for more, or for less: in one atomic step, if `child` is
        `waiting`, each of `parents` not yet among its parents becomes one (appended to
        `Job.parents`): one that has not ended adds one to its `waiting_for`; one that has
        ended counts at once, as at enqueue (a failed or cancelled one, with the child's
        policy ``"cancel"``, cancels the child and what waits on it). Then `holds` is added
        to `waiting_for` (negative: holds given back; a producer puts holds on a job by
        enqueueing it with `Job.waiting_for` > 0); at 0 the child becomes scheduled or
        queued. `False`, and nothing changed, if `child` is not waiting (unknown, released
        already, or ended). A batch uses this to gather members for its callbacks.

        Raises:
            DependencyError: a parent this store doesn't hold, the child itself or a job
                that waits for it (a cycle), or one in another queue where
                `cross_queue_dependencies` is false; nothing was changed.
            InvalidOption: `holds` is not an int within ±`MAX_PARENTS`.
        """
        self._open()
        if isinstance(holds, bool) or not isinstance(holds, int) or abs(holds) > MAX_PARENTS:
            raise InvalidOption(f"holds must be an int within ±{MAX_PARENTS}, not {holds!r}")
        wanted = list(dict.fromkeys(parents))
        if len(wanted) > MAX_PARENTS:
            raise DependencyError(f"link() takes at most {MAX_PARENTS} parents, not {len(wanted)}")
        for parent in wanted:
            if not parent or "," in parent:
                raise DependencyError(f"job {child}: {parent!r} is not a job id")
            if parent == child:
                raise DependencyError(f"job {child} can't wait for itself (a cycle)")
        if wanted:
            await self._check_link(child, wanted)
        if not wanted and not holds:
            (job,) = await self._get([child])
            return job is not None and job.state is JobState.WAITING
        changed = await self._link(child, wanted, holds, self.clock.now())
        self._woke(changed)
        return changed

    async def _check_link(self, child: str, parents: list[str]) -> None:
        """Refuse parents that don't exist or wait (through live edges) for `child`."""
        known: dict[str, Job] = {}
        frontier = parents
        first = True
        while frontier:
            got = await self._chunked(lambda part, now: self._get(part), frontier)
            nxt: list[str] = []
            for job_id, job in zip(frontier, got, strict=True):
                if job is None:
                    if first:
                        raise DependencyError(
                            f"job {child} can't wait for {job_id}, which this store doesn't "
                            "hold (unknown, or already purged); nothing was changed"
                        )
                    continue
                known[job_id] = job
                if job.state is JobState.WAITING:
                    for up in job.parents:
                        if up == child:
                            raise DependencyError(
                                f"job {child} can't wait for {job_id}: {job_id} waits for it "
                                "(a cycle); nothing was changed"
                            )
                        if up not in known:
                            nxt.append(up)
            frontier = list(dict.fromkeys(nxt))
            first = False
        if not self.cross_queue_dependencies:
            (own,) = await self._get([child])
            for parent in parents:
                if own is not None and known[parent].queue != own.queue:
                    raise DependencyError(_cross_queue(self, own, parent, known[parent].queue))

    @abc.abstractmethod
    async def _link(self, child: str, parents: Sequence[str], holds: int, now: float) -> bool:
        """Apply `link` in one atomic step; parents are checked to exist and to make no
        cycle (the store checks existence again)."""

    async def _enqueue_graph(self, jobs: Sequence[Job]) -> list[str]:
        """A call larger than `op_batch` with dependencies, chunk by chunk: a later chunk's
        parents are renamed to the ids an earlier chunk answered (a duplicate's holder)."""
        self._open()
        now = self.clock.now()
        renamed: dict[str, str] = {}
        out: list[str] = []
        for start in range(0, len(jobs), self.op_batch):
            part = [
                msgspec.structs.replace(job, parents=tuple(renamed.get(p, p) for p in job.parents))
                if renamed and job.parents
                else job
                for job in jobs[start : start + self.op_batch]
            ]
            got = await self._enqueue(part, now)
            renamed.update((j.id, g) for j, g in zip(part, got, strict=True) if g != j.id)
            out += got
        return out

    # -- running ---------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[Lease]:
        """Atomically move up to `request.limit` ready jobs to running and lease them.

        Scheduled jobs that are due count as ready. Each claim increments `attempts`.
        Paused queues give nothing. Inside a queue, jobs without a lane go by priority
        (highest first), then `run_at`, then enqueue order.

        Flow control, in the same atomic step. A job with a `lane` is served through that
        lane of its queue (a lane is named by queue and `Job.lane`; its state lives in the
        store, so its limits hold across every worker):

        - *Turns.* The plain jobs (no lane) and each lane with ready jobs and capacity take
          turns: each has a pass; the one with the smallest is served its best job (by
          priority, `run_at`, enqueue order) and its pass grows by 1 / weight (the lane's
          `weight`, 1 for plain jobs). A lane (or the plain jobs) that becomes eligible
          again starts at no less than the pass of the last job served in the queue, so
          idleness earns no credit. With no lane eligible a claim is exactly the plain one.
        - *Concurrency.* A lane with `concurrency` n holds at most n running jobs: a claim
          takes one of its slots (a token naming the job), and every step that moves the
          job out of running (settle, release, rescue of an expired lease, a heartbeat that
          ends it cancelled) gives it back, in that same step. A lane with no free slot is
          passed over without a scan (parked) until one returns; the return wakes waiters.
        - *Rate.* A lane with `rate` r > 0 has a token bucket of `burst` tokens (full when
          the lane is new), refilled at r per second of the store's clock; each claim of
          one of its jobs takes a token. Without a token the lane is parked until the
          next one is due, and `wait` returns by then.
        - *Circuit.* A lane with a `circuit` counts its jobs' outcomes in fixed windows of
          `window` seconds from the first call: a failure is a `Retrying` or `Failed`
          settle or a rescue; `Completed` is a success; cancels and releases don't count.
          When, closed, at least `min_calls` calls were counted and the failed share
          reached `failure_rate`, the circuit opens: the lane is parked for `cooldown`
          seconds (its jobs wait, use no attempt), then is half-open: one job at a time
          is claimed (the probe). The probe's success closes the circuit (window reset),
          its failure opens it again; a probe that is cancelled or released lets the next
          job probe. Outcomes of other jobs count only while closed.
        - The latest job of a lane to become ready sets the lane's weight and limits; a
          held-back job is `queued`, and its order inside its lane is kept (so
          `concurrency=1` runs a lane's jobs one at a time, in order).
        """
        self._open()
        if request.limit <= 0 or not request.queues:
            return []
        return await self._claim(request, self.clock.now())

    @abc.abstractmethod
    async def _claim(self, request: ClaimRequest, now: float) -> list[Lease]:
        """Lease ready jobs in one atomic step (see `claim`); `request.limit` ≥ 1."""

    async def extend(self, leases: Sequence[Lease], lease_for: float) -> list[Lease | None]:
        """Heartbeat. `None` for a lease that was lost or whose job had a cancel requested
        (the job is then moved to cancelled here); the caller must stop that execution and
        must not settle it."""

        async def hook(part: Sequence[Lease], now: float) -> list[Lease | None]:
            return await self._extend(part, lease_for, now)

        return await self._chunked(hook, leases)

    @abc.abstractmethod
    async def _extend(
        self, leases: Sequence[Lease], lease_for: float, now: float
    ) -> list[Lease | None]:
        """Extend the leases still held (see `extend`)."""

    async def settle(self, outcomes: Sequence[tuple[Lease, Outcome]]) -> list[bool]:
        """Apply outcomes where the token still matches; a stale lease → `False`, no change."""
        out = await self._chunked(self._settle, outcomes)
        self._woke(outcomes)  # a retry may have made a job ready
        return out

    @abc.abstractmethod
    async def _settle(self, outcomes: Sequence[tuple[Lease, Outcome]], now: float) -> list[bool]:
        """Apply fenced outcomes (see `settle`)."""

    async def release(self, leases: Sequence[Lease]) -> list[bool]:
        """Give back leases on jobs that never started (a worker stopping right after a
        claim): each job is queued again as if it had not been claimed, the attempt not
        counted; one whose cancel was requested meanwhile ends cancelled. Fenced like
        `settle`: `False` for a stale lease, no change."""
        out = await self._chunked(self._release, leases)
        self._woke(any(out))
        return out

    @abc.abstractmethod
    async def _release(self, leases: Sequence[Lease], now: float) -> list[bool]:
        """Give back unstarted leases (see `release`)."""

    async def annotate(
        self, items: Sequence[tuple[Lease, Mapping[str, bytes | None]]]
    ) -> list[bool]:
        """Write what a running job says about itself (`ANNOTATIONS`: its ``checkpoint``, JSON
        bytes or `None` to clear it, and its ``progress``, a JSON object), fenced like
        `settle`: `False` for a stale lease, no change. Durable when it returns.

        Both survive a retry and a rescue (the next attempt reads them) and stay on the
        finished record. A name outside `ANNOTATIONS` or a progress that is not a JSON object
        is an `InvalidOption`, and nothing is written.
        """
        for _, values in items:
            for name, value in values.items():
                if name not in ANNOTATIONS:
                    raise InvalidOption(
                        f"a job can annotate only {', '.join(ANNOTATIONS)}, not {name!r}"
                    )
                if value is not None and not isinstance(value, bytes):
                    raise InvalidOption(f"{name} must be JSON bytes or None, not {value!r}")
                if name == "progress" and value is not None:
                    try:
                        msgspec.json.decode(value, type=dict[str, object])
                    except msgspec.DecodeError:
                        raise InvalidOption(
                            f"progress must be a JSON object, not {value[:80]!r}"
                        ) from None
        return await self._chunked(self._annotate, items)

    @abc.abstractmethod
    async def _annotate(
        self, items: Sequence[tuple[Lease, Mapping[str, bytes | None]]], now: float
    ) -> list[bool]:
        """Apply fenced annotations (see `annotate`); names and values are checked."""

    # -- maintenance -----------------------------------------------------------------------

    async def promote(self) -> int:
        """Move due scheduled jobs to queued. Returns how many moved."""
        self._open()
        moved = await self._promote(self.clock.now())
        self._woke(moved)
        return moved

    @abc.abstractmethod
    async def _promote(self, now: float) -> int: ...

    async def rescue(self) -> int:
        """Requeue running jobs whose lease expired (or fail them when attempts are exhausted;
        cancel them when a cancel was requested). Returns how many were rescued."""
        self._open()
        rescued = await self._rescue(self.clock.now())
        self._woke(rescued)
        return rescued

    @abc.abstractmethod
    async def _rescue(self, now: float) -> int: ...

    async def purge(self, states: Iterable[JobState], before: float | None = None) -> int:
        """Delete jobs in terminal `states` whose retention ended (`finished_at + keep_for`
        ≤ now) or, with `before`, that finished before that time. Returns how many."""
        self._open()
        wanted = frozenset(states) & TERMINAL
        if not wanted:
            return 0
        return await self._purge(wanted, before, self.clock.now())

    @abc.abstractmethod
    async def _purge(self, states: frozenset[JobState], before: float | None, now: float) -> int:
        """Delete finished jobs (see `purge`); `states` is non-empty and terminal only."""

    # -- administration --------------------------------------------------------------------

    async def cancel(self, job_id: str, reason: str = "cancelled") -> JobState | None:
        """Cancel a job: scheduled or queued → cancelled at once; running → cancel requested,
        seen at its next heartbeat. Returns the job's state afterwards, `None` if unknown."""
        self._open()
        return await self._cancel(job_id, reason, self.clock.now())

    @abc.abstractmethod
    async def _cancel(self, job_id: str, reason: str, now: float) -> JobState | None: ...

    async def requeue(self, job_id: str) -> bool:
        """Failed or cancelled → queued, keeping id, payload and attempt history; the job gets
        a fresh allowance of attempts. `False` if the job is missing or in another state."""
        (ok,) = await self.requeue_many([job_id])
        return ok

    async def requeue_many(self, ids: Sequence[str]) -> list[bool]:
        """`requeue` for many jobs in one store call per `op_batch`, in the order given."""
        out = await self._chunked(self._requeue, ids)
        self._woke(any(out))
        return out

    @abc.abstractmethod
    async def _requeue(self, ids: Sequence[str], now: float) -> list[bool]: ...

    async def delete(self, ids: Sequence[str]) -> list[bool]:
        """Delete jobs that have ended (completed, failed, cancelled) by id, as `purge`
        would (a unique key they held is freed); one store call per `op_batch`. A job in
        any other state, or unknown, is left alone: `False`. Cancel a live job first."""
        return await self._chunked(self._delete, ids)

    @abc.abstractmethod
    async def _delete(self, ids: Sequence[str], now: float) -> list[bool]: ...

    async def get(self, ids: Sequence[str]) -> list[Job | None]:
        """Jobs by id, `None` for unknown ids, in the order asked."""

        async def hook(part: Sequence[str], now: float) -> list[Job | None]:
            return await self._get(part)

        return await self._chunked(hook, ids)

    @abc.abstractmethod
    async def _get(self, ids: Sequence[str]) -> list[Job | None]: ...

    async def counts(self, queue: str | None = None) -> dict[str, dict[JobState, int]]:
        """Job counts per queue and state (states with zero jobs may be omitted)."""
        self._open()
        return await self._counts(queue)

    @abc.abstractmethod
    async def _counts(self, queue: str | None) -> dict[str, dict[JobState, int]]: ...

    async def query(self, filter: JobFilter, after: str | None = None, limit: int = 100) -> Page:
        """Jobs matching `filter`, in enqueue order, `limit` (1..`MAX_PAGE`) at a time; pass
        `Page.next` back as `after` for the following page. A cursor this store never
        handed out is an `InvalidOption`."""
        self._open()
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidOption(f"a page holds 1..{MAX_PAGE} jobs, not {limit!r}")
        if after is not None and not self._valid_cursor(after):
            raise InvalidOption(f"{after!r} is not a cursor this store handed out")
        return await self._query(filter, after or None, limit)

    def _valid_cursor(self, after: str) -> bool:
        """Whether `after` can be one of this store's `Page.next` values (default: a
        decimal sequence number)."""
        # At most 18 digits: SQLite integers are 64-bit (a longer one overflows, not misses).
        return after == "" or (after.isascii() and after.isdigit() and len(after) <= 18)

    @abc.abstractmethod
    async def _query(self, filter: JobFilter, after: str | None, limit: int) -> Page: ...

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when work may be ready in `queues`, or after `timeout` seconds. A hint only:
        callers must claim to find out. Returns by the time a parked lane of `queues` (see
        `claim`) is due a token or the end of its cooldown, and soon after a slot of one
        is given back."""
        self._open()
        if timeout <= 0 or not queues:
            return
        await self._wait(queues, timeout)

    @abc.abstractmethod
    async def _wait(self, queues: Sequence[str], timeout: float) -> None: ...

    async def wait_for_lease(
        self, queues: Sequence[str], timeout: float, worker: str, lease_for: float
    ) -> list[Lease]:
        """`wait`, for `worker` with a free slot. A store may hand it a job enqueued while it
        waits, already leased to it for `lease_for` seconds, which saves the claim round trip;
        the caller must then run (or settle) what it gets. Nothing returned means the same as
        `wait` returning: claim to find out. The default does just that."""
        await self.wait(queues, timeout)
        return []

    async def aclose(self) -> None:
        """Release connections and threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._local is not None:
            self._local.notify()
        await self._aclose()

    @abc.abstractmethod
    async def _aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _cross_queue(backend: Backend, child: Job, parent: str, queue: str) -> str:
    return (
        f"job {child.id} (queue {child.queue!r}) depends on {parent} (queue {queue!r}): "
        f"{backend!r} keeps each queue apart, so a job and its parents must share a queue"
    )
