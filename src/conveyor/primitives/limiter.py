"""Limiters: a token-bucket RateLimiter (local or shared through Counters) and CapacityLimiter.

Example:
    limiter = RateLimiter(rate=100, burst=10)          # 100 per second, bursts of 10
    await limiter.acquire()

    slots = CapacityLimiter(8)                          # at most 8 at a time
    async with slots:
        await call_api()
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass
from types import TracebackType

from conveyor.capabilities import Counters
from conveyor.clock import Clock, SystemClock
from conveyor.errors import ConfigError, StateError

__all__ = ["CapacityLimiter", "CapacityStats", "Counters", "RateLimiter"]


class RateLimiter:
    """Lets through at most `rate` units per second, with bursts up to `burst`.

    Locally it is a token bucket: `burst` tokens refill at `rate` per second. Given
    `counters` and a `key`, it is shared by every process using the same key: a fixed
    window of `window` seconds (aligned on wall-clock time) admits ``rate * window``
    units, counted with `Counters.incr`; a refused attempt gives its units back.
    Waiters are served first come, first served.

    Args:
        rate: units per second (> 0).
        burst: bucket size (>= 1); defaults to ``max(1, ceil(rate))``. Local mode only.
        clock: time source (inject `FakeClock` in tests).
        counters: shared counters; with `key`, makes the limit distributed.
        key: the shared limit's name (required with `counters`).
        window: distributed window length in seconds (> 0).

    Example:
        limiter = RateLimiter(rate=50, counters=backend_counters, key="smtp")
        async def send(mail: Mail) -> None:
            await limiter.acquire()
            await smtp.send(mail)
    """

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        clock: Clock | None = None,
        counters: Counters | None = None,
        key: str | None = None,
        window: float = 1.0,
    ) -> None:
        if rate <= 0:
            raise ConfigError(f"RateLimiter rate must be > 0 per second, got {rate}")
        if burst is not None and burst < 1:
            raise ConfigError(f"RateLimiter burst must be >= 1, got {burst}")
        if window <= 0:
            raise ConfigError(f"RateLimiter window must be > 0 seconds, got {window}")
        if (counters is None) != (key is None):
            raise ConfigError("RateLimiter needs both `counters` and `key` to be distributed")
        self._rate = rate
        self._burst = burst if burst is not None else max(1, math.ceil(rate))
        self._clock: Clock = clock or SystemClock()
        self._counters = counters
        self._key = key
        self._window = window
        self._per_window = max(1, math.floor(rate * window))
        self._tokens = float(self._burst)
        self._stamp = self._clock.monotonic()
        self._turn = asyncio.Lock()  # FIFO: waiters are served in arrival order

    @property
    def capacity(self) -> int:
        """The most units one call may take: `burst`, or the window's allowance."""
        return self._per_window if self._counters is not None else self._burst

    async def try_acquire(self, n: int = 1) -> bool:
        """Take `n` units if they are available now, without waiting.

        Returns False (taking nothing) when they are not, or when others are waiting.

        Raises:
            ConfigError: `n` is below 1 or above `capacity` (it could never succeed).
        """
        self._check(n)
        if self._turn.locked():
            return False
        return await self._attempt(n) == 0.0

    async def acquire(self, n: int = 1) -> None:
        """Take `n` units, waiting until they are available.

        Raises:
            ConfigError: `n` is below 1 or above `capacity` (it could never succeed).
        """
        self._check(n)
        async with self._turn:
            while (wait := await self._attempt(n)) > 0:
                await self._clock.sleep(wait)

    def _check(self, n: int) -> None:
        if not 1 <= n <= self.capacity:
            raise ConfigError(f"RateLimiter: n must be within [1, {self.capacity}], got {n}")

    async def _attempt(self, n: int) -> float:
        """Take `n` units now and return 0, or take nothing and return seconds to wait."""
        if self._counters is None:
            now = self._clock.monotonic()
            elapsed = max(0.0, now - self._stamp)
            self._tokens = min(float(self._burst), self._tokens + elapsed * self._rate)
            self._stamp = now
            if self._tokens >= n:
                self._tokens -= n
                return 0.0
            return (n - self._tokens) / self._rate
        assert self._key is not None
        now = self._clock.now()
        slot = math.floor(now / self._window)
        key = f"{self._key}:{slot}"
        # Keep the counter a little past its window so late readers still see it.
        ttl = self._window * 2
        if await self._counters.incr(key, n, ttl) <= self._per_window:
            return 0.0
        await self._counters.incr(key, -n, ttl)
        return max((slot + 1) * self._window - now, 1e-3)


@dataclass(frozen=True, slots=True)
class CapacityStats:
    """A snapshot of a CapacityLimiter.

    Attributes:
        borrowed_tokens: tokens held now.
        total_tokens: the limit.
        tasks_waiting: `acquire` calls waiting for a token.
    """

    borrowed_tokens: int
    total_tokens: int
    tasks_waiting: int


class CapacityLimiter:
    """At most `total_tokens` holders at once; the rest wait their turn, first come first served.

    Args:
        total_tokens: the limit (>= 1).

    Example:
        limiter = CapacityLimiter(4)
        async with limiter:
            await fetch(url)
    """

    def __init__(self, total_tokens: int) -> None:
        if total_tokens < 1:
            raise ConfigError(f"CapacityLimiter total_tokens must be >= 1, got {total_tokens}")
        self._total = total_tokens
        self._borrowed = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def total_tokens(self) -> int:
        """The limit."""
        return self._total

    @property
    def available_tokens(self) -> int:
        """Tokens free now."""
        return self._total - self._borrowed

    def try_acquire(self) -> bool:
        """Take a token if one is free and nobody is waiting; return whether it did."""
        if self._borrowed < self._total and not self._waiters:
            self._borrowed += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a token, waiting for one to be released."""
        if self.try_acquire():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # `release` hands its token straight to us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a token we won't use: give it back
            elif waiter in self._waiters:  # a release may have skipped past it already
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a token back (to the first waiter, if any).

        Raises:
            StateError: no token is borrowed.
        """
        if self._borrowed <= 0:
            raise StateError("CapacityLimiter.release() without a matching acquire()")
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the token passes on; borrowed count unchanged
                return
        self._borrowed -= 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def statistics(self) -> CapacityStats:
        """Return a snapshot of the limiter's state."""
        return CapacityStats(
            borrowed_tokens=self._borrowed,
            total_tokens=self._total,
            tasks_waiting=sum(1 for w in self._waiters if not w.done()),
        )
