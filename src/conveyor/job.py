"""The job vocabulary: `Job`, `JobState`, `Lease`, `AttemptError` and the `Outcome` of a run.

These are plain records with no I/O. A `Job` is a snapshot of one persisted request to run
a task; backends hand out fresh snapshots and never share mutable state with callers.

Lifecycle::

    enqueue ─► waiting ──(last parent ended)──► scheduled / queued   (jobs with parents)
    enqueue ─► scheduled ──(run_at ≤ now)──► queued ──claim──► running ──► completed
                  ▲                             ▲                │  ├──► failed
                  └──────── settle(Retrying) ───┼────────────────┘  │
                                                └── rescue ─────────┤  └──► cancelled
                                                   (lease expired)
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

__all__ = [
    "TERMINAL",
    "AttemptError",
    "Cancelled",
    "Completed",
    "Failed",
    "Job",
    "JobState",
    "Lease",
    "Outcome",
    "Retrying",
    "new_job_id",
    "new_job_ids",
]


class JobState(enum.StrEnum):
    """Where a job is in its lifecycle."""

    WAITING = "waiting"  # blocked on parent jobs that have not ended
    SCHEDULED = "scheduled"  # waiting for run_at
    QUEUED = "queued"  # ready to be claimed
    RUNNING = "running"  # held by a worker's lease
    COMPLETED = "completed"  # handler returned; result kept for keep_for
    FAILED = "failed"  # dead letter: attempts exhausted, non-retryable error, poison payload
    CANCELLED = "cancelled"  # cancelled before or while running

    @property
    def terminal(self) -> bool:
        """Whether the job has finished (completed, failed or cancelled)."""
        return self in TERMINAL


TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


class AttemptError(msgspec.Struct, frozen=True):
    """What went wrong in one attempt.

    Attributes:
        attempt: the attempt number (1-based).
        type: the exception's qualified type name, or a reason code such as ``"LeaseExpired"``.
        message: the exception's message.
        traceback: the formatted traceback, empty when there is none.
        at: when it happened (epoch seconds).
    """

    attempt: int
    type: str
    message: str
    traceback: str = ""
    at: float = 0.0


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one persisted request to run a task.

    Times are epoch seconds. `payload` and `result` are opaque bytes to the store (the
    task's serializer encodes and decodes them). `attempts` counts attempts started.
    Change a copy with `msgspec.structs.replace(job, state=...)`.

    Workflows: `parents` are the ids of the jobs this one waits for (it is `waiting` until
    every one has ended; `waiting_for` counts those that have not). When a parent fails or
    is cancelled, `on_parent_failure` says what happens: ``"cancel"`` (the job and its
    waiting descendants are cancelled, the reason naming the parent) or ``"run"`` (it runs
    anyway). `feed` says how the parents' results reach the handler: ``""`` not at all (the
    job context has them), ``"one"`` the one parent's result as the first argument (a chain
    step), ``"all"`` the list of the parents' results, in `parents` order, as the first
    argument (a chord callback). A producer may enqueue a job with `waiting_for` > 0:
    holds it waits for besides its parents, given back with `Backend.link` (a batch's
    callbacks wait so for the batch's block to end).

    Flow control: a job with a `lane` (a task's ``group=`` or ``limit_key=``, or its name
    when it has limits) is served through that lane of its queue (see `Backend.claim`):
    ready lanes take turns, `weight` jobs per turn, and the lane's limits hold across every
    worker. `concurrency` (0: none) caps the lane's jobs running at once; `rate` (starts
    per second, 0: none) with `burst` (the token bucket's size) caps how fast they start;
    `circuit` (``""``: none, else ``"<failure_rate>:<window>:<cooldown>:<min_calls>"``)
    stops the lane while its failures cross the rate. The latest of a lane's jobs to
    become ready sets its limits and weight.
    """

    id: str
    task: str
    payload: bytes
    queue: str = "default"
    priority: int = 0
    state: JobState = JobState.QUEUED
    run_at: float = 0.0
    enqueued_at: float = 0.0
    attempts: int = 0
    max_attempts: int = 1
    timeout: float | None = None
    deadline: float | None = None
    key: str | None = None
    unique_until: float | None = None
    keep_for: float = 86_400.0
    lane: str = ""
    weight: int = 1
    concurrency: int = 0
    rate: float = 0.0
    burst: int = 0
    circuit: str = ""
    parents: tuple[str, ...] = ()
    on_parent_failure: str = "cancel"
    feed: str = ""
    waiting_for: int = 0
    meta: Mapping[str, object] = msgspec.field(default_factory=dict)
    result: bytes | None = None
    errors: tuple[AttemptError, ...] = ()
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    cancel_requested: bool = False
    checkpoint: bytes | None = None
    progress: Mapping[str, object] = msgspec.field(default_factory=dict)

    @property
    def last_error(self) -> AttemptError | None:
        """The most recent attempt's error, if any."""
        return self.errors[-1] if self.errors else None


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on a running job: the job, a fencing token and an expiry.

    Only the holder of the current token may extend or settle the job; a stale token is
    refused by the backend (fencing).
    """

    job: Job
    token: int
    expires_at: float

    @property
    def id(self) -> str:
        """The leased job's id."""
        return self.job.id


@dataclass(frozen=True, slots=True)
class Completed:
    """The handler returned; `result` is the encoded return value."""

    result: bytes | None = None


@dataclass(frozen=True, slots=True)
class Retrying:
    """The attempt failed and the job should run again at `run_at`."""

    run_at: float
    error: AttemptError


@dataclass(frozen=True, slots=True)
class Failed:
    """The job failed for good (dead letter)."""

    error: AttemptError


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The job ended cancelled."""

    reason: str


Outcome = Completed | Retrying | Failed | Cancelled


def new_job_id(now: float) -> str:
    """A new 32-hex-digit job id: 48 bits of milliseconds of `now` (the caller's clock, in
    epoch seconds) then 80 random bits.

    Ids sort by creation time (so B-tree inserts append), and collide with negligible odds
    across processes.
    """
    return new_job_ids(1, now)[0]


def new_job_ids(n: int, now: float) -> list[str]:
    """`n` new job ids (see `new_job_id`), with one call for all the randomness."""
    ms = int(now * 1000) & 0xFFFF_FFFF_FFFF
    prefix = f"{ms:012x}"
    rand = os.urandom(10 * n).hex()
    return [prefix + rand[i : i + 20] for i in range(0, 20 * n, 20)]
