"""Tests of RateLimiter (local and through Counters) and CapacityLimiter."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.clock import FakeClock
from conveyor.primitives import CapacityLimiter, RateLimiter

from .helpers import advance, spin


class MemoryCounters:
    """An in-test implementation of the Counters protocol (fixed-window counters)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.values: dict[str, tuple[int, float]] = {}
        self.calls = 0

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        self.calls += 1
        value, expires = self.values.get(key, (0, self.clock.now() + ttl))
        if expires <= self.clock.now():
            value, expires = 0, self.clock.now() + ttl
        self.values[key] = (value + amount, expires)
        return value + amount


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, "rate must be > 0"),
        ({"rate": 1, "burst": 0}, "burst must be >= 1"),
        ({"rate": 1, "window": 0}, "window must be > 0"),
        ({"rate": 1, "key": "k"}, "both `counters` and `key`"),
    ],
)
def test_bad_rate_limiter_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


async def test_bucket_allows_a_burst_then_refills_at_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    assert [await limiter.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    clock.advance(0.1)  # one token back
    assert await limiter.try_acquire()
    assert not await limiter.try_acquire()
    clock.advance(10)  # refills to burst, not beyond
    assert await limiter.try_acquire(5)
    assert not await limiter.try_acquire()


async def test_acquire_waits_exactly_for_missing_tokens(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=4, burst=2, clock=clock)
    await limiter.acquire(2)
    waiting = asyncio.ensure_future(limiter.acquire(2))
    await advance(clock, 0.25)
    assert not waiting.done()
    await advance(clock, 0.25)
    await waiting


async def test_waiters_are_served_in_order_and_block_try_acquire(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1, burst=1, clock=clock)
    await limiter.acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    tasks = [asyncio.ensure_future(take(i)) for i in range(3)]
    await spin()
    assert not await limiter.try_acquire()  # others are waiting: no cutting in
    for _ in range(3):
        await advance(clock, 1)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


async def test_n_outside_capacity_is_refused(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=10, burst=3, clock=clock)
    with pytest.raises(ValueError, match=r"within \[1, 3\]"):
        await limiter.acquire(4)
    with pytest.raises(ValueError):
        await limiter.try_acquire(0)


async def test_distributed_limit_is_shared_through_counters(clock: FakeClock) -> None:
    counters = MemoryCounters(clock)
    a = RateLimiter(rate=3, counters=counters, key="smtp", clock=clock)
    b = RateLimiter(rate=3, counters=counters, key="smtp", clock=clock)
    other = RateLimiter(rate=3, counters=counters, key="other", clock=clock)
    assert [await a.try_acquire(), await b.try_acquire(), await a.try_acquire()] == [True] * 3
    assert not await b.try_acquire()  # the window's 3 are used, whichever process took them
    assert await other.try_acquire()  # another key, another limit
    waiting = asyncio.ensure_future(b.acquire())
    await spin()
    assert not waiting.done()
    await advance(clock, 1)  # next window
    await waiting
    assert counters.values["smtp:1000"][0] == 3  # refused attempts gave their units back


async def test_capacity_limiter_bounds_holders() -> None:
    limiter = CapacityLimiter(2)
    running = 0
    peak = 0

    async def work() -> None:
        nonlocal running, peak
        async with limiter:
            running += 1
            peak = max(peak, running)
            await spin(3)
            running -= 1

    async with asyncio.TaskGroup() as tg:
        for _ in range(10):
            tg.create_task(work())
        await spin(2)
        stats = limiter.statistics()
        assert (stats.borrowed_tokens, stats.total_tokens, stats.tasks_waiting) == (2, 2, 8)
    assert peak == 2
    assert limiter.available_tokens == 2


async def test_capacity_limiter_cancelled_waiter_passes_its_token_on() -> None:
    limiter = CapacityLimiter(1)
    await limiter.acquire()
    first = asyncio.ensure_future(limiter.acquire())
    second = asyncio.ensure_future(limiter.acquire())
    await spin()
    limiter.release()  # hands the token to `first`...
    first.cancel()  # ...which is cancelled before it runs
    await second
    assert first.cancelled()
    assert limiter.statistics().borrowed_tokens == 1
    assert not limiter.try_acquire()
    limiter.release()
    assert limiter.try_acquire()


def test_capacity_limiter_misuse() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        CapacityLimiter(0)
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        CapacityLimiter(1).release()
