"""Tests of PriorityBatcher: priority order, not-before times, overflow shedding."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from conveyor.clock import FakeClock
from conveyor.errors import Dropped, QueueFull
from conveyor.primitives import PriorityBatcher

from .helpers import advance, spin


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=100.0)


def recorder(calls: list[list[str]]):  # type: ignore[no-untyped-def]
    async def handle(items: Sequence[str]) -> list[str | BaseException]:
        calls.append(list(items))
        return [i.upper() for i in items]

    return handle


async def test_higher_priority_leaves_first_then_submission_order(clock: FakeClock) -> None:
    calls: list[list[str]] = []
    async with PriorityBatcher(recorder(calls), max_size=3, max_wait=1, clock=clock) as b:
        futs = [
            b.submit_nowait("low", priority=-1),
            b.submit_nowait("mid-a"),
            b.submit_nowait("high", priority=5),
        ]
        await spin()  # three waiting = max_size: flushed in priority order
        futs += [b.submit_nowait("mid-b"), b.submit_nowait("top", priority=9)]
        await advance(clock, 1)
        assert await asyncio.gather(*futs) == ["LOW", "MID-A", "HIGH", "MID-B", "TOP"]
    assert calls == [["high", "mid-a", "low"], ["top", "mid-b"]]


async def test_not_before_holds_an_item_until_its_time(clock: FakeClock) -> None:
    calls: list[list[str]] = []
    async with PriorityBatcher(recorder(calls), clock=clock) as b:
        later = b.submit_nowait("later", not_before=clock.now() + 10, priority=99)
        now = b.submit_nowait("now")
        assert await now == "NOW"
        await advance(clock, 9.5)
        assert not later.done()
        assert b.stats().queue_depth == 1
        await advance(clock, 0.5)
        assert await later == "LATER"
    assert calls == [["now"], ["later"]]


async def test_not_before_in_the_past_is_ready_at_once(clock: FakeClock) -> None:
    async with PriorityBatcher(recorder([]), clock=clock) as b:
        assert await b.submit("x", not_before=clock.now() - 5) == "X"


async def test_aclose_waits_for_held_items(clock: FakeClock) -> None:
    async with PriorityBatcher(recorder([]), clock=clock) as b:
        held = b.submit_nowait("held", not_before=clock.now() + 3)
        closing = asyncio.ensure_future(b.aclose())
        await spin()
        assert not closing.done()
        await advance(clock, 3)
        await closing
        assert await held == "HELD"


async def test_drop_oldest_sheds_the_lowest_priority_item(clock: FakeClock) -> None:
    gate = asyncio.Event()

    async def handler(items: Sequence[str]) -> list[str | BaseException]:
        await gate.wait()
        return list(items)

    async with PriorityBatcher(
        handler, max_size=1, capacity=3, overflow="drop_oldest", clock=clock
    ) as b:
        busy = b.submit_nowait("busy")
        await spin()
        keep_a = b.submit_nowait("a", priority=1)
        shed = b.submit_nowait("b", priority=0)
        keep_c = b.submit_nowait("c", priority=0, not_before=clock.now() + 1)
        keep_d = b.submit_nowait("d", priority=2)  # full: "b" is the least, oldest item
        with pytest.raises(Dropped):
            await shed
        gate.set()
        await advance(clock, 1)
        assert await asyncio.gather(busy, keep_a, keep_c, keep_d) == ["busy", "a", "c", "d"]


async def test_reject_and_block_count_held_items(clock: FakeClock) -> None:
    async with PriorityBatcher(recorder([]), capacity=1, overflow="reject", clock=clock) as b:
        held = b.submit_nowait("held", not_before=clock.now() + 1)
        with pytest.raises(QueueFull):
            b.submit_nowait("more")
        await advance(clock, 1)
        assert await held == "HELD"
    async with PriorityBatcher(recorder([]), capacity=1, clock=clock) as b:
        held = b.submit_nowait("held", not_before=clock.now() + 1)
        blocked = asyncio.ensure_future(b.submit("more", priority=3))
        await spin()
        assert not blocked.done()
        await advance(clock, 1)
        assert await asyncio.gather(held, blocked) == ["HELD", "MORE"]


async def test_max_wait_counts_from_when_an_item_became_ready(clock: FakeClock) -> None:
    calls: list[list[str]] = []
    async with PriorityBatcher(recorder(calls), max_size=10, max_wait=2, clock=clock) as b:
        b.submit_nowait("held", not_before=clock.now() + 5)
        await advance(clock, 5)
        assert calls == []  # ready at t+5; its max_wait runs until t+7
        await advance(clock, 2)
        assert calls == [["held"]]
        assert b.stats().max_wait_observed == pytest.approx(2)
