"""Time, injected: the only module that reads the wall clock.

Everything that decides by time (retry delays, leases, schedules, batch waits) takes a
`Clock`. `SystemClock` is the real one; `FakeClock` lets tests jump time instantly.

Example:
    clock = FakeClock(start=1_000.0)
    sleeper = asyncio.ensure_future(clock.sleep(5))
    clock.advance(5)          # the sleeper wakes without real waiting
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from typing import Protocol

from conveyor.errors import ConfigError

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """A source of time. `now()` is wall time (epoch seconds), `monotonic()` never goes back."""

    def now(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: `time.time`, `time.monotonic` and `asyncio.sleep`."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to, for instant time-based tests.

    `now()` and `monotonic()` advance together. `sleep()` waits until `advance()` moves time
    past its deadline; `sleep(0)` (or negative) yields once and returns. Safe to advance from
    another thread: sleepers are woken on their own event loop.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ConfigError(f"FakeClock.advance: seconds must be >= 0, got {seconds}")
        with self._lock:
            self._now += seconds
            due: list[asyncio.Future[None]] = []
            while self._sleepers and self._sleepers[0][0] <= self._now:
                due.append(heapq.heappop(self._sleepers)[2])
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for fut in due:
            loop = fut.get_loop()
            if loop is here:
                _resolve(fut)  # same loop: wake deterministically on its next turn
            else:
                loop.call_soon_threadsafe(_resolve, fut)

    def set(self, when: float) -> None:
        """Jump to the absolute time `when` (not earlier than now)."""
        self.advance(max(0.0, when - self._now))

    @property
    def sleepers(self) -> int:
        """How many coroutines are waiting in `sleep()` right now."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
