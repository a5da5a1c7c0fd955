"""The flushing engine shared by Batcher and PriorityBatcher: lifecycle, flush rules, retries.

Subclasses own the waiting queue and how items enter it (`submit`); this module decides when
a batch leaves, runs the handler calls in the object's task group, hands each caller its own
result, re-queues failures per the retry policy and drains everything on close.
"""

from __future__ import annotations

import abc
import asyncio
import heapq
import itertools
import sys
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import Generic, Self, TypeVar, get_args

from conveyor.clock import Clock, SystemClock
from conveyor.errors import ClosedError, ConfigError, ConveyorError, StateError
from conveyor.primitives._batch_types import BatcherStats, Entry, Handler, Overflow
from conveyor.retry import RetryPolicy

T = TypeVar("T")
R = TypeVar("R")

NEW, OPEN, CLOSING, CLOSED = "new", "open", "closing", "closed"


class Engine(abc.ABC, Generic[T, R]):
    """Flush rules, handler calls and lifecycle; subclasses supply the waiting queue."""

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
        name: str | None = None,
    ) -> None:
        kind = type(self).__name__
        name = name or self._default_name
        for label, value in (
            ("max_size", max_size),
            ("capacity", capacity),
            ("max_concurrency", max_concurrency),
        ):
            if value < 1:
                raise ConfigError(f"{kind} {name!r}: {label} must be >= 1, got {value}")
        if max_wait < 0:
            raise ConfigError(f"{kind} {name!r}: max_wait must be >= 0 seconds, got {max_wait}")
        if overflow not in get_args(Overflow):
            raise ConfigError(
                f"{kind} {name!r}: overflow must be one of {get_args(Overflow)}, got {overflow!r}"
            )
        self._label = f"{kind} {name!r}"
        self._handler = handler
        self._max_size = max_size
        self._max_wait = max_wait
        self._capacity = capacity
        self._overflow = overflow
        self._max_concurrency = max_concurrency
        self._retry = retry
        self._clock: Clock = clock or SystemClock()
        self._name = name

        self._again: deque[Entry[T, R]] = deque()  # due retries, flushed before new items
        self._delayed: list[tuple[float, int, Entry[T, R]]] = []  # retries in backoff
        self._running: dict[int, list[Entry[T, R]]] = {}
        self._seq = itertools.count()
        self._space: deque[asyncio.Future[None]] = deque()  # `block` submitters
        # The flusher parks on `_wake`; a submit wakes it once `_wake_at` items are ready,
        # so a flusher waiting for a free slot or a timer is not woken once per item.
        self._wake: asyncio.Future[None] | None = None
        self._wake_at = sys.maxsize
        self._forced = 0  # ready items that `flush()` wants out without waiting
        self._state = NEW
        self._tg: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

        self._submitted = self._completed = self._failed = self._retried = 0
        self._dropped = self._cancelled = self._batches = self._batched_items = 0
        self._max_batch = 0
        self._max_waited = 0.0

        # -- the waiting queue: subclass hooks ---------------------------------------------
        self._init_fresh()

    _default_name = "batcher"

    @abc.abstractmethod
    def _init_fresh(self) -> None:
        """Create the structures that hold new items (called at the end of `__init__`)."""

    @abc.abstractmethod
    def _fresh_ready(self) -> int:
        """New items that may join the next batch now."""

    @abc.abstractmethod
    def _fresh_since(self) -> float:
        """When the longest-waiting ready new item started waiting (one exists)."""

    @abc.abstractmethod
    def _take_fresh(self, k: int) -> list[Entry[T, R]]:
        """Remove and return up to `k` ready new items, in flush order."""

    @abc.abstractmethod
    def _fresh_entries(self) -> list[Entry[T, R]]:
        """Every new item waiting, ready or not."""

    @abc.abstractmethod
    def _clear_fresh(self) -> None:
        """Forget every new item waiting (their futures are failed by the caller)."""

    @abc.abstractmethod
    def _depth(self) -> int:
        """New items waiting, ready or not (bounded by `capacity`)."""

    def _make_ready(self, now: float) -> float | None:
        """Mark items whose not-before time passed ready; return the next such time."""
        return None

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is not NEW:
            raise StateError(f"{self._label} is {self._state}; it can be entered once")
        self._loop = asyncio.get_running_loop()
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        self._state = OPEN
        self._runner = tg.create_task(self._run(), name=f"{self._name}-flusher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg = self._tg
        assert tg is not None, "entered batchers always have a task group"
        if exc_type is not None and not issubclass(exc_type, Exception):
            self._abort()  # cancelled or interrupted: don't drain, fail what is left
            await tg.__aexit__(exc_type, exc, tb)
            return
        try:
            await self.aclose()
        except BaseException as err:
            # Cancelled while draining: fail what is left rather than leave callers hanging.
            self._abort()
            await tg.__aexit__(type(err), err, err.__traceback__)
            raise
        # Drained: the body's own exception (if any) propagates as is, not in a group.
        await tg.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Stop accepting items, then flush and finish every accepted one.

        Later submits raise `ClosedError`, and so do submitters still blocked on a full
        queue (their items were never accepted). Pending retries are still attempted, after
        their backoff, and items held by a not-before time (`PriorityBatcher`) are flushed
        when that time comes. Safe to call more than once.
        """
        if self._state is NEW:
            self._state = CLOSED
            return
        if self._state is OPEN:
            self._state = CLOSING
            self._wake_space(len(self._space))
            self._notify()
        if self._runner is not None and not self._runner.done():
            # asyncio.wait, not `await runner`: cancelling aclose must not cancel the flusher.
            await asyncio.wait([self._runner])
        self._state = CLOSED

    def _abort(self) -> None:
        """Fail every waiting item with ClosedError; the task group cancels the rest."""
        self._state = CLOSED
        err = ClosedError(f"{self._label} was cancelled before this item was flushed")
        waiting = [*self._fresh_entries(), *self._again, *(e for _, _, e in self._delayed)]
        self._clear_fresh()
        self._again.clear()
        self._delayed.clear()
        for entry in waiting:
            if not entry[1].done():
                entry[1].set_exception(err)
        self._wake_space(len(self._space))

    def _not_open(self) -> Exception:
        if self._state is NEW:
            return StateError(f"{self._label} is not running: use `async with` before submitting")
        return ClosedError(f"{self._label} is closed; it accepts no more items")

    # -- room in the queue (`block` policy) --------------------------------------------

    async def _room(self) -> None:
        """Wait until the queue has room for one more item."""
        while self._depth() >= self._capacity:
            if self._state is not OPEN:
                raise self._not_open()
            assert self._loop is not None
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._space.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_space(1)  # we were given room we won't use: pass it on
                elif waiter in self._space:  # a wake-up may have skipped past it already
                    self._space.remove(waiter)
                raise
        if self._state is not OPEN:
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
        Items in retry backoff are included and keep their backoff; items whose not-before
        time has not come (priority batchers) are not flushed early but are waited for.
        """
        if self._state is NEW:
            raise self._not_open()
        futs = [e[1] for e in self._fresh_entries()]
        futs += [e[1] for e in self._again]
        futs += [e[1] for _, _, e in self._delayed]
        for batch in self._running.values():
            futs += [e[1] for e in batch]
        self._forced = self._fresh_ready() + len(self._again)
        self._notify()
        pending = [f for f in futs if not f.done()]
        if pending:
            await asyncio.wait(pending)

    def _notify(self) -> None:
        self._wake_at = sys.maxsize
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _run(self) -> None:
        clock = self._clock
        while True:
            now = clock.monotonic()
            next_ready = self._make_ready(now)
            delayed = self._delayed
            while delayed and delayed[0][0] <= now:
                due_at, _, (item, fut, attempts, _) = heapq.heappop(delayed)
                self._again.append((item, fut, attempts, due_at))
            fresh = self._fresh_ready()
            ready = fresh + len(self._again)
            due = False
            since = 0.0
            if ready:
                since = self._fresh_since() if fresh else self._again[0][3]
                if fresh and self._again:
                    since = min(since, self._again[0][3])
                due = (
                    ready >= self._max_size
                    or self._forced > 0
                    or self._state is not OPEN
                    or now >= since + self._max_wait
                )
            if due and len(self._running) < self._max_concurrency:
                self._launch(now, since)
                continue
            idle = not (ready or delayed or self._running)
            if self._state is CLOSING and idle and next_ready is None:
                return
            deadline: float | None = None
            wake_at = sys.maxsize  # due but no free slot: only a finished batch wakes us
            if not due:
                times = [] if next_ready is None else [next_ready]
                if delayed:
                    times.append(delayed[0][0])
                if ready:
                    times.append(since + self._max_wait)
                    wake_at = max(1, self._max_size - len(self._again))
                else:
                    wake_at = 1
                deadline = min(times) if times else None
            await self._park(deadline, wake_at)

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
        n = self._max_size
        batch: list[Entry[T, R]] = []
        again = self._again
        while again and len(batch) < n:
            entry = again.popleft()
            if not entry[1].done():
                batch.append(entry)
        k = min(n - len(batch), self._fresh_ready())
        if k > 0:
            fresh = self._take_fresh(k)
            kept = [e for e in fresh if not e[1].done()]  # skip callers who gave up
            self._cancelled += len(fresh) - len(kept)
            batch += kept
            if self._space:
                self._wake_space(len(fresh))
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

    async def _flush_batch(self, key: int, batch: list[Entry[T, R]]) -> None:
        try:
            try:
                results = await self._handler([e[0] for e in batch])
            except Exception as exc:
                self._settle(batch, [exc] * len(batch))
            else:
                if len(results) == len(batch):
                    self._settle(batch, results)
                else:
                    err = ConveyorError(
                        f"{self._label}: handler returned {len(results)} results for a batch "
                        f"of {len(batch)} items; it must return exactly one result or "
                        "exception per item, in order"
                    )
                    self._settle(batch, [err] * len(batch))
        except BaseException:
            # Cancelled (the batcher is aborting): every item still gets an answer.
            err = ClosedError(f"{self._label} was cancelled while this item's batch ran")
            for entry in batch:
                if not entry[1].done():
                    entry[1].set_exception(err)
            raise
        finally:
            del self._running[key]
            self._notify()

    def _settle(self, batch: list[Entry[T, R]], results: Sequence[R | BaseException]) -> None:
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

    def _fail(self, entry: Entry[T, R], exc: BaseException) -> None:
        item, fut, attempts, _ = entry
        retry = self._retry
        if fut.done():
            self._failed += 1
            return
        if retry is not None and retry.should_retry(exc, attempts + 1):
            self._retried += 1
            due_at = self._clock.monotonic() + retry.backoff(attempts + 1, exc)
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
            queue_depth=self._depth(),
            retry_pending=len(self._delayed) + len(self._again),
            in_flight=len(self._running),
        )

    @property
    def name(self) -> str:
        """The name given at construction."""
        return self._name
