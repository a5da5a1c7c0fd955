"""The producer: validated job options and arguments → `Job` records → `backend.enqueue`.

Inside `async with producer:` concurrent single enqueues on the same loop are coalesced into
one backend call (a `Batcher` in natural-batching mode: idle → sent at once; busy →
everything that arrived meanwhile goes in the next batch).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self, TypedDict

import msgspec

from conveyor.backends.base import MAX_PARENTS, PARENT_POLICIES, Backend
from conveyor.clock import Clock
from conveyor.errors import InvalidOption
from conveyor.job import Job, new_job_ids
from conveyor.names import check_key, check_queue
from conveyor.primitives import Batcher
from conveyor.serde import MAX_DEPTH, nested_deeper_than

__all__ = [
    "AT_WINDOW",
    "MAX_META",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "JobOptions",
    "OptionsDict",
    "Producer",
    "build_jobs",
    "resolve",
]

MIN_PRIORITY, MAX_PRIORITY = -100, 100

MAX_META = 64 << 10
"""Largest `meta` accepted, in bytes once encoded as JSON (64 KiB)."""

AT_WINDOW = 10 * 365 * 86_400.0
"""How far (seconds, either way) a float `at` may be from now: outside this it can only be a
mistake (seconds from now, which is `delay`; or milliseconds), so it is refused."""

_meta_encoder = msgspec.json.Encoder()


class OptionsDict(TypedDict, total=False):
    """Keyword form of `JobOptions`, for `task.options(**opts)`."""

    queue: str
    priority: int
    delay: float | timedelta
    at: datetime | float
    timeout: float | None
    deadline: datetime | None
    deadline_in: float | timedelta | None
    max_attempts: int
    key: str | None
    unique_for: float | None
    keep_for: float
    meta: Mapping[str, object]
    after: Sequence[object]
    on_parent_failure: str


@dataclass(frozen=True, slots=True)
class JobOptions:
    """How and when a job runs. Unset fields (`None`) fall back to the task's defaults.

    Attributes:
        queue: queue name (1-64 chars of ``A-Za-z0-9_.:-``).
        priority: -100..100, higher runs first within a queue (default 0).
        delay: how long from now before the job may run: seconds or a `timedelta`.
        at: when the job may run: a timezone-aware `datetime` (or epoch seconds within
            `AT_WINDOW`, 10 years, of now; anything else is refused as a mistake). Give
            `delay` or `at`, not both.
        timeout: seconds one attempt may run before it is cancelled and counted as failed.
        deadline: when the job must have *started* by, or it fails: a timezone-aware
            `datetime` (absolute, like `at`). A number is refused: use `deadline_in`.
        deadline_in: the same as seconds (or a `timedelta`) from enqueue (relative, like
            `delay`). Give `deadline` or `deadline_in`, not both. A job whose `delay` or
            `at` falls after its deadline is refused: it could never start.
        max_attempts: total attempts allowed (overrides the task's `RetryPolicy`).
        key: unique key; a second enqueue with the same key returns the existing job.
        unique_for: seconds from enqueue that the key stays held even after the job ends
            (default: held until the job's record is purged).
        keep_for: seconds to keep the finished job and its result (default 1 day).
        meta: free-form JSON-serializable metadata stored with the job, at most `MAX_META`
            (64 KiB) encoded and `serde.MAX_DEPTH` levels deep.
        after: parent jobs (their handles, or ids) this job waits for: it stays `waiting`
            until every one has ended, and runs once they completed.
        on_parent_failure: when a parent fails or is cancelled: ``"cancel"`` this job (and
            what waits on it; the default) or ``"run"`` it anyway.
    """

    queue: str | None = None
    priority: int | None = None
    delay: float | timedelta | None = None
    at: datetime | float | None = None
    timeout: float | None = None
    deadline: datetime | None = None
    deadline_in: float | timedelta | None = None
    max_attempts: int | None = None
    key: str | None = None
    unique_for: float | None = None
    keep_for: float | None = None
    meta: Mapping[str, object] | None = None
    after: Sequence[object] | None = None
    on_parent_failure: str | None = None

    @classmethod
    def from_dict(cls, opts: Mapping[str, object]) -> JobOptions:
        """Build from keywords, refusing unknown names with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise InvalidOption(
                f"unknown job option(s) {', '.join(map(repr, unknown))}; "
                f"known options: {', '.join(sorted(known))}"
            )
        return cls(**opts)  # type: ignore[arg-type]

    def merged(self, over: JobOptions) -> JobOptions:
        """These options with every field set in `over` replacing ours."""
        changes = {f.name: getattr(over, f.name) for f in fields(over)}
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    """Seconds from a number or a `timedelta`, finite and >= 0 (> 0 without `allow_zero`)."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InvalidOption(
            f"job option {name} must be a number of seconds or a timedelta, got {value!r}"
        )
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        bound = ">= 0" if allow_zero else ">= 0 and non-zero"
        raise InvalidOption(f"job option {name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _datetime(name: str, value: datetime) -> float:
    if value.tzinfo is None:
        raise InvalidOption(
            f"job option {name} is a naive datetime; pass a timezone-aware one "
            "(datetime.now(timezone.utc) + ...) so the time is unambiguous"
        )
    return value.timestamp()


def _at(value: object, now: float) -> float:
    if isinstance(value, datetime):
        return _datetime("at", value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidOption(f"job option at must be a datetime or epoch seconds, got {value!r}")
    if abs(value - now) > AT_WINDOW:
        hint = "for seconds from now use delay=" if value < now else "milliseconds are not seconds"
        raise InvalidOption(
            f"job option at={value!r} is more than 10 years from now as epoch seconds, so it "
            f"can only be a mistake ({hint}); pass a timezone-aware datetime"
        )
    return float(value)


def _deadline(opts: JobOptions, now: float) -> float | None:
    if opts.deadline is not None and opts.deadline_in is not None:
        raise InvalidOption("give either deadline or deadline_in, not both")
    if opts.deadline_in is not None:
        return now + _seconds("deadline_in", opts.deadline_in, allow_zero=False)
    if opts.deadline is None:
        return None
    if not isinstance(opts.deadline, datetime):
        # A number would be ambiguous (absolute like `at`, or relative like `delay`?).
        raise InvalidOption(
            f"job option deadline takes a timezone-aware datetime, got {opts.deadline!r}; "
            "for seconds from enqueue use deadline_in="
        )
    return _datetime("deadline", opts.deadline)


def _meta(meta: Mapping[str, object] | None) -> dict[str, object]:
    if not meta:
        return {}
    value = dict(meta)
    too_deep = f"job option meta nests deeper than {MAX_DEPTH} levels"
    try:
        size = len(_meta_encoder.encode(value))
    except RecursionError:
        raise InvalidOption(too_deep) from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidOption(f"job option meta is not JSON-serializable: {exc}") from None
    if size > 2 * MAX_DEPTH and nested_deeper_than(value, MAX_DEPTH + 1):
        raise InvalidOption(too_deep)
    if size > MAX_META:
        raise InvalidOption(
            f"job option meta is {size} bytes encoded, over the maximum of {MAX_META}; "
            "keep meta small (ids, tags) and store data elsewhere"
        )
    return value


def resolve(opts: JobOptions, now: float) -> dict[str, object]:
    """Validate `opts` into the `Job` fields they set. Raises `InvalidOption`."""
    queue = check_queue(opts.queue or "default")
    priority = 0 if opts.priority is None else opts.priority
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidOption(f"job option priority must be an int, got {priority!r}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidOption(
            f"job option priority must be within {MIN_PRIORITY}..{MAX_PRIORITY}, got {priority}"
        )
    if opts.delay is not None and opts.at is not None:
        raise InvalidOption("give either delay or at, not both")
    run_at = now
    if opts.delay is not None:
        run_at = now + _seconds("delay", opts.delay)
    elif opts.at is not None:
        run_at = _at(opts.at, now)
    timeout = None if opts.timeout is None else _seconds("timeout", opts.timeout, allow_zero=False)
    deadline = _deadline(opts, now)
    if deadline is not None and run_at > deadline:
        raise InvalidOption(
            f"the job may start only {run_at - deadline:.3f} s after its deadline, so it could "
            "never start; move the deadline later or the delay/at earlier"
        )
    attempts = 1 if opts.max_attempts is None else opts.max_attempts
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise InvalidOption(f"job option max_attempts must be an int >= 1, got {attempts!r}")
    key = None if opts.key is None else check_key(opts.key)
    unique_until = None
    if opts.unique_for is not None:
        if key is None:
            raise InvalidOption("job option unique_for needs a key")
        unique_until = now + _seconds("unique_for", opts.unique_for)
    keep_for = 86_400.0 if opts.keep_for is None else _seconds("keep_for", opts.keep_for)
    policy = opts.on_parent_failure or "cancel"
    if policy not in PARENT_POLICIES:
        raise InvalidOption(
            f"job option on_parent_failure must be one of {', '.join(map(repr, PARENT_POLICIES))},"
            f" got {policy!r}"
        )
    return {
        "queue": queue,
        "priority": priority,
        "run_at": run_at,
        "enqueued_at": now,
        "max_attempts": attempts,
        "timeout": timeout,
        "deadline": deadline,
        "key": key,
        "unique_until": unique_until,
        "keep_for": keep_for,
        "parents": _parents(opts.after),
        "on_parent_failure": policy,
        "meta": _meta(opts.meta),
    }


def _parents(after: Sequence[object] | None) -> tuple[str, ...]:
    """The ids of `after`'s jobs (handles, or ids)."""
    if after is None:
        return ()
    if isinstance(after, str | bytes) or not isinstance(after, Sequence | set | frozenset):
        raise InvalidOption(
            f"job option after takes a list of job handles or ids, got {type(after).__name__}"
        )
    ids: list[str] = []
    for parent in after:
        job_id = parent if isinstance(parent, str) else getattr(parent, "id", None)
        if (
            not isinstance(job_id, str)
            or not job_id
            or not job_id.isascii()
            or not job_id.isalnum()
        ):
            raise InvalidOption(
                f"job option after: {parent!r} is neither a job handle nor a job id"
            )
        if job_id not in ids:
            ids.append(job_id)
    if len(ids) > MAX_PARENTS:
        raise InvalidOption(f"job option after lists {len(ids)} jobs; at most {MAX_PARENTS}")
    return tuple(ids)


def build_jobs(task: str, payloads: Sequence[bytes], opts: JobOptions, now: float) -> list[Job]:
    """The `Job` records for `payloads`, sharing one validation of `opts`."""
    fields_ = resolve(opts, now)
    if len(payloads) > 1 and fields_["key"] is not None:
        raise InvalidOption("a unique key can't be shared by several jobs of one enqueue_many")
    ids = new_job_ids(len(payloads), now)
    return [Job(id=i, task=task, payload=p, **fields_) for i, p in zip(ids, payloads, strict=True)]  # type: ignore[arg-type]


class Producer:
    """Puts jobs into a backend, coalescing concurrent single enqueues while entered.

    Args:
        backend: the store.
        clock: the time source for `run_at` and ids.
        max_batch: the most jobs one coalesced backend call carries (default: the
            backend's `enqueue_batch`; it also says how many calls may be in flight).
    """

    def __init__(self, backend: Backend, clock: Clock, *, max_batch: int | None = None) -> None:
        self.backend = backend
        self.clock = clock
        self._max_batch = max_batch or backend.enqueue_batch
        self._batcher: Batcher[Job, str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Callables run on each batch of `Job` records before they are stored (e.g. to
        #: add trace context to `meta`); empty: no cost.
        self.before_enqueue: tuple[Callable[[Sequence[Job]], Sequence[Job]], ...] = ()

    async def __aenter__(self) -> Self:
        batcher: Batcher[Job, str] = Batcher(
            self._flush,
            max_size=self._max_batch,
            max_wait=0.0,
            capacity=max(self._max_batch * 10, 10_000),
            max_concurrency=self.backend.enqueue_concurrency,
            name="enqueue",
        )
        await batcher.__aenter__()
        self._batcher, self._loop = batcher, asyncio.get_running_loop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        batcher, self._batcher, self._loop = self._batcher, None, None
        if batcher is not None:
            await batcher.__aexit__(exc_type, exc, tb)

    async def _flush(self, jobs: Sequence[Job]) -> list[str]:
        return await self.backend.enqueue(jobs)

    async def enqueue(self, jobs: Sequence[Job]) -> list[str]:
        """Store `jobs`; for each, the id of the job holding its place (see
        `Backend.enqueue`: another job's id where a unique key made it a duplicate)."""
        for hook in self.before_enqueue:
            jobs = hook(jobs)
        batcher = self._batcher
        if (
            len(jobs) == 1
            and batcher is not None
            and not jobs[0].parents  # its own call: a bad parent must fail it alone
            and asyncio.get_running_loop() is self._loop
        ):
            return [await batcher.submit(jobs[0])]
        return await self.backend.enqueue(jobs)
