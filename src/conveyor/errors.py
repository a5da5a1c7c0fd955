"""Every error Conveyor raises, and the signals task code raises to steer its own job.

Library errors share one root::

    ConveyorError
    ├── ConfigError               bad URL, option, setting or argument; fix the call (a ValueError)
    │   ├── MissingDependency     an optional extra is not installed (names the pip command)
    │   └── InvalidSchedule       a cron/@every expression, zone or schedule option is wrong
    ├── EnqueueError              the request was refused; nothing was written
    │   ├── UnknownTask           no task registered under that name
    │   ├── InvalidArguments      arguments don't bind to the task's signature (names the
    │   │                         parameter), or nest deeper than `serde.MAX_DEPTH` levels
    │   ├── SerializationError    a value can't be encoded, or a stored payload can't be decoded
    │   │   └── ResultTooLarge    a task's result is over `serde.MAX_RESULT` (the job fails)
    │   ├── PayloadTooLarge       the encoded arguments exceed the configured maximum
    │   ├── InvalidOption         a job option is out of range or misnamed (a ValueError)
    │   └── DependencyError       a parent unknown or purged, a cycle, a parent of another store
    ├── BackendError              the store failed (driver errors are wrapped in this)
    │   └── StoreUnavailable      the store can't be opened or written (`.transient`: may pass)
    ├── JobNotFound               no job with that id (or it was purged)
    ├── JobFailed                 awaited a result; the job ended failed (dead-lettered)
    ├── JobCancelled              awaited a result; the job was cancelled
    ├── ResultTimeout             awaited a result; it did not arrive in time
    ├── StateError                used at the wrong point of its life: before `async with`,
    │   │                         entered twice, released more than acquired (a RuntimeError)
    │   └── ClosedError           used after close (a worker, batcher, channel or backend)
    ├── QueueFull                 a bounded buffer is full and its policy is to reject
    ├── LockNotAcquired           `app.lock(...)` was held by another past its `wait`
    ├── LockLost                  a held lock expired or was taken over (the body was cancelled)
    ├── CircuitOpen               a circuit breaker refused the call (`.remaining` seconds open)
    └── Dropped                   an item was shed by a drop_oldest / drop_newest policy

Signals raised *by task code* are not errors of the library; they have their own root::

    TaskSignal
    ├── Retry(delay=None)         run this job again later (counts as an attempt)
    ├── Cancel(reason)            stop: the job ends cancelled, no retry
    └── Fail(reason)              stop: the job ends failed (dead letter), no retry

Any other exception subclassing `NonRetryable` also fails the job at once.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "Cancel",
    "CircuitOpen",
    "ClosedError",
    "ConfigError",
    "ConveyorError",
    "DependencyError",
    "Dropped",
    "EnqueueError",
    "Fail",
    "InvalidArguments",
    "InvalidOption",
    "InvalidSchedule",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "LockLost",
    "LockNotAcquired",
    "MissingDependency",
    "NonRetryable",
    "PayloadTooLarge",
    "QueueFull",
    "ResultTimeout",
    "ResultTooLarge",
    "Retry",
    "SerializationError",
    "StateError",
    "StoreUnavailable",
    "TaskSignal",
    "UnknownTask",
    "unwrap_group",
]


class ConveyorError(Exception):
    """Root of every error raised by Conveyor itself."""


class ConfigError(ConveyorError, ValueError):
    """A URL, option, setting or argument is invalid. The message says which and what is
    allowed. Also a `ValueError`, which is what such mistakes raise elsewhere in Python."""


class MissingDependency(ConfigError):
    """An optional dependency is missing; the message names the extra to install."""


class InvalidSchedule(ConfigError):
    """A schedule is invalid: its expression (the message names the field), its zone, its
    task, its name or an option. Raised at registration, never at a fire."""


class EnqueueError(ConveyorError):
    """An enqueue was refused before anything was written."""


class UnknownTask(EnqueueError):
    """No task is registered under the given name."""


class InvalidArguments(EnqueueError):
    """The arguments do not bind to the task's signature."""


class SerializationError(EnqueueError):
    """A value could not be encoded, or stored bytes could not be decoded."""


class ResultTooLarge(SerializationError):
    """A task returned a result larger than `serde.MAX_RESULT` once encoded; the job fails."""


class PayloadTooLarge(EnqueueError):
    """The encoded arguments are larger than the configured `max_payload`."""


class InvalidOption(EnqueueError, ValueError):
    """A job option (delay, priority, queue name, key, ...) is invalid."""


class DependencyError(EnqueueError):
    """A job's dependencies can't be written: a parent that is unknown (or already purged),
    a cycle, a parent of another store, or a graph this store can't hold. Nothing was
    written."""


class BackendError(ConveyorError):
    """The job store failed. The original driver exception is chained as `__cause__`."""


class StoreUnavailable(BackendError):
    """The job store cannot be opened or written (path, permissions, server down).

    Attributes:
        transient: whether it may pass by itself (the server is down, restarting or out of
            reach), rather than needing a fix (a path that can't be created, wrong
            credentials, a certificate that does not verify). A worker starting up waits
            out a transient one and fails at once on the others.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class JobNotFound(ConveyorError, LookupError):
    """No job has that id (it never existed, or it was purged after its retention)."""


class JobFailed(ConveyorError):
    """The awaited job ended in the failed (dead-letter) state.

    Attributes:
        job_id: the job's id.
        error: the last attempt's error message, if any.
    """

    def __init__(self, job_id: str, error: str | None) -> None:
        super().__init__(f"job {job_id} failed: {error or 'no error recorded'}")
        self.job_id = job_id
        self.error = error


class JobCancelled(ConveyorError):
    """The awaited job was cancelled."""

    def __init__(self, job_id: str, reason: str | None) -> None:
        super().__init__(f"job {job_id} was cancelled: {reason or 'no reason given'}")
        self.job_id = job_id
        self.reason = reason


class ResultTimeout(ConveyorError, TimeoutError):
    """A job's result did not arrive within the timeout; the job itself is untouched."""


class StateError(ConveyorError, RuntimeError):
    """An object was used at the wrong point of its lifecycle: before it was started (``async
    with``), entered a second time, or released more often than acquired."""


class ClosedError(StateError):
    """An object was used after it was closed."""


class QueueFull(ConveyorError):
    """A bounded buffer is full and its overflow policy is `reject`."""


class LockNotAcquired(ConveyorError):
    """A lock was held by someone else for longer than the `wait` given to `app.lock`."""


class LockLost(ConveyorError):
    """A lock expired or passed to another holder while held (a renewal or the release found
    it gone); with ``on_lost="cancel"`` the body was cancelled and this is raised instead."""


class CircuitOpen(ConveyorError):
    """A circuit breaker refused a call without making it: the circuit is open (the
    dependency failed too often), or half-open with its one probe call still in flight.

    Attributes:
        name: the breaker's name, if it was given one.
        remaining: seconds until the circuit lets a probe through (0 while half-open).
    """

    def __init__(self, message: str, *, name: str | None, remaining: float) -> None:
        super().__init__(message)
        self.name = name
        self.remaining = remaining


class Dropped(ConveyorError):
    """The item was shed by a `drop_oldest` or `drop_newest` overflow policy."""


class TaskSignal(Exception):
    """Root of the exceptions task code raises to decide its job's outcome."""


class Retry(TaskSignal):
    """Raise in a task to run the job again later.

    Args:
        delay: seconds until the next attempt; `None` uses the task's `RetryPolicy` backoff.
        reason: recorded as this attempt's error message.

    The retry still counts as an attempt: when attempts are exhausted the job fails.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        if delay is not None and not 0 <= delay < float("inf"):
            raise ConfigError(f"Retry(delay=...) must be a finite number >= 0 seconds, got {delay}")
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class Cancel(TaskSignal):
    """Raise in a task to end its job as cancelled (no retry)."""

    def __init__(self, reason: str = "cancelled by task") -> None:
        super().__init__(reason)
        self.reason = reason


class Fail(TaskSignal):
    """Raise in a task to fail its job at once (dead letter, no retry)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NonRetryable(Exception):
    """Subclass this (or list the type in `RetryPolicy.dont_retry`) for errors never retried."""


def unwrap_group(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a user should see from a failed task group.

    When every leaf of the (possibly nested) group is a `ConveyorError` — say, the store is
    unreachable and both the worker and the maintenance loop said so — the first one is
    returned as itself. Anything else returns the group unchanged.
    """

    def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
        out: list[BaseException] = []
        for exc in group.exceptions:
            out.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
        return out

    found = leaves(eg)
    if found and all(isinstance(e, ConveyorError) for e in found):
        return found[0]
    return eg
