"""Batcher: coalesces single submissions into batched handler calls, first in, first out.

Callers submit one item and await that item's own result; a background flusher groups
waiting items into batches of at most `max_size` and calls the handler once per batch.

Example:
    async def save(rows: Sequence[Row]) -> list[int | BaseException]:
        return await db.insert_many(rows)

    async with Batcher(save, max_size=100, max_wait=0.01) as batcher:
        row_id = await batcher.submit(row)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import TypeVar

from conveyor.errors import ClosedError, Dropped, QueueFull
from conveyor.primitives._batch_types import BatcherStats, Entry, Handler, Overflow
from conveyor.primitives._engine import OPEN, Engine

__all__ = ["Batcher", "BatcherStats", "Handler", "Overflow"]

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Engine[T, R]):
    """Coalesces submitted items into batches for one handler, with a result per item.

    A batch is flushed when `max_size` items are waiting, or `max_wait` seconds after the
    oldest waiting item arrived, whichever comes first, and only while fewer than
    `max_concurrency` handler calls are running. `max_wait=0` is natural batching: flush as
    soon as a slot is free, so an idle batcher sends a lone item at once and a busy one
    gathers everything that arrived during the running flushes into the next batch.

    Overflow, when `capacity` new items are already waiting:

    * ``block``: `submit` waits for room (backpressure); `submit_nowait` raises `QueueFull`.
    * ``reject``: both raise `QueueFull`; the item is not accepted.
    * ``drop_oldest``: the oldest waiting item fails with `Dropped`; the new one is accepted.
    * ``drop_newest``: the new item is not accepted; both raise `Dropped`.

    A caller cancelled before its item's batch formed has its item skipped (counted as
    `cancelled`); once the batch formed, the item is processed and the result discarded.
    With a `retry` policy, failed items are re-queued one by one after the policy's backoff
    and join later batches ahead of new items (they don't count against `capacity`).
    `aclose()`, and leaving ``async with``, stop accepting, then flush and finish every
    accepted item, retries included. Leaving by cancellation fails waiting items with
    `ClosedError` instead of draining.

    Args:
        handler: async batch function returning one result or exception per item, in order.
        max_size: most items in one batch (>= 1).
        max_wait: seconds the oldest waiting item may wait for a fuller batch (>= 0).
        capacity: most new items waiting to be flushed (>= 1).
        overflow: what a full queue does, see above.
        max_concurrency: most handler calls running at once (>= 1).
        retry: re-queue failed items per this policy; `None` fails them at once.
        clock: time source for waits and backoff (inject `FakeClock` in tests).
        name: names the batcher in errors and task names.

    Example:
        async with Batcher(handler, max_size=50, max_wait=0.005) as batcher:
            one = await batcher.submit(item)
            many = await batcher.submit_many(items)
    """

    _default_name = "batcher"

    def _init_fresh(self) -> None:
        self._q: deque[Entry[T, R]] = deque()

    def submit_nowait(self, item: T) -> asyncio.Future[R]:
        """Queue `item` without waiting and return the future of its result.

        Raises:
            QueueFull: the queue is full and the policy is ``block`` or ``reject``.
            Dropped: the queue is full and the policy is ``drop_newest``.
            ClosedError: the batcher is closing or closed.
            StateError: the batcher was never entered.
        """
        if self._state is not OPEN:
            raise self._not_open()
        q = self._q
        if len(q) >= self._capacity:
            self._overflowed()
        assert self._loop is not None
        fut: asyncio.Future[R] = self._loop.create_future()
        q.append((item, fut, 0, self._clock.monotonic()))
        self._submitted += 1
        if len(q) >= self._wake_at:
            self._notify()
        return fut

    async def submit(self, item: T) -> R:
        """Queue `item`, wait for its batch, and return its own result.

        Raises:
            Exception: the item's own error from the handler (after any retries).
            QueueFull, Dropped: per the overflow policy.
            ClosedError: the batcher is closing or closed.
        """
        if self._overflow == "block" and len(self._q) >= self._capacity:
            await self._room()
        return await self.submit_nowait(item)

    async def submit_many(self, items: Iterable[T]) -> list[R | BaseException]:
        """Submit every item and return one result or exception per item, in order.

        With ``block`` this waits for room as needed; items refused by the policy, or by a
        close that happens meanwhile, get their `QueueFull` / `Dropped` / `ClosedError` in
        place.

        Raises:
            ClosedError: the batcher was already closed (nothing was submitted).
        """
        if self._state is not OPEN:
            raise self._not_open()
        slots: list[asyncio.Future[R] | BaseException] = []
        block = self._overflow == "block"
        for item in items:
            try:
                if block and len(self._q) >= self._capacity:
                    await self._room()
                slots.append(self.submit_nowait(item))
            except (QueueFull, Dropped, ClosedError) as err:
                slots.append(err)
        futs = [s for s in slots if isinstance(s, asyncio.Future)]
        results = iter(await asyncio.gather(*futs, return_exceptions=True))
        return [next(results) if isinstance(s, asyncio.Future) else s for s in slots]

    def _overflowed(self) -> None:
        policy = self._overflow
        if policy == "drop_oldest":
            _, fut, _, _ = self._q.popleft()
            self._dropped += 1
            self._forced = max(0, self._forced - 1)
            if not fut.done():
                fut.set_exception(Dropped(f"{self._label} was full; this item was dropped"))
            return
        if policy == "drop_newest":
            self._dropped += 1
            raise Dropped(f"{self._label} is full ({self._capacity} waiting); item dropped")
        raise QueueFull(
            f"{self._label} is full ({self._capacity} items waiting); "
            "retry later or use overflow='block' to wait for room"
        )

    # -- the waiting queue (see Engine) ------------------------------------------------

    def _fresh_ready(self) -> int:
        return len(self._q)

    def _fresh_since(self) -> float:
        return self._q[0][3]

    def _take_fresh(self, k: int) -> list[Entry[T, R]]:
        popleft = self._q.popleft
        return [popleft() for _ in range(k)]

    def _fresh_entries(self) -> list[Entry[T, R]]:
        return list(self._q)

    def _clear_fresh(self) -> None:
        self._q.clear()

    def _depth(self) -> int:
        return len(self._q)
