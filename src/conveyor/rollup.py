"""Job metrics over time: what a settle adds to the per-minute rollups, and what they sum to.

A worker folds each settled attempt into a `RollupBuffer` (one dict update, no I/O); a
small service writes the buffer to the store's `Rollups` capability about once a second,
one row per (minute, queue, task) touched. `summarize` turns stored rows into a
`MetricsReport` (what `inspector.metrics` and ``conveyor inspect metrics`` show).

Value names in a row:

==================  ==========================================================
``completed``       attempts that completed
``failed``          attempts that failed for good (dead letters)
``retried``         attempts that failed and will run again
``cancelled``       attempts cancelled while running
``duration_sum``    seconds the counted attempts ran, summed
``wait_sum``        seconds they waited for a worker (pickup latency), summed
``d<k>``, ``w<k>``  attempts whose duration (wait) fell in bucket ``k``
==================  ==========================================================

Buckets are logarithmic: bucket 0 holds everything under 1 ms, bucket ``k`` ≥ 1 the
values in ``[2^((k-1)/4), 2^(k/4))`` milliseconds (four per doubling: a percentile read
from them is within 19 % of the true value), up to bucket `TOP` (about 5 days and more).
Attempts ended by a shutdown (put back unstarted) or whose lease was lost are not counted:
they ran again, and the later attempt is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from math import log2 as _log2
from typing import Literal

import msgspec

from conveyor.capabilities import Rollup
from conveyor.errors import InvalidOption
from conveyor.names import check_queue, check_task_name

__all__ = [
    "TOP",
    "GroupMetrics",
    "MetricsReport",
    "RollupBuffer",
    "bucket_of",
    "bucket_upper",
    "check_rows",
    "percentile",
    "summarize",
]

TOP = 116  # 2^(116/4) ms ≈ 6.2 days
_PER_DOUBLING = 4
OUTCOMES = ("completed", "failed", "retried", "cancelled")


def bucket_of(seconds: float) -> int:
    """The bucket of a duration in seconds (see the module docstring)."""
    ms = seconds * 1000.0
    if not ms >= 1.0:  # also NaN and negatives (a clock step)
        return 0
    k = int(_log2(ms) * _PER_DOUBLING) + 1
    return k if k < TOP else TOP


def bucket_upper(k: int) -> float:
    """The upper bound of bucket `k`, in seconds."""
    return float(2.0 ** (k / _PER_DOUBLING) / 1000.0)


def bucket_lower(k: int) -> float:
    """The lower bound of bucket `k`, in seconds (0 for bucket 0)."""
    return 0.0 if k <= 0 else float(2.0 ** ((k - 1) / _PER_DOUBLING) / 1000.0)


_D = tuple(f"d{k}" for k in range(TOP + 1))
_W = tuple(f"w{k}" for k in range(TOP + 1))
_VALUE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def check_rows(rows: Sequence[Rollup], keep_for: float) -> None:
    """What every store's `Rollups.add_rollups` checks before it writes anything.

    Raises:
        InvalidOption: naming the first bad row and what is wrong with it.
    """
    if not (isinstance(keep_for, int | float) and math.isfinite(keep_for) and keep_for > 0):
        raise InvalidOption(f"rollups: keep_for must be a number of seconds > 0, not {keep_for!r}")
    for row in rows:
        if not isinstance(row, Rollup):
            raise InvalidOption(f"rollups: expected Rollup rows, got {type(row).__name__}")
        if not isinstance(row.minute, int) or row.minute % 60 or row.minute < 0:
            raise InvalidOption(
                f"rollups: minute must be an epoch second at the start of a minute (a multiple "
                f"of 60), not {row.minute!r}"
            )
        check_queue(row.queue)
        check_task_name(row.task)
        for name, amount in row.values.items():
            if not isinstance(name, str) or not _VALUE_NAME.fullmatch(name):
                raise InvalidOption(
                    f"rollups: value name {name!r} must match [a-z][a-z0-9_]{{0,31}}"
                )
            if (
                isinstance(amount, bool)
                or not isinstance(amount, int | float)
                or not (math.isfinite(amount))
            ):
                raise InvalidOption(
                    f"rollups: value {name}={amount!r} of {row.queue}/{row.task} at "
                    f"{row.minute} must be a finite number"
                )


class RollupBuffer:
    """Settled attempts folded into per-minute rows, until `take` hands them to the store.

    `add` is on every settled job's path, so it does the least it can (about 2 µs): one
    counter per (minute, queue, task, outcome, duration bucket, wait bucket) and the sums per
    (minute, queue, task); `take` shapes rows once a second. Bounded: entries are per
    distinct key since the last take, and a worker takes every second or so.
    """

    __slots__ = ("_counts", "_held", "_sums")

    def __init__(self) -> None:
        self._counts: dict[tuple[int, str, str, str, int, int], int] = {}
        self._sums: dict[tuple[int, str, str], list[float]] = {}
        self._held: dict[tuple[int, str, str], dict[str, float]] = {}

    def add(
        self, at: float, queue: str, task: str, outcome: str, duration: float, wait: float
    ) -> None:
        """Count one attempt that ended at `at` (epoch seconds) with `outcome` (one of
        ``completed``, ``failed``, ``retried``, ``cancelled``), having run `duration` seconds
        after waiting `wait` seconds for a worker."""
        if duration < 0.0:  # a clock step
            duration = 0.0
        if wait < 0.0:
            wait = 0.0
        minute = int(at // 60) * 60
        key = (minute, queue, task, outcome, bucket_of(duration), bucket_of(wait))
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        group = (minute, queue, task)
        sums = self._sums.get(group)
        if sums is None:
            self._sums[group] = [duration, wait]
        else:
            sums[0] += duration
            sums[1] += wait

    def take(self) -> list[Rollup]:
        """The rows gathered since the last take (and an empty buffer)."""
        counts, sums, rows = self._counts, self._sums, self._held
        self._counts, self._sums, self._held = {}, {}, {}
        for (minute, queue, task, outcome, d, w), n in counts.items():
            values = rows.get((minute, queue, task))
            if values is None:
                values = rows[(minute, queue, task)] = {}
            values[outcome] = values.get(outcome, 0.0) + n
            values[_D[d]] = values.get(_D[d], 0.0) + n
            values[_W[w]] = values.get(_W[w], 0.0) + n
        for group, (duration, wait) in sums.items():
            values = rows.setdefault(group, {})
            values["duration_sum"] = values.get("duration_sum", 0.0) + duration
            values["wait_sum"] = values.get("wait_sum", 0.0) + wait
        return [Rollup(minute=m, queue=q, task=t, values=v) for (m, q, t), v in rows.items()]

    def put_back(self, rows: Iterable[Rollup]) -> None:
        """Keep rows a failed write took back (so a store outage loses no counts); the next
        `take` returns them, merged with what was added meanwhile."""
        held = self._held
        for row in rows:
            values = held.setdefault((row.minute, row.queue, row.task), {})
            for name, amount in row.values.items():
                values[name] = values.get(name, 0.0) + amount

    def __len__(self) -> int:
        """Distinct (minute, queue, task) rows held (put back ones counted apart)."""
        return len(self._sums) + len(self._held)


class GroupMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One task's (or queue's) figures over a report's range.

    Attributes:
        name: the task (``by="task"``), the queue (``by="queue"``), or ``"*"`` (the total).
        completed, failed, retried, cancelled: attempts by outcome.
        failure_rate: failed attempts (retried or failed for good) among those counted
            (0.0 with none).
        throughput: ``(minute, completed, failed)`` per minute of the range, oldest first,
            minutes with nothing included (``failed`` counts retried and failed attempts).
        duration_mean, duration_p50, duration_p95, duration_p99: seconds an attempt ran.
        wait_mean, wait_p50, wait_p95, wait_p99: seconds a job waited for a worker (from
            when it was due to its start).
        latency: ``(minute, wait p50, wait p95)`` per minute of the range, oldest first
            (0.0 for a minute with nothing counted); the total's only (empty for a task or
            queue: a percentile per minute per group is most of a report's cost).
    """

    name: str
    completed: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    failure_rate: float = 0.0
    throughput: tuple[tuple[int, int, int], ...] = ()
    duration_mean: float = 0.0
    duration_p50: float = 0.0
    duration_p95: float = 0.0
    duration_p99: float = 0.0
    wait_mean: float = 0.0
    wait_p50: float = 0.0
    wait_p95: float = 0.0
    wait_p99: float = 0.0
    latency: tuple[tuple[int, float, float], ...] = ()

    @property
    def attempts(self) -> int:
        """Attempts counted (every outcome)."""
        return self.completed + self.failed + self.retried + self.cancelled


class MetricsReport(msgspec.Struct, frozen=True, kw_only=True):
    """What `inspector.metrics` returns: figures per task (or queue) and in total.

    Attributes:
        since, until: the range (epoch seconds; whole minutes).
        by: ``"task"`` or ``"queue"``.
        groups: one entry per task (queue) with anything counted, by name.
        total: every group together (named ``"*"``).
    """

    since: float
    until: float
    by: str
    groups: tuple[GroupMetrics, ...]
    total: GroupMetrics


def percentile(buckets: dict[int, float], q: float) -> float:
    """The `q` quantile (0..1) of values counted in `buckets` (bucket → count), read by
    interpolating geometrically inside the bucket it falls in (0.0 with nothing counted)."""
    n = sum(buckets.values())
    if n <= 0:
        return 0.0
    rank = q * n
    seen = 0.0
    for k in sorted(buckets):
        count = buckets[k]
        if count <= 0:
            continue
        if seen + count >= rank:
            lo, hi = bucket_lower(k), bucket_upper(k)
            share = (rank - seen) / count
            if lo <= 0.0:
                return hi * share
            return float(lo * (hi / lo) ** share)
        seen += count
    return bucket_upper(max(buckets))


def summarize(
    rows: Iterable[Rollup], *, since: float, until: float, by: Literal["task", "queue"] = "task"
) -> MetricsReport:
    """Sum stored rows into a report over ``[since, until)`` (rounded out to whole minutes)."""
    if by not in ("task", "queue"):
        raise ValueError(f"by must be 'task' or 'queue', not {by!r}")
    first = int(since // 60) * 60
    last = int(math.ceil(until / 60) * 60)
    minutes = range(first, max(first, last), 60)
    groups: dict[str, _Sum] = {}
    total = _Sum(per_minute_waits=True)
    for row in rows:
        if not first <= row.minute < last:
            continue
        name = row.task if by == "task" else row.queue
        group = groups.get(name)
        if group is None:
            group = groups[name] = _Sum()
        parsed = _parse(row.values)
        group.add(row.minute, parsed)
        total.add(row.minute, parsed)
    return MetricsReport(
        since=float(first),
        until=float(max(first, last)),
        by=by,
        groups=tuple(groups[name].metrics(name, minutes) for name in sorted(groups)),
        total=total.metrics("*", minutes, latency=True),
    )


# A row's values split into plain sums, duration buckets and wait buckets.
_Parsed = tuple[list[tuple[str, float]], list[tuple[int, float]], list[tuple[int, float]]]
_KINDS: dict[str, tuple[int, int]] = {}  # value name -> (0 sum | 1 duration | 2 wait, bucket)


def _kind(name: str) -> tuple[int, int]:
    kind = _KINDS.get(name)
    if kind is None:
        head, tail = name[:1], name[1:]
        if head in ("d", "w") and tail.isdigit():
            kind = (1 if head == "d" else 2, int(tail))
        else:
            kind = (0, 0)
        if len(_KINDS) < 10_000:
            _KINDS[name] = kind
    return kind


def _parse(values: dict[str, float]) -> _Parsed:
    sums: list[tuple[str, float]] = []
    durations: list[tuple[int, float]] = []
    waits: list[tuple[int, float]] = []
    for name, amount in values.items():
        which, k = _kind(name)
        if which == 0:
            sums.append((name, amount))
        elif which == 1:
            durations.append((k, amount))
        else:
            waits.append((k, amount))
    return sums, durations, waits


class _Sum:
    __slots__ = ("durations", "minute_waits", "minutes", "totals", "waits")

    def __init__(self, *, per_minute_waits: bool = False) -> None:
        self.totals: dict[str, float] = {}
        self.durations: dict[int, float] = {}
        self.waits: dict[int, float] = {}
        self.minutes: dict[int, list[float]] = {}
        self.minute_waits: dict[int, dict[int, float]] | None = {} if per_minute_waits else None

    def add(self, minute: int, parsed: _Parsed) -> None:
        totals, durations, waits = parsed
        per = self.minutes.get(minute)
        if per is None:
            per = self.minutes[minute] = [0.0, 0.0]
        mine = self.totals
        for name, amount in totals:
            mine[name] = mine.get(name, 0.0) + amount
            if name == "completed":
                per[0] += amount
            elif name == "failed" or name == "retried":
                per[1] += amount
        d = self.durations
        for k, amount in durations:
            d[k] = d.get(k, 0.0) + amount
        w = self.waits
        for k, amount in waits:
            w[k] = w.get(k, 0.0) + amount
        if self.minute_waits is not None:
            mw = self.minute_waits.setdefault(minute, {})
            for k, amount in waits:
                mw[k] = mw.get(k, 0.0) + amount

    def metrics(self, name: str, minutes: range, *, latency: bool = False) -> GroupMetrics:
        t = self.totals
        completed, failed = int(t.get("completed", 0)), int(t.get("failed", 0))
        retried, cancelled = int(t.get("retried", 0)), int(t.get("cancelled", 0))
        counted = completed + failed + retried + cancelled
        ended = completed + failed + retried
        per_minute = self.minute_waits or {}
        return GroupMetrics(
            name=name,
            completed=completed,
            failed=failed,
            retried=retried,
            cancelled=cancelled,
            failure_rate=(failed + retried) / ended if ended else 0.0,
            throughput=tuple(
                (m, int(self.minutes.get(m, (0, 0))[0]), int(self.minutes.get(m, (0, 0))[1]))
                for m in minutes
            ),
            duration_mean=t.get("duration_sum", 0.0) / counted if counted else 0.0,
            duration_p50=percentile(self.durations, 0.50),
            duration_p95=percentile(self.durations, 0.95),
            duration_p99=percentile(self.durations, 0.99),
            wait_mean=t.get("wait_sum", 0.0) / counted if counted else 0.0,
            wait_p50=percentile(self.waits, 0.50),
            wait_p95=percentile(self.waits, 0.95),
            wait_p99=percentile(self.waits, 0.99),
            latency=tuple(
                (
                    m,
                    percentile(per_minute.get(m, {}), 0.50),
                    percentile(per_minute.get(m, {}), 0.95),
                )
                for m in minutes
            )
            if latency
            else (),
        )
