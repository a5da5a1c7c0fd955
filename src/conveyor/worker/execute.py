"""Running one leased job: decode, call the handler under its timeout, decide the `Outcome`.

What a run stores is bounded: a result over `serde.MAX_RESULT` (1 MiB) encoded fails the job
(``ResultTooLarge``) instead of being stored, and each attempt's error keeps at most
`MAX_ERROR_MESSAGE` bytes of message (the start) and `MAX_TRACEBACK` bytes of traceback (the
end, where the failing frame and the error are), each cut marked ``… (truncated N bytes)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

from conveyor.clock import Clock
from conveyor.errors import Cancel, ConveyorError, Fail, ResultTooLarge, Retry, UnknownTask
from conveyor.job import AttemptError, Cancelled, Completed, Failed, Lease, Outcome, Retrying
from conveyor.registry import Registry
from conveyor.serde import encode_result
from conveyor.task import Task
from conveyor.worker.context import JobContext, JobInfo
from conveyor.worker.hooks import Middleware, enter_middleware

__all__ = [
    "MAX_ERROR_MESSAGE",
    "MAX_TRACEBACK",
    "BatchRunnerLike",
    "FailedWith",
    "RetryingWith",
    "attempt_error",
    "execute",
    "failed",
    "precheck",
    "retry_or_fail",
]

MAX_ERROR_MESSAGE = 4 << 10
"""Bytes of an attempt's error message kept (4 KiB, UTF-8); the rest is cut, marked."""

MAX_TRACEBACK = 16 << 10
"""Bytes of an attempt's traceback kept (16 KiB, its end); the rest is cut, marked."""


@dataclass(frozen=True, slots=True, eq=False)
class RetryingWith(Retrying):
    """A `Retrying` decided in this worker, with the exception that failed the attempt (for
    failure hooks; never stored). Stores see a `Retrying`."""

    exc: BaseException | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class FailedWith(Failed):
    """A `Failed` decided in this worker, with its exception (see `RetryingWith`)."""

    exc: BaseException | None = field(default=None, repr=False)


def failed(lease: Lease, exc: BaseException, now: float, kind: str | None = None) -> Failed:
    """The job fails for good with `exc` (recorded as `kind`, default its type)."""
    return FailedWith(attempt_error(lease, exc, now, kind), exc)


class BatchRunnerLike(Protocol):
    """What `execute` needs of a batch task's runner (see `worker.batch`)."""

    async def run(self, lease: Lease) -> Outcome: ...


def _clip(text: str, limit: int, *, keep_end: bool = False) -> str:
    """`text` cut to `limit` UTF-8 bytes (its start, or its end), the cut marked."""
    if len(text) * 4 <= limit:  # no character is more than 4 bytes: nothing to measure
        return text
    data = text.encode(errors="replace")
    if len(data) <= limit:
        return text
    # "ignore" drops a character the cut split in two.
    kept = (data[-limit:] if keep_end else data[:limit]).decode(errors="ignore")
    marker = f"… (truncated {len(data) - len(kept.encode())} bytes)"
    return f"{marker}\n{kept}" if keep_end else f"{kept}{marker}"


def attempt_error(
    lease: Lease, exc: BaseException, now: float, kind: str | None = None
) -> AttemptError:
    """The record of one failed attempt, its message and traceback cut to their limits."""
    tb = "".join(traceback.format_exception(exc)) if exc.__traceback__ else ""
    name = kind or f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    message = _clip(str(exc) or type(exc).__name__, MAX_ERROR_MESSAGE)
    return AttemptError(
        lease.job.attempts, name, message, _clip(tb, MAX_TRACEBACK, keep_end=True), now
    )


def retry_or_fail(
    task: Task[..., object] | None,
    lease: Lease,
    exc: BaseException,
    clock: Clock,
    kind: str | None = None,
) -> Outcome:
    """Retry the job (after its policy's backoff, or a `Retry` signal's own delay) or, when
    its attempts are used up or the error never retries, fail it for good."""
    now = clock.now()
    error = attempt_error(lease, exc, now, kind)
    job = lease.job
    if task is None or job.attempts >= job.max_attempts:
        return FailedWith(error, exc)
    if isinstance(exc, Retry):
        delay = exc.delay if exc.delay is not None else task.retry.backoff(job.attempts, exc)
        return RetryingWith(now + delay, error, exc)
    if not task.retry.retryable(exc):
        return FailedWith(error, exc)
    return RetryingWith(now + task.retry.backoff(job.attempts, exc), error, exc)


class _NoTimeout:
    """Stands in for `asyncio.timeout(None)` without its per-job cost."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None

    def expired(self) -> bool:
        return False


_NO_TIMEOUT = _NoTimeout()


def precheck(registry: Registry, lease: Lease, clock: Clock) -> Outcome | None:
    """The outcome of a job that must not run at all (unknown task, deadline passed), else
    `None`."""
    job = lease.job
    now = clock.now()
    if registry.find(job.task) is None:
        exc = UnknownTask(f"no task named {job.task!r} is registered in this worker")
        return failed(lease, exc, now, "UnknownTask")
    if job.deadline is not None and now > job.deadline:
        late = ConveyorError(
            f"the job's deadline passed {now - job.deadline:.3f} s before it started"
        )
        return failed(lease, late, now, "DeadlineExceeded")
    return None


async def execute(
    registry: Registry,
    lease: Lease,
    clock: Clock,
    threads: Executor,
    batches: Mapping[str, BatchRunnerLike] | None = None,
    context: JobContext | None = None,
    middleware: Sequence[tuple[Middleware, str]] = (),
) -> Outcome:
    """Run the leased job once and return what should happen to it.

    Never raises for the job's own faults (bad payload, unknown task, handler errors,
    timeouts, middleware errors): those become outcomes. `asyncio.CancelledError` propagates
    (lease lost or shutdown), and the caller decides. `context` becomes the handler's
    `current_job()` (the caller runs each job in its own asyncio task, so setting it leaks
    to no other job). `middleware` wraps the handler call, inside the job's timeout.
    """
    pre = precheck(registry, lease, clock)
    if pre is not None:
        return pre
    job = lease.job
    now = clock.now()
    task = registry.find(job.task)
    assert task is not None
    if task.batch is not None:
        runner = (batches or {}).get(task.name)
        if runner is None:
            exc = ConveyorError(f"batch task {task.name!r} has no batch runner in this worker")
            return failed(lease, exc, now, "InternalError")
        return await runner.run(lease)
    if job.parents and context is not None:
        try:
            await context.load_parents()
        except Exception as exc:  # the store failed: try again later
            return retry_or_fail(task, lease, exc, clock)
    try:
        if job.feed and context is not None:
            arguments = task.codec.decode_fed(job.payload, context.fed())
        else:
            arguments = task.codec.decode(job.payload)
    except ConveyorError as exc3:
        return failed(lease, exc3, now, "PoisonPayload")
    if context is not None:
        context.enter()  # before copy_context below, so a sync handler's thread sees it too
    deadline = asyncio.timeout(job.timeout) if job.timeout is not None else _NO_TIMEOUT
    try:
        async with deadline:
            if middleware:
                info = context or JobInfo(job)
                value = await _wrapped(middleware, info, task, arguments, threads)
            else:
                value = await _call(task, arguments, threads)
    except TimeoutError as exc4:
        if not deadline.expired():  # the handler's own TimeoutError, not our limit
            return retry_or_fail(task, lease, exc4, clock)
        timed_out = TimeoutError(f"attempt timed out after {job.timeout} s")
        return retry_or_fail(task, lease, timed_out, clock, "Timeout")
    except Cancel as sig:
        return Cancelled(sig.reason)
    except Fail as sig2:
        return failed(lease, sig2, clock.now(), "Fail")
    except Exception as exc5:
        return retry_or_fail(task, lease, exc5, clock)
    try:
        return Completed(encode_result(value))
    except ResultTooLarge as exc6:
        return failed(lease, exc6, clock.now(), "ResultTooLarge")
    except ConveyorError as exc7:
        return failed(lease, exc7, clock.now(), "ResultNotSerializable")


async def _wrapped(
    middleware: Sequence[tuple[Middleware, str]],
    job: JobInfo,
    task: Task[..., object],
    arguments: Mapping[str, object],
    threads: Executor,
) -> object:
    """The handler's value, called inside every middleware's context (outermost first)."""
    value: object = None  # stays None if a middleware suppresses the handler's error
    async with contextlib.AsyncExitStack() as stack:
        await enter_middleware(stack, middleware, job)
        value = await _call(task, arguments, threads)
    return value


async def _call(
    task: Task[..., object], arguments: Mapping[str, object], threads: Executor
) -> object:
    """The handler's value: awaited on the loop, or (a sync handler) run on `threads` under
    a copy of this context, so it sees the job's `current_job()`."""
    if task.is_async:
        return await task.codec.call(task.fn, arguments)
    ctx = contextvars.copy_context()
    call: Callable[[], object] = functools.partial(ctx.run, task.codec.call, task.fn, arguments)
    return await asyncio.get_running_loop().run_in_executor(threads, call)
