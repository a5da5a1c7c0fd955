"""Pipeline: stages (map, flat_map, batch, limit) joined by bounded channels, one task group.

Example:
    pipeline = (
        Pipeline(urls)
        .map(fetch, concurrency=8)
        .batch(100, wait=0.05)
        .map(store_many)
    )
    async with pipeline.stream() as results:
        async for stored in results:
            print(stored)
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
)
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeAlias, TypeVar

from conveyor.clock import Clock, SystemClock
from conveyor.errors import ClosedError, ConfigError
from conveyor.primitives.channel import Channel
from conveyor.primitives.limiter import CapacityLimiter, RateLimiter

__all__ = ["Pipeline"]

T = TypeVar("T")
U = TypeVar("U")

# Stages are wired at run time, when item types are erased; the public methods keep them.
_Stage: TypeAlias = Callable[[Channel[Any], Channel[Any]], Coroutine[Any, Any, None]]


class Pipeline(Generic[T]):
    """A chain of concurrent stages over a source, run inside one task group.

    Each method returns a new pipeline with one more stage; nothing runs until `stream()`
    (or `collect()`). Stages are joined by channels of `buffer` items, so a slow stage
    slows the ones before it instead of piling items up. The first error in any stage, or
    cancelling the consumer, stops every stage; the error propagates as itself (not in an
    exception group) and no task outlives `stream()`.

    Iterating a pipeline directly (``async for x in pipeline``) is deliberately not offered:
    an abandoned async generator is finalised later, in another task, where its task group
    can't be exited cleanly. `stream()` scopes the tasks to an ``async with`` block.

    Args:
        source: any iterable or async iterable.
        buffer: capacity of the channel after each stage (>= 1).
        clock: time source for `batch` waits and `limit` stages (inject `FakeClock` in
            tests).

    Example:
        totals = await Pipeline(range(10)).map(square, concurrency=4).collect()
    """

    def __init__(
        self,
        source: Iterable[T] | AsyncIterable[T],
        *,
        buffer: int = 16,
        clock: Clock | None = None,
    ) -> None:
        if buffer < 1:
            raise ConfigError(f"Pipeline buffer must be >= 1, got {buffer}")
        self._source: Iterable[Any] | AsyncIterable[Any] = source
        self._buffer = buffer
        self._clock = clock
        self._stages: tuple[_Stage, ...] = ()

    def _then(self, stage: _Stage) -> Pipeline[Any]:
        longer: Pipeline[Any] = Pipeline(self._source, buffer=self._buffer, clock=self._clock)
        longer._stages = (*self._stages, stage)
        return longer

    def map(
        self, fn: Callable[[T], Awaitable[U]], *, concurrency: int = 1, ordered: bool = True
    ) -> Pipeline[U]:
        """Apply `fn` to each item, up to `concurrency` at once.

        With `ordered` (the default) results keep the input order; otherwise they leave as
        they finish.
        """
        _check("concurrency", concurrency)

        async def one(x: Any) -> list[Any]:
            return [await fn(x)]

        return self._then(_mapper(one, concurrency, ordered))

    def flat_map(
        self,
        fn: Callable[[T], Awaitable[Iterable[U]]],
        *,
        concurrency: int = 1,
        ordered: bool = True,
    ) -> Pipeline[U]:
        """Apply `fn` to each item and pass on every element of what it returns."""
        _check("concurrency", concurrency)

        async def many(x: Any) -> Iterable[Any]:
            return await fn(x)

        return self._then(_mapper(many, concurrency, ordered))

    def batch(self, size: int, wait: float = 0.0) -> Pipeline[list[T]]:
        """Group items into lists of up to `size`.

        A list leaves when full, `wait` seconds (on the pipeline's clock) after its first
        item arrived, or when the input ends. `wait=0` passes on whatever is ready at once.
        """
        _check("size", size)
        if wait < 0:
            raise ConfigError(f"Pipeline.batch wait must be >= 0 seconds, got {wait}")
        clock = self._clock or SystemClock()

        async def stage(inp: Channel[Any], out: Channel[Any]) -> None:
            async with asyncio.TaskGroup() as tg:  # scopes each batch's timer
                while True:
                    try:
                        items = [await inp.receive()]
                    except ClosedError:
                        break
                    await _fill(items, size, inp, clock, clock.monotonic() + wait, tg)
                    await out.send(items)
            out.close()

        return self._then(stage)

    def limit(self, rate: float, burst: int = 1) -> Pipeline[T]:
        """Pass on at most `rate` items per second (token bucket of `burst`)."""
        limiter = RateLimiter(rate, burst, clock=self._clock)

        async def stage(inp: Channel[Any], out: Channel[Any]) -> None:
            async for x in inp:
                await limiter.acquire()
                await out.send(x)
            out.close()

        return self._then(stage)

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[AsyncIterator[T]]:
        """Run the pipeline; the block iterates its output. Leaving stops every stage.

        Example:
            async with Pipeline(jobs).map(run, concurrency=4).stream() as outcomes:
                async for outcome in outcomes:
                    record(outcome)
        """
        try:
            async with asyncio.TaskGroup() as tg:
                channels = [Channel[Any](self._buffer) for _ in range(len(self._stages) + 1)]
                tasks = [tg.create_task(_feed(self._source, channels[0]))]
                for i, stage in enumerate(self._stages):
                    tasks.append(tg.create_task(stage(channels[i], channels[i + 1])))
                try:
                    yield aiter(channels[-1])
                finally:
                    for task in tasks:  # the consumer left early: stop what still runs
                        task.cancel()
        except BaseExceptionGroup as group:
            raise _first(group) from None

    async def collect(self) -> list[T]:
        """Run the pipeline to the end and return its output as a list."""
        async with self.stream() as out:
            return [x async for x in out]


def _check(label: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"Pipeline {label} must be >= 1, got {value}")


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of a group; cancellations only if nothing else failed."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    real = [e for e in leaves if not isinstance(e, asyncio.CancelledError)]
    return (real or leaves)[0]


class _End(enum.Enum):
    END = enum.auto()


async def _next(inp: Channel[Any]) -> Any:
    """The next item of `inp`, or `_End.END` once it is closed and drained."""
    try:
        return await inp.receive()
    except ClosedError:
        return _End.END


async def _fill(
    items: list[Any],
    size: int,
    inp: Channel[Any],
    clock: Clock,
    deadline: float,
    tg: asyncio.TaskGroup,
) -> None:
    """Add items from `inp` to `items` until it holds `size`, the input ends, or the clock's
    `monotonic()` reaches `deadline`."""
    alarm: asyncio.Task[None] | None = None
    try:
        while len(items) < size:
            try:
                items.append(inp.receive_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            except ClosedError:
                return
            if clock.monotonic() >= deadline:
                return
            if alarm is None:
                # Absolute deadline: a FakeClock advanced before this task ran fires at once.
                alarm = tg.create_task(clock.sleep(deadline - clock.monotonic()))
            receiving = tg.create_task(_next(inp))
            await asyncio.wait((receiving, alarm), return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():
                receiving.cancel()  # a cancelled receive never loses an item (see Channel)
                await asyncio.wait((receiving,))
            if receiving.cancelled():
                return  # the deadline passed first
            item = receiving.result()
            if item is _End.END:
                return
            items.append(item)
    finally:
        if alarm is not None:
            alarm.cancel()


async def _feed(source: Iterable[Any] | AsyncIterable[Any], out: Channel[Any]) -> None:
    if isinstance(source, AsyncIterable):
        async for x in source:
            await out.send(x)
    else:
        for x in source:
            await out.send(x)
    out.close()


def _mapper(
    fn: Callable[[Any], Coroutine[Any, Any, Iterable[Any]]], concurrency: int, ordered: bool
) -> _Stage:
    """A stage running `fn` on up to `concurrency` items at once, emitting its elements."""

    async def unordered(inp: Channel[Any], out: Channel[Any]) -> None:
        async def worker() -> None:
            async for x in inp:
                for y in await fn(x):
                    await out.send(y)

        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
        out.close()

    async def in_order(inp: Channel[Any], out: Channel[Any]) -> None:
        slots = CapacityLimiter(concurrency)
        # Tasks are queued in input order; the emitter awaits them in that order.
        started: Channel[asyncio.Task[Iterable[Any]]] = Channel(concurrency)

        async def emit() -> None:
            async for task in started:
                for y in await task:
                    await out.send(y)
                slots.release()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(emit())
            async for x in inp:
                await slots.acquire()
                await started.send(tg.create_task(fn(x)))
            started.close()
        out.close()

    return in_order if ordered and concurrency > 1 else unordered
