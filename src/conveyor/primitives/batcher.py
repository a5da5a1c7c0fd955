"""Batcher: coalesces single submissions into batched handler calls with per-item results.

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
import heapq
import itertools
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Literal, Self, TypeAlias, TypeVar, get_args

from conveyor.clock import Clock, SystemClock
from conveyor.errors import ClosedError, ConveyorError, Dropped, QueueFull
from conveyor.retry import RetryPolicy

__all__ = ["Batcher", "BatcherStats", "Handler", "Overflow"]

T = TypeVar("T")
R = TypeVar("R")

Overflow: TypeAlias = Literal["block", "reject", "drop_oldest", "drop_newest"]
"""What a full input queue does with one more item (see `Batcher`)."""

Handler: TypeAlias = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]
"""A batch function: one result, or one exception instance, per item, in order."""

# A waiting item: (item, its caller's future, failed attempts so far, waiting since).
# Plain tuples keep the per-item cost low; the hot path creates exactly one per item.
_Entry: TypeAlias = "tuple[T, asyncio.Future[R], int, float]"

_NEW, _OPEN, _CLOSING, _CLOSED = "new", "open", "closing", "closed"


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
        queue_depth: items waiting now (retries that are due included).
        retry_pending: failed items waiting out their retry backoff.
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


class Batcher(Generic[T, R]):
    """Coalesces submitted items into batches for one handler, with a result per item.

    A batch is flushed when `max_size` items are waiting, or `max_wait` seconds after the
    oldest waiting item arrived, whichever comes first, and only while fewer than
    `max_concurrency` handler calls are running. `max_wait=0` is natural batching: flush as
    soon as a slot is free, so an idle batcher answers a lone item at once and a busy one
    gathers everything that arrived during the previous flush into the next batch.

    Overflow (when `capacity` items are already waiting):

    * ``block``: `submit` waits for room (backpressure); `submit_nowait` raises `QueueFull`.
    * ``reject``: both raise `QueueFull`; the item is not accepted.
    * ``drop_oldest``: the oldest waiting item fails with `Dropped`; the new one is accepted.
    * ``drop_newest``: the new item is not accepted; `submit` / `submit_nowait` raise `Dropped`.

    A caller cancelled before its item's batch formed has its item skipped (counted as
    `cancelled`); once the batch formed, the item is processed and its result discarded.
    With a `retry` policy, failed items are re-queued one by one after the policy's backoff
    and join later batches ahead of new items. `aclose()` (and leaving ``async with``)
    stops accepting, then flushes and finishes every accepted item, retries included.

    Args:
        handler: async batch function returning one result or exception per item, in order.
        max_size: most items in one batch (>= 1).
        max_wait: seconds the oldest waiting item may wait for a fuller batch (>= 0).
        capacity: most items waiting to be flushed (>= 1).
        overflow: what a full queue does, see above.
        max_concurrency: most handler calls running at once (>= 1).
        retry: re-queue failed items per this policy; `None` fails them at once.
        clock: time source for waits and backoff (inject `FakeClock` in tests).
        name: names the batcher in errors and task names.

    Example:
        async with Batcher(handler, max_size=50, max_wait=0.005) as batcher:
            results = await batcher.submit_many(items)
    """

    def __init__(
        self,
        handler: Handler[T, R],
        *,
        max_size: int = 100,
        max_wait: float = 0.0,
        capacity: int = 10_000,
        overflow: Overflow = "block",
        max_concurrency: int = 1,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        name: str = "batcher",
    ) -> None:
        for label, value in (
            ("max_size", max_size),
            ("capacity", capacity),
            ("max_concurrency", max_concurrency),
        ):
            if value < 1:
                raise ValueError(f"Batcher {name!r}: {label} must be >= 1, got {value}")
        if max_wait < 0:
            raise ValueError(f"Batcher {name!r}: max_wait must be >= 0 seconds, got {max_wait}")
        if overflow not in get_args(Overflow):
            raise ValueError(
                f"Batcher {name!r}: overflow must be one of {get_args(Overflow)}, got {overflow!r}"
            )
        self._handler = handler
        self._max_size = max_size
        self._max_wait = max_wait
        self._capacity = capacity
        self._overflow = overflow
        self._max_concurrency = max_concurrency
        self._retry = retry
        self._clock: Clock = clock or SystemClock()
        self._name = name

        self._q: deque[_Entry[T, R]] = deque()
        self._again: deque[_Entry[T, R]] = deque()  # due retries, flushed before new items
        self._delayed: list[tuple[float, int, _Entry[T, R]]] = []  # retries in backoff
        self._running: dict[int, list[_Entry[T, R]]] = {}
        self._seq = itertools.count()
        self._space: deque[asyncio.Future[None]] = deque()  # `block` submitters
        # The flusher parks on `_wake`; a submit wakes it once the queue holds `_wake_at`
        # items, so a flusher that waits for a slot or a timer is not woken per item.
        self._wake: asyncio.Future[None] | None = None
        self._wake_at = sys.maxsize
        self._forced = 0  # items at the head that `flush()` wants out without waiting
        self._state = _NEW
        self._tg: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

        self._submitted = self._completed = self._failed = self._retried = 0
        self._dropped = self._cancelled = self._batches = self._batched_items = 0
        self._max_batch = 0
        self._max_waited = 0.0

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is not _NEW:
            raise RuntimeError(f"Batcher {self._name!r} is {self._state}; it can be entered once")
        self._loop = asyncio.get_running_loop()
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        self._state = _OPEN
        self._runner = tg.create_task(self._run(), name=f"{self._name}-flusher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None, "entered batchers always have a task group"
        try:
            if exc_type is None or issubclass(exc_type, Exception):
                await self.aclose()
            else:
                self._abort()
        except BaseException as err:
            # Cancelled while draining: fail what is left rather than leave callers hanging.
            self._abort()
            await tg.__aexit__(type(err), err, err.__traceback__)
            raise
        await tg.__aexit__(exc_type, exc, tb)
        return None

    async def aclose(self) -> None:
        """Stop accepting items, then flush and finish every accepted one.

        Later `submit` calls raise `ClosedError`, and so do submitters still blocked on a
        full queue (their items were never accepted). Pending retries are still attempted.
        Safe to call more than once.
        """
        if self._state is _NEW:
            self._state = _CLOSED
            return
        if self._state is _OPEN:
            self._state = _CLOSING
            self._wake_space(len(self._space))
            self._notify()
        if self._runner is not None and not self._runner.done():
            # asyncio.wait, not `await runner`: cancelling aclose must not cancel the flusher.
            await asyncio.wait([self._runner])
        self._state = _CLOSED

    def _abort(self) -> None:
        """Fail every waiting item with ClosedError; the task group cancels the rest."""
        self._state = _CLOSED
        err = ClosedError(f"Batcher {self._name!r} was cancelled before this item was flushed")
        waiting = [*self._q, *self._again, *(e for _, _, e in self._delayed)]
        self._q.clear()
        self._again.clear()
        self._delayed.clear()
        for entry in waiting:
            if not entry[1].done():
                entry[1].set_exception(err)
        self._wake_space(len(self._space))

    def _not_open(self) -> Exception:
        if self._state is _NEW:
            return RuntimeError(
                f"Batcher {self._name!r} is not running: use `async with` before submitting"
            )
        return ClosedError(f"Batcher {self._name!r} is closed; it accepts no more items")

    # -- submitting --------------------------------------------------------------------

    def submit_nowait(self, item: T) -> asyncio.Future[R]:
        """Queue `item` without waiting and return the future of its result.

        Raises:
            QueueFull: the queue is full and the policy is ``block`` or ``reject``.
            Dropped: the queue is full and the policy is ``drop_newest``.
            ClosedError: the batcher is closing or closed.
        """
        if self._state is not _OPEN:
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
            QueueFull, Dropped: see the overflow policies.
            ClosedError: the batcher is closing or closed.
        """
        if self._overflow == "block" and len(self._q) >= self._capacity:
            await self._room()
        return await self.submit_nowait(item)

    async def submit_many(self, items: Iterable[T]) -> list[R | BaseException]:
        """Submit every item and return one result or exception per item, in order.

        Items refused by the overflow policy get their `QueueFull` / `Dropped` in place.
        """
        if self._state is not _OPEN:
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
                fut.set_exception(Dropped(f"Batcher {self._name!r} dropped this item (full)"))
            return
        if policy == "drop_newest":
            self._dropped += 1
            raise Dropped(f"Batcher {self._name!r} is full ({self._capacity}); item dropped")
        raise QueueFull(
            f"Batcher {self._name!r} is full ({self._capacity} items waiting); "
            "retry later or use overflow='block' to wait for room"
        )

    async def _room(self) -> None:
        """Wait until the queue has room (``block`` policy)."""
        while len(self._q) >= self._capacity:
            if self._state is not _OPEN:
                raise self._not_open()
            assert self._loop is not None
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._space.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_space(1)  # we were given room we won't use: pass it on
                else:
                    self._space.remove(waiter)
                raise
        if self._state is not _OPEN:
            raise self._not_open()

    def _wake_space(self, n: int) -> None:
        space = self._space
        while n > 0 and space:
            waiter = space.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1

    # -- flushing ----------------------------------------------------------------------

    async def flush(self) -> None:
        """Flush every item waiting now, without waiting for `max_wait`, and wait for them.

        Returns when those items, and the batches already running, have their results.
        Items in retry backoff are included and keep their backoff.
        """
        if self._state is _NEW:
            raise self._not_open()
        futs = [e[1] for e in self._q]
        futs += [e[1] for e in self._again]
        futs += [e[1] for _, _, e in self._delayed]
        for batch in self._running.values():
            futs += [e[1] for e in batch]
        self._forced = len(self._q) + len(self._again)
        self._notify()
        pending = [f for f in futs if not f.done()]
        if pending:
            await asyncio.wait(pending)

    def _notify(self) -> None:
        self._wake_at = sys.maxsize
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _ready(self) -> int:
        """Items that may go into the next batch."""
        return len(self._q) + len(self._again)

    def _oldest_since(self) -> float:
        """When the longest-waiting ready item started waiting (there is one)."""
        if self._again and self._q:
            return min(self._again[0][3], self._q[0][3])
        return (self._again or self._q)[0][3]

    def _next_ready_at(self) -> float | None:
        """When an item not yet eligible becomes eligible (subclass hook)."""
        return None

    def _take(self, n: int, now: float) -> list[_Entry[T, R]]:
        """Remove up to `n` eligible items, due retries first, skipping cancelled callers."""
        batch: list[_Entry[T, R]] = []
        again = self._again
        while again and len(batch) < n:
            entry = again.popleft()
            if not entry[1].done():
                batch.append(entry)
        q = self._q
        k = min(n - len(batch), len(q))
        if k > 0:
            popleft = q.popleft
            fresh = [popleft() for _ in range(k)]
            kept = [e for e in fresh if not e[1].done()]
            self._cancelled += k - len(kept)
            batch += kept
            if self._space:
                self._wake_space(k)
        return batch

    async def _run(self) -> None:
        clock = self._clock
        while True:
            now = clock.monotonic()
            if self._delayed:
                self._promote(now)
            ready = self._ready()
            due = False
            since = 0.0
            if ready:
                since = self._oldest_since()
                due = (
                    ready >= self._max_size
                    or self._forced > 0
                    or self._state is not _OPEN
                    or now >= since + self._max_wait
                )
            if due and len(self._running) < self._max_concurrency:
                self._launch(now, since)
                continue
            idle = not (ready or self._delayed or self._running)
            if self._state is _CLOSING and idle and self._next_ready_at() is None:
                return
            deadline: float | None = None
            wake_at = sys.maxsize  # due but no free slot: only a finished batch wakes us
            if not due:
                times = [t for t in (self._next_ready_at(),) if t is not None]
                if ready:
                    times.append(since + self._max_wait)
                    wake_at = max(1, self._max_size - len(self._again))
                else:
                    wake_at = 1
                if self._delayed:
                    times.append(self._delayed[0][0])
                deadline = min(times) if times else None
            await self._park(deadline, wake_at)

    def _promote(self, now: float) -> None:
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            due_at, _, (item, fut, attempts, _) = heapq.heappop(delayed)
            self._requeue((item, fut, attempts, due_at))

    def _requeue(self, entry: _Entry[T, R]) -> None:
        """Make a retry whose backoff ended eligible again (subclass hook)."""
        self._again.append(entry)

    async def _park(self, deadline: float | None, wake_at: int) -> None:
        assert self._loop is not None
        assert self._tg is not None
        wake = self._loop.create_future()
        self._wake = wake
        self._wake_at = wake_at
        alarm = None
        if deadline is not None:
            alarm = self._tg.create_task(self._alarm(deadline, wake), name=f"{self._name}-timer")
        try:
            await wake
        finally:
            self._wake = None
            self._wake_at = sys.maxsize
            if alarm is not None:
                alarm.cancel()

    async def _alarm(self, deadline: float, wake: asyncio.Future[None]) -> None:
        # Absolute deadline: a FakeClock advanced before this task ran still fires at once.
        await self._clock.sleep(deadline - self._clock.monotonic())
        if not wake.done():
            wake.set_result(None)

    def _launch(self, now: float, since: float) -> None:
        batch = self._take(self._max_size, now)
        self._forced = max(0, self._forced - len(batch))
        if not batch:
            return
        self._max_waited = max(self._max_waited, now - since)
        self._batches += 1
        self._batched_items += len(batch)
        self._max_batch = max(self._max_batch, len(batch))
        key = next(self._seq)
        self._running[key] = batch
        assert self._tg is not None
        self._tg.create_task(self._flush_batch(key, batch), name=f"{self._name}-batch")

    async def _flush_batch(self, key: int, batch: list[_Entry[T, R]]) -> None:
        try:
            try:
                results = await self._handler([e[0] for e in batch])
            except Exception as exc:
                self._settle_all(batch, exc)
            else:
                if len(results) == len(batch):
                    self._settle(batch, results)
                else:
                    self._settle_all(
                        batch,
                        ConveyorError(
                            f"Batcher {self._name!r}: handler returned {len(results)} results "
                            f"for a batch of {len(batch)} items; it must return exactly one "
                            "result or exception per item, in order"
                        ),
                    )
        except BaseException:
            # Cancelled (the batcher is aborting): every item still gets an answer.
            err = ClosedError(f"Batcher {self._name!r} was cancelled while this batch ran")
            for entry in batch:
                if not entry[1].done():
                    entry[1].set_exception(err)
            raise
        finally:
            del self._running[key]
            self._notify()

    def _settle_all(self, batch: list[_Entry[T, R]], exc: BaseException) -> None:
        self._settle(batch, [exc] * len(batch))

    def _settle(self, batch: list[_Entry[T, R]], results: Sequence[R | BaseException]) -> None:
        completed = 0
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                self._fail(entry, result)
                continue
            completed += 1
            try:
                entry[1].set_result(result)
            except asyncio.InvalidStateError:
                pass  # the caller was cancelled after its batch formed
        self._completed += completed

    def _fail(self, entry: _Entry[T, R], exc: BaseException) -> None:
        item, fut, attempts, _ = entry
        retry = self._retry
        if fut.done():
            self._failed += 1
            return
        if retry is not None and retry.should_retry(exc, attempts + 1):
            self._retried += 1
            due_at = self._clock.monotonic() + retry.delay(attempts + 1)
            heapq.heappush(self._delayed, (due_at, next(self._seq), (item, fut, attempts + 1, 0.0)))
            return
        self._failed += 1
        if isinstance(exc, StopIteration):
            # Futures refuse StopIteration; keep it as the cause.
            wrapped = RuntimeError(f"handler returned StopIteration for {item!r}")
            wrapped.__cause__ = exc
            exc = wrapped
        fut.set_exception(exc)

    # -- introspection -----------------------------------------------------------------

    def stats(self) -> BatcherStats:
        """Return a snapshot of the counters (see `BatcherStats`)."""
        return BatcherStats(
            submitted=self._submitted,
            completed=self._completed,
            failed=self._failed,
            retried=self._retried,
            dropped=self._dropped,
            cancelled=self._cancelled,
            batches=self._batches,
            mean_batch_size=self._batched_items / self._batches if self._batches else 0.0,
            max_batch_size=self._max_batch,
            max_wait_observed=self._max_waited,
            queue_depth=self._ready(),
            retry_pending=len(self._delayed),
            in_flight=len(self._running),
        )

    @property
    def name(self) -> str:
        """The name given at construction."""
        return self._name
