"""Vocabulary shared by the batchers: handler signature, overflow policies, stats, entries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Overflow: TypeAlias = Literal["block", "reject", "drop_oldest", "drop_newest"]
"""What a full input queue does with one more item (see `Batcher`)."""

Handler: TypeAlias = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]
"""A batch function: one result, or one exception instance, per item, in order."""

# A waiting item: (item, its caller's future, failed attempts so far, waiting since).
# Plain tuples keep the per-item cost low; the hot path creates exactly one per item.
Entry: TypeAlias = "tuple[T, asyncio.Future[R], int, float]"


@dataclass(frozen=True, slots=True)
class BatcherStats:
    """A snapshot of a batcher's counters.

    Attributes:
        submitted: items accepted into the queue.
        completed: items that got a result.
        failed: items that got an exception (after their last attempt).
        retried: re-queued attempts (one item may count several times).
        dropped: items shed by `drop_oldest` / `drop_newest`.
        cancelled: items skipped because their caller gave up before their batch formed.
        batches: handler calls started.
        mean_batch_size: items per handler call, on average.
        max_batch_size: the largest batch so far.
        max_wait_observed: the longest time (clock seconds) an item waited to be flushed.
        queue_depth: new items waiting now (never more than `capacity`).
        retry_pending: failed items waiting to be retried (in backoff or due); these come
            only from batches already flushed, so they are bounded without `capacity`.
        in_flight: handler calls running now.
    """

    submitted: int
    completed: int
    failed: int
    retried: int
    dropped: int
    cancelled: int
    batches: int
    mean_batch_size: float
    max_batch_size: int
    max_wait_observed: float
    queue_depth: int
    retry_pending: int
    in_flight: int
