"""`JobHandle`: what an enqueue returns — the job's id, its status, and its result to await."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from conveyor.backends.base import Backend
from conveyor.errors import JobCancelled, JobFailed, JobNotFound, ResultTimeout
from conveyor.job import Job, JobState
from conveyor.portal import Portal
from conveyor.serde import decode_result

__all__ = ["JobHandle", "Progress"]

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a job got, as it last reported: `fraction` in 0..1 and a `message`."""

    fraction: float
    message: str = ""

    @classmethod
    def of(cls, stored: Mapping[str, object]) -> Progress | None:
        """The progress in a job record's ``progress`` field; `None` when there is none (or
        it was written by hand in another shape)."""
        fraction, message = stored.get("fraction"), stored.get("message", "")
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            return None
        return cls(float(fraction), message if isinstance(message, str) else str(message))


class JobHandle(Generic[R]):
    """A reference to an enqueued job.

    Attributes:
        id: the job id.
        task: the task name.
        created: `False` when the enqueue was a duplicate of a job holding the same key;
            the handle then points at that existing job.

    Example:
        job = await send_email.enqueue("a@b.c", "hi")
        print(await job.result(timeout=10))
    """

    __slots__ = ("_backend", "_portal", "_return_type", "created", "id", "task")

    def __init__(
        self,
        backend: Backend,
        portal: Portal,
        job_id: str,
        task: str,
        return_type: object,
        created: bool = True,
    ) -> None:
        self._backend = backend
        self._portal = portal
        self._return_type = return_type
        self.id = job_id
        self.task = task
        self.created = created

    @property
    def backend(self) -> Backend:
        """The store holding the job."""
        return self._backend

    def __repr__(self) -> str:
        return f"<JobHandle {self.task} {self.id}{'' if self.created else ' (existing)'}>"

    async def get(self) -> Job:
        """The job's current record. Raises `JobNotFound` if it was purged."""
        (job,) = await self._backend.get([self.id])
        if job is None:
            raise JobNotFound(f"job {self.id} not found (never stored, or purged)")
        return job

    async def status(self) -> JobState:
        """The job's current state."""
        return (await self.get()).state

    async def progress(self) -> Progress | None:
        """The latest progress the job reported (`current_job().progress(...)`), `None` if it
        reported none. Running jobs' reports reach the store at their worker's heartbeat."""
        return Progress.of((await self.get()).progress)

    async def cancel(self, reason: str = "cancelled by user") -> JobState | None:
        """Cancel the job (a running job stops at its next heartbeat)."""
        return await self._backend.cancel(self.id, reason)

    async def result(self, timeout: float | None = None, poll: float = 0.005) -> R:
        """Wait for the job to finish and return its result.

        Raises:
            JobFailed: the job ended failed (dead-lettered).
            JobCancelled: the job was cancelled.
            ResultTimeout: not finished within `timeout` seconds.
        """
        delay = poll
        try:
            async with asyncio.timeout(timeout):  # the event loop's timer: no clock read here
                while True:
                    job = await self.get()
                    if job.state is JobState.COMPLETED:
                        return cast("R", decode_result(job.result, self._return_type))
                    if job.state is JobState.FAILED:
                        message = job.last_error.message if job.last_error else None
                        raise JobFailed(self.id, message)
                    if job.state is JobState.CANCELLED:
                        reason = str(job.meta.get("cancel_reason", "")) or None
                        raise JobCancelled(self.id, reason)
                    await asyncio.sleep(delay)
                    delay = min(delay * 1.5, 0.25)
        except TimeoutError:
            raise ResultTimeout(f"job {self.id} did not finish within {timeout} s") from None

    def result_sync(self, timeout: float | None = None) -> R:
        """`result()` for synchronous code."""
        return self._portal.call(self.result(timeout))
