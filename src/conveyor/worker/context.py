"""The job context: a running job's view of itself (`current_job`), its checkpoint and progress.

The worker sets a `JobContext` in a `contextvars.ContextVar` before it calls a handler, in the
job's own asyncio task; a sync handler runs in a thread under a copy of that context, so both
see it. A batch task's handler runs once for many jobs, so it has no single job:
`current_job()` raises there.

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
from collections.abc import Mapping
from typing import Any

import msgspec

from conveyor.backends.base import Backend
from conveyor.errors import InvalidOption, StateError
from conveyor.job import Lease

__all__ = ["JobContext", "current_job"]

_json = msgspec.json.Encoder()
_CURRENT: contextvars.ContextVar[JobContext] = contextvars.ContextVar("conveyor_job")


def current_job() -> JobContext:
    """The job the calling handler is running for.

    Raises:
        StateError: outside a running job (and inside a batch task's handler, which runs
            for many jobs at once).
    """
    ctx = _CURRENT.get(None)
    if ctx is None:
        raise StateError(
            "current_job() works only inside a running job's handler (async or sync, not a "
            "batch task's handler); call it from the task function while the worker runs it"
        )
    return ctx


class JobContext:
    """What a running job knows about itself, and how it saves its checkpoint and progress.

    Attributes:
        id: the job's id.
        task: the task's name.
        attempt: this attempt's number (1-based).
        max_attempts: how many attempts the job may use.
        deadline: when the job must have started by (epoch seconds), or `None`.
        queue: the job's queue.
        meta: the job's metadata (read-only).
    """

    __slots__ = (
        "_backend",
        "_checkpoint",
        "_lease",
        "_lock",
        "_loop",
        "_pending",
        "attempt",
        "deadline",
        "id",
        "max_attempts",
        "meta",
        "queue",
        "task",
    )

    def __init__(self, backend: Backend, lease: Lease) -> None:
        job = lease.job
        self._backend = backend
        self._lease = lease
        self._checkpoint = job.checkpoint
        self._pending: bytes | None = None
        self._lock = threading.Lock()  # a sync handler's thread and the heartbeat share it
        self._loop: asyncio.AbstractEventLoop | None = None
        self.id = job.id
        self.task = job.task
        self.attempt = job.attempts
        self.max_attempts = job.max_attempts
        self.deadline = job.deadline
        self.queue = job.queue
        self.meta: Mapping[str, object] = job.meta

    def __repr__(self) -> str:
        return f"<JobContext {self.task} {self.id} attempt {self.attempt}/{self.max_attempts}>"

    @property
    def checkpoint(self) -> Any:
        """The last saved checkpoint (by this attempt or an earlier one), decoded from JSON;
        `None` if none was saved (or it can't be read)."""
        raw = self._checkpoint
        if raw is None:
            return None
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return None

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
        return _CURRENT.set(self)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _encode(value: object, what: str) -> bytes:
    try:
        return _json.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidOption(f"{what} must be JSON-serializable: {exc}") from None
