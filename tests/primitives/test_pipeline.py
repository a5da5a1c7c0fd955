"""Tests of Pipeline: stages, ordering, concurrency, errors and cancellation stop everything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conveyor.clock import FakeClock
from conveyor.primitives import Pipeline

from .helpers import advance, spin


def leftover_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


async def test_map_from_a_plain_iterable_keeps_order() -> None:
    assert await Pipeline(range(5)).map(double).collect() == [0, 2, 4, 6, 8]


async def test_async_iterable_source_and_flat_map() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    async def repeat(x: int) -> list[int]:
        return [x] * x

    assert await Pipeline(numbers()).flat_map(repeat).collect() == [1, 2, 2]


async def test_ordered_map_keeps_input_order_at_full_concurrency() -> None:
    running = 0
    peak = 0

    async def slow_first(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(10 - x):  # earlier items finish later
            await asyncio.sleep(0)
        running -= 1
        return x

    out = await Pipeline(range(10)).map(slow_first, concurrency=4).collect()
    assert out == list(range(10))
    assert peak == 4


async def test_unordered_map_yields_as_items_finish() -> None:
    async def slow_first(x: int) -> int:
        for _ in range(10 - x):
            await asyncio.sleep(0)
        return x

    out = await Pipeline(range(4)).map(slow_first, concurrency=4, ordered=False).collect()
    assert sorted(out) == [0, 1, 2, 3]
    assert out != [0, 1, 2, 3]


async def test_batch_groups_by_size_and_flushes_the_rest_at_the_end() -> None:
    out = await Pipeline(range(7)).batch(3).collect()
    assert out == [[0, 1, 2], [3, 4, 5], [6]]


async def test_batch_waits_for_a_fuller_batch_then_gives_up() -> None:
    async def trickle() -> AsyncIterator[int]:
        yield 1
        yield 2
        await asyncio.sleep(0.05)  # longer than the batch wait
        yield 3

    out = await Pipeline(trickle()).batch(10, wait=0.01).collect()
    assert out == [[1, 2], [3]]


async def test_batch_waits_on_the_injected_clock() -> None:
    clock = FakeClock(start=0.0)
    source: asyncio.Queue[int | None] = asyncio.Queue()

    async def items() -> AsyncIterator[int]:
        while (x := await source.get()) is not None:
            yield x

    async with Pipeline(items(), clock=clock).batch(10, wait=5).stream() as out:
        first = asyncio.ensure_future(anext(out))
        source.put_nowait(1)
        source.put_nowait(2)
        await advance(clock, 4.9)  # real time passes too, but only the clock counts
        await asyncio.sleep(0.02)
        assert not first.done()
        source.put_nowait(3)
        await advance(clock, 0.1)
        assert await asyncio.wait_for(first, 1) == [1, 2, 3]  # not 5 s of real time
        second = asyncio.ensure_future(anext(out))
        source.put_nowait(4)
        source.put_nowait(None)  # the input ends: the partial batch leaves at once
        assert await second == [4]
    assert leftover_tasks() == set()


async def test_limit_paces_items_on_the_clock() -> None:
    clock = FakeClock(start=0.0)
    async with Pipeline(range(4), clock=clock).limit(2, burst=2).stream() as out:
        got = [await anext(out), await anext(out)]  # the burst
        third = asyncio.ensure_future(anext(out))
        await spin()
        assert not third.done()
        await advance(clock, 0.5)
        got.append(await third)
        await advance(clock, 0.5)
        got.append(await anext(out))
    assert got == [0, 1, 2, 3]


async def test_first_error_stops_every_stage_and_propagates_as_itself() -> None:
    async def fail_on_3(x: int) -> int:
        if x == 3:
            raise ValueError("bad item 3")
        return x

    async def forever() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    pipeline = Pipeline(forever()).map(fail_on_3, concurrency=2).batch(2).map(double_all)
    with pytest.raises(ValueError, match="bad item 3"):
        await pipeline.collect()
    assert leftover_tasks() == set()


async def double_all(xs: list[int]) -> list[int]:
    return [x * 2 for x in xs]


async def test_leaving_early_stops_every_stage() -> None:
    async with Pipeline(range(10**9)).map(double, concurrency=3).stream() as out:
        assert await anext(out) == 0
    assert leftover_tasks() == set()


async def test_cancelling_the_consumer_stops_every_stage() -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async with Pipeline(range(10**9)).map(double, concurrency=2).batch(5).stream() as out:
            async for _ in out:
                started.set()

    task = asyncio.ensure_future(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftover_tasks() == set()


async def test_error_in_the_consumer_body_propagates_as_itself() -> None:
    async def consume() -> None:
        async with Pipeline(range(100)).map(double).stream() as out:
            async for _ in out:
                raise KeyError("consumer broke")

    with pytest.raises(KeyError, match="consumer broke"):
        await consume()
    assert leftover_tasks() == set()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Pipeline(range(1), buffer=0), "buffer must be >= 1"),
        (lambda: Pipeline(range(1)).map(double, concurrency=0), "concurrency must be >= 1"),
        (lambda: Pipeline(range(1)).batch(0), "size must be >= 1"),
        (lambda: Pipeline(range(1)).batch(2, wait=-1), "wait must be >= 0"),
        (lambda: Pipeline(range(1)).limit(0), "rate must be > 0"),
    ],
)
def test_bad_stage_settings_are_refused(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]
