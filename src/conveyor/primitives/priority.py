"""PriorityBatcher: a Batcher whose waiting items leave by priority and not-before time.

Same flush rules, overflow policies, retries and lifecycle as `Batcher` (both run on the
same engine); only the order of the waiting queue differs.

Example:
    async with PriorityBatcher(send_emails, max_size=50, max_wait=0.1) as batcher:
        await batcher.submit(password_reset, priority=10)
        await batcher.submit(newsletter, priority=-5, not_before=clock.now() + 3600)
"""

from __future__ import annotations

import asyncio
import heapq
from typing import TypeVar

from conveyor.errors import Dropped, QueueFull
from conveyor.primitives._batch_types import Entry
from conveyor.primitives._engine import OPEN, Engine

__all__ = ["PriorityBatcher"]

T = TypeVar("T")
R = TypeVar("R")


class PriorityBatcher(Engine[T, R]):
    """A batcher that flushes higher-priority items first and holds items until not-before.

    Ready items leave in order of priority (higher first), then submission order. An item
    submitted with `not_before` (wall-clock epoch seconds, as `clock.now()` returns) is not
    flushed before that time; its `max_wait` starts counting when it becomes ready. Retries
    go ahead of new items, as in `Batcher`. `flush()` does not release items early.

    Overflow counts every waiting new item, ready or not. ``drop_oldest`` sheds the item
    that matters least: the lowest priority, oldest first among equals (a linear scan,
    paid only when the queue is full). The other policies behave as in `Batcher`.

    Args:
        handler: async batch function returning one result or exception per item, in order.
        max_size: most items in one batch (>= 1).
        max_wait: seconds the oldest ready item may wait for a fuller batch (>= 0).
        capacity: most new items waiting, ready or not (>= 1).
        overflow: what a full queue does (see `Batcher`).
        max_concurrency: most handler calls running at once (>= 1).
        retry: re-queue failed items per this policy; `None` fails them at once.
        clock: time source (inject `FakeClock` in tests).
        name: names the batcher in errors and task names.

    Example:
        async with PriorityBatcher(handler, max_size=10) as batcher:
            urgent = batcher.submit_nowait("page-oncall", priority=100)
            later = batcher.submit_nowait("digest", not_before=clock.now() + 60)
    """

    _default_name = "priority-batcher"

    def _init_fresh(self) -> None:
        # Ready items by (-priority, seq); items held back by (ready_at, seq, -priority).
        self._ready: list[tuple[int, int, Entry[T, R]]] = []
        self._held: list[tuple[float, int, int, Entry[T, R]]] = []
        # When each ready item became ready, with lazy deletion of the ones taken, so the
        # max_wait timer finds the longest-waiting ready item without scanning.
        self._since: list[tuple[float, int]] = []
        self._gone: set[int] = set()

    def submit_nowait(
        self, item: T, *, priority: int = 0, not_before: float | None = None
    ) -> asyncio.Future[R]:
        """Queue `item` without waiting and return the future of its result.

        Args:
            item: the item.
            priority: higher leaves first; any int, default 0.
            not_before: wall-clock time (epoch seconds) before which it is not flushed.

        Raises:
            QueueFull, Dropped: per the overflow policy (see `Batcher.submit_nowait`).
            ClosedError: the batcher is closing or closed.
        """
        if self._state is not OPEN:
            raise self._not_open()
        if self._depth() >= self._capacity:
            self._overflowed()
        assert self._loop is not None
        fut: asyncio.Future[R] = self._loop.create_future()
        now = self._clock.monotonic()
        seq = next(self._seq)
        self._submitted += 1
        wait = 0.0 if not_before is None else not_before - self._clock.now()
        if wait > 0:
            heapq.heappush(self._held, (now + wait, seq, -priority, (item, fut, 0, now + wait)))
            self._notify()  # the flusher may need an earlier alarm
        else:
            heapq.heappush(self._ready, (-priority, seq, (item, fut, 0, now)))
            heapq.heappush(self._since, (now, seq))
            if len(self._ready) >= self._wake_at:
                self._notify()
        return fut

    async def submit(self, item: T, *, priority: int = 0, not_before: float | None = None) -> R:
        """Queue `item` (see `submit_nowait`), wait for its batch, return its own result.

        Raises:
            Exception: the item's own error from the handler (after any retries).
            QueueFull, Dropped: per the overflow policy.
            ClosedError: the batcher is closing or closed.
        """
        if self._overflow == "block" and self._depth() >= self._capacity:
            await self._room()
        return await self.submit_nowait(item, priority=priority, not_before=not_before)

    def _overflowed(self) -> None:
        policy = self._overflow
        if policy == "drop_oldest":
            self._evict_least()
            return
        if policy == "drop_newest":
            self._dropped += 1
            raise Dropped(f"{self._label} is full ({self._capacity} waiting); item dropped")
        raise QueueFull(
            f"{self._label} is full ({self._capacity} items waiting); "
            "retry later or use overflow='block' to wait for room"
        )

    def _evict_least(self) -> None:
        """Drop the lowest-priority waiting item, oldest first among equals."""
        # Compare (priority, seq): the smallest pair is the least important, oldest item.
        ready = min(range(len(self._ready)), key=lambda i: self._rank(i, True), default=None)
        held = min(range(len(self._held)), key=lambda i: self._rank(i, False), default=None)
        use_ready = held is None or (
            ready is not None and self._rank(ready, True) <= self._rank(held, False)
        )
        if use_ready:
            assert ready is not None
            _, seq, entry = self._ready.pop(ready)
            heapq.heapify(self._ready)
            self._gone.add(seq)
        else:
            assert held is not None
            entry = self._held.pop(held)[3]
            heapq.heapify(self._held)
        self._dropped += 1
        if not entry[1].done():
            entry[1].set_exception(Dropped(f"{self._label} was full; this item was dropped"))

    def _rank(self, i: int, ready: bool) -> tuple[int, int]:
        if ready:
            neg, seq, _ = self._ready[i]
        else:
            _, seq, neg, _ = self._held[i]
        return (-neg, seq)

    # -- the waiting queue (see Engine) ------------------------------------------------

    def _make_ready(self, now: float) -> float | None:
        held = self._held
        while held and held[0][0] <= now:
            ready_at, seq, neg, entry = heapq.heappop(held)
            heapq.heappush(self._ready, (neg, seq, entry))
            heapq.heappush(self._since, (ready_at, seq))
        return held[0][0] if held else None

    def _fresh_ready(self) -> int:
        return len(self._ready)

    def _fresh_since(self) -> float:
        since, gone = self._since, self._gone
        while since[0][1] in gone:
            gone.discard(heapq.heappop(since)[1])
        return since[0][0]

    def _take_fresh(self, k: int) -> list[Entry[T, R]]:
        out: list[Entry[T, R]] = []
        for _ in range(k):
            _, seq, entry = heapq.heappop(self._ready)
            self._gone.add(seq)
            out.append(entry)
        if not self._ready:  # nothing ready: the bookkeeping can start afresh
            self._since.clear()
            self._gone.clear()
        return out

    def _fresh_entries(self) -> list[Entry[T, R]]:
        return [e for _, _, e in self._ready] + [e for *_, e in self._held]

    def _clear_fresh(self) -> None:
        self._ready.clear()
        self._held.clear()
        self._since.clear()
        self._gone.clear()

    def _depth(self) -> int:
        return len(self._ready) + len(self._held)
