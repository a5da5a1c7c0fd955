"""The job context: a running job's view of itself (`current_job`), its checkpoint and progress.

`JobInfo` is the read-only view of one job (what hooks and middleware receive); `JobContext`
is a `JobInfo` that also saves checkpoints and reports progress: what a handler gets.

The worker sets a `JobContext` in a `contextvars.ContextVar` before it calls a handler, in the
job's own asyncio task; a sync handler runs in a thread under a copy of that context, so both
see it. A batch task's handler runs once for many jobs: there `current_jobs()` is the list of
their contexts in item order, each saving its own checkpoint and progress, and
`current_job()` raises, pointing to it.

A checkpoint is written at once, fenced by the lease token, and is durable when
`save_checkpoint` returns. Progress is only noted here; the worker's heartbeat writes every
running job's latest progress in one store call (`Backend.annotate`), so a loop reporting
progress often costs nothing per report.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from conveyor.backends.base import Backend
from conveyor.errors import InvalidOption, StateError
from conveyor.job import AttemptError, Job, JobState, Lease
from conveyor.task import RUNNING_JOB

__all__ = ["JobContext", "JobInfo", "current_job", "current_jobs", "enter_batch"]

_json = msgspec.json.Encoder()
_CURRENT: contextvars.ContextVar[JobContext] = contextvars.ContextVar("conveyor_job")
_BATCH: contextvars.ContextVar[tuple[JobContext, ...]] = contextvars.ContextVar("conveyor_jobs")


def current_job() -> JobContext:
    """The job the calling handler is running for.

    Raises:
        StateError: outside a running job, and inside a batch task's handler (it runs for
            many jobs at once: use `current_jobs()`).
    """
    ctx = _CURRENT.get(None)
    if ctx is None:
        if _BATCH.get(None) is not None:
            raise StateError(
                "current_job() inside a batch task's handler: it runs for many jobs at once; "
                "use conveyor.current_jobs(), one context per item, in item order"
            )
        raise StateError(
            "current_job() works only inside a running job's handler (async or sync; in a "
            "batch task's handler use current_jobs()); call it from the task function while "
            "the worker runs it"
        )
    return ctx


def current_jobs() -> list[JobContext]:
    """The jobs the calling handler is running for: in a batch task's handler, one context
    per item of its list, in the same order; in any other handler, `[current_job()]`.

    Raises:
        StateError: outside a running job.

    Example:
        @app.task(batch=conveyor.Batch(max_size=100))
        async def index(docs: list[str]) -> list[int]:
            for job, doc in zip(conveyor.current_jobs(), docs, strict=True):
                await job.progress(1.0, f"indexed {len(doc)} bytes")
            ...
    """
    batch = _BATCH.get(None)
    if batch is not None:
        return list(batch)
    ctx = _CURRENT.get(None)
    if ctx is None:
        raise StateError(
            "current_jobs() works only inside a running job's handler; call it from the "
            "task function while the worker runs it"
        )
    return [ctx]


def enter_batch(contexts: Sequence[JobContext]) -> contextvars.Token[tuple[JobContext, ...]]:
    """Make `contexts` the calling context's batch (the worker calls it around a batch
    task's handler; reset the token after)."""
    loop = _running_loop()
    for ctx in contexts:
        ctx._loop = loop
    return _BATCH.set(tuple(contexts))


def exit_batch(token: contextvars.Token[tuple[JobContext, ...]]) -> None:
    """Undo `enter_batch`."""
    _BATCH.reset(token)


class JobInfo:
    """A read-only view of one job: what hooks and middleware receive (and what
    `current_job()` returns is one too).

    Attributes:
        id: the job's id.
        task: the task's name.
        queue: the job's queue.
        priority: its priority.
        attempt: the attempt's number (1-based).
        max_attempts: how many attempts the job may use.
        deadline: when the job must have started by (epoch seconds), or `None`.
        timeout: seconds one attempt may run, or `None`.
        enqueued_at: when it was enqueued (epoch seconds).
        meta: the job's metadata (read-only).
        errors: the errors of its failed attempts, oldest first (in a failure hook: up to
            and including this attempt's).
    """

    __slots__ = ("_errors", "_job")

    def __init__(self, job: Job, errors: tuple[AttemptError, ...] | None = None) -> None:
        self._job = job
        self._errors = errors

    def __repr__(self) -> str:
        job = self._job
        name = type(self).__name__
        return f"<{name} {job.task} {job.id} attempt {job.attempts}/{job.max_attempts}>"

    @property
    def id(self) -> str:
        return self._job.id

    @property
    def task(self) -> str:
        return self._job.task

    @property
    def queue(self) -> str:
        return self._job.queue

    @property
    def priority(self) -> int:
        return self._job.priority

    @property
    def attempt(self) -> int:
        return self._job.attempts

    @property
    def max_attempts(self) -> int:
        return self._job.max_attempts

    @property
    def deadline(self) -> float | None:
        return self._job.deadline

    @property
    def timeout(self) -> float | None:
        return self._job.timeout

    @property
    def enqueued_at(self) -> float:
        return self._job.enqueued_at

    @property
    def meta(self) -> Mapping[str, object]:
        # The snapshot's own dict (typed read-only): a mappingproxy would not JSON-encode.
        return self._job.meta

    @property
    def errors(self) -> tuple[AttemptError, ...]:
        errors = self._errors
        return self._job.errors if errors is None else errors

    @property
    def checkpoint(self) -> Any:
        """The last saved checkpoint, decoded from JSON; `None` if none was saved (or it
        can't be read)."""
        return _decode(self._job.checkpoint)


class JobContext(JobInfo):
    """What a running job knows about itself (every `JobInfo` attribute), and how it saves
    its checkpoint and reports progress. `conveyor.current_job()` returns it."""

    __slots__ = ("_backend", "_checkpoint", "_lease", "_lock", "_loop", "_parents", "_pending")

    def __init__(self, backend: Backend, lease: Lease) -> None:
        job = lease.job
        self._job = job
        self._errors = None
        self._backend = backend
        self._lease = lease
        self._checkpoint = job.checkpoint
        self._pending: bytes | None = None
        self._lock = threading.Lock()  # a sync handler's thread and the heartbeat share it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._parents: tuple[Job | None, ...] = ()

    async def load_parents(self) -> None:
        """Read the job's parents from the store (the worker does, before the handler runs;
        one call per 1,000 parents)."""
        ids = self._job.parents
        got: list[Job | None] = []
        for start in range(0, len(ids), 1000):
            got += await self._backend.get(ids[start : start + 1000])
        self._parents = tuple(got)

    @property
    def parents(self) -> tuple[Job | None, ...]:
        """The records of the jobs this one waited for, in the order given (`None` for one
        already purged): their state, result, errors."""
        return self._parents

    @property
    def parent_results(self) -> list[Any]:
        """The parents' results, decoded from JSON (plain values; a chain step or a chord
        callback gets them typed, as its first argument), in order; `None` for a parent that
        did not complete (``on_parent_failure="run"``: read `parents` for why)."""
        return [
            _decode(p.result) if p is not None and p.state is JobState.COMPLETED else None
            for p in self._parents
        ]

    def fed(self) -> bytes:
        """What a chain step (``feed="one"``) or a chord callback (``"all"``) gets as its first
        argument, as JSON: the parent's result, or the list of them (``null`` for a parent
        that did not complete)."""
        results = [
            (p.result or b"null") if p is not None and p.state is JobState.COMPLETED else b"null"
            for p in self._parents
        ]
        if self._job.feed == "one":
            return results[0] if results else b"null"
        return b"[" + b",".join(results) + b"]"

    @property
    def checkpoint(self) -> Any:
        """The last saved checkpoint (by this attempt or an earlier one), decoded from JSON;
        `None` if none was saved (or it can't be read)."""
        return _decode(self._checkpoint)

    async def save_checkpoint(self, value: object) -> bool:
        """Save `value` (anything JSON can hold; `None` clears it) as the job's checkpoint,
        durably: the next attempt (after a retry, a crash or a rescue) reads it as
        `checkpoint`. It stays on the finished record too.

        Returns:
            `False` if this attempt lost its lease (nothing was written).

        Raises:
            InvalidOption: `value` is not JSON-serializable (nothing was written).
        """
        raw = None if value is None else _encode(value, "a checkpoint")
        (ok,) = await self._backend.annotate([(self._lease, {"checkpoint": raw})])
        if ok:
            self._checkpoint = raw
        return ok

    def save_checkpoint_sync(self, value: object) -> bool:
        """`save_checkpoint` for a sync handler (it runs in a worker thread); blocks until
        the checkpoint is durable."""
        loop = self._loop
        if loop is None or _running_loop() is loop:
            raise StateError("save_checkpoint_sync is for sync handlers; await save_checkpoint")
        return asyncio.run_coroutine_threadsafe(self.save_checkpoint(value), loop).result()

    async def progress(self, fraction: float, message: str = "") -> None:
        """Report how far the job got: `fraction` in 0..1 and a short `message`. Written by
        the next heartbeat (the latest report wins), visible to `JobHandle.progress()`."""
        self.progress_sync(fraction, message)

    def progress_sync(self, fraction: float, message: str = "") -> None:
        """`progress` for a sync handler (never blocks)."""
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not math.isfinite(fraction)
            or not 0 <= fraction <= 1
        ):
            raise InvalidOption(f"progress is a fraction from 0 to 1, not {fraction!r}")
        if not isinstance(message, str):
            raise InvalidOption(f"a progress message is a str, not {type(message).__name__}")
        raw = _json.encode({"fraction": float(fraction), "message": message})
        with self._lock:
            self._pending = raw

    def has_progress(self) -> bool:
        """Whether progress was reported since the last `take_progress`."""
        return self._pending is not None

    def take_progress(self) -> bytes | None:
        """The progress reported since the last call (for the heartbeat), or `None`."""
        with self._lock:
            raw, self._pending = self._pending, None
        return raw

    def enter(self) -> contextvars.Token[JobContext]:
        """Make this the current job of the calling context (the worker calls it)."""
        self._loop = _running_loop()
        RUNNING_JOB.set(self._job.id)
        return _CURRENT.set(self)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _decode(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None


def _encode(value: object, what: str) -> bytes:
    try:
        return _json.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidOption(f"{what} must be JSON-serializable: {exc}") from None
