"""CircuitBreaker: stop calling a dependency that keeps failing, then probe it, in-process.

For calls that are not jobs (an HTTP API, a database). States: *closed* (calls go through,
outcomes are counted over a sliding window), *open* (calls fail fast with `CircuitOpen`
for the cooldown), *half-open* (one probe call at a time; its success closes the circuit,
its failure opens it again). Configured with `conveyor.flow.Circuit`, the same type the
store-side circuit of a task takes.

Example:
    breaker = CircuitBreaker(Circuit(failure_rate=0.5, window=30, cooldown=60), name="crm")

    async with breaker:                      # raises CircuitOpen while open
        await crm.push(contact)

    await breaker.call(crm.push, contact)    # the same, as a call

    @breaker                                 # the same, as a decorator
    async def push(contact: Contact) -> None: ...
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, ParamSpec, TypeVar

from conveyor.clock import Clock, SystemClock
from conveyor.errors import CircuitOpen, ConfigError
from conveyor.flow import Circuit

__all__ = ["Circuit", "CircuitBreaker", "CircuitOpen", "CircuitStats"]

P = ParamSpec("P")
R = TypeVar("R")

CircuitState = Literal["closed", "open", "half-open"]

# The window is kept as this many buckets of counts, so memory stays bounded whatever the
# call rate; an outcome leaves the window between (1 - 1/_BUCKETS) and 1 window after it.
_BUCKETS = 20

# What a call was admitted under: the circuit's generation (it grows at every change of
# state, so a call that started before the change does not count after it) and whether
# it is the half-open probe.
_Ticket = tuple[int, bool]


@dataclass(frozen=True, slots=True)
class CircuitStats:
    """A snapshot of a CircuitBreaker.

    Attributes:
        state: ``"closed"``, ``"open"`` or ``"half-open"``.
        calls: calls counted in the current window (closed state).
        failures: of those, the failures.
        remaining: seconds the circuit stays open (0 unless open).
        opened: how many times the circuit has opened.
        rejected: calls refused with `CircuitOpen`.
    """

    state: CircuitState
    calls: int
    failures: int
    remaining: float
    opened: int
    rejected: int


class CircuitBreaker:
    """A circuit breaker for one dependency, shared by the tasks of one event loop.

    Args:
        circuit: when to open and for how long (`conveyor.flow.Circuit`).
        name: shown in `CircuitOpen` messages and carried on the error.
        failures: the exception types that count as failures (default: every `Exception`).
            Others pass through and count as successes: the dependency answered. A
            cancelled call counts as neither.
        clock: time source (inject `FakeClock` in tests).

    Every state change happens between awaits, so no lock is needed on one event loop; it
    is not meant to be shared across threads.

    Example:
        breaker = CircuitBreaker(Circuit(0.5, window=10, cooldown=30), failures=(HTTPError,))
        try:
            async with breaker:
                await client.get(url)
        except CircuitOpen as exc:
            log.warning("crm down, retrying in %.0f s", exc.remaining)
    """

    def __init__(
        self,
        circuit: Circuit,
        *,
        name: str | None = None,
        failures: tuple[type[BaseException], ...] = (Exception,),
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(circuit, Circuit):
            raise ConfigError(
                "CircuitBreaker takes a conveyor.flow.Circuit, e.g. "
                f"Circuit(failure_rate=0.5, window=30, cooldown=60); got {circuit!r}"
            )
        if not isinstance(failures, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in failures
        ):
            raise ConfigError(
                f"CircuitBreaker failures must be a tuple of exception types, got {failures!r}"
            )
        self.circuit = circuit
        self.name = name
        self._failures = failures
        self._clock: Clock = clock or SystemClock()
        self._width = circuit.window / _BUCKETS
        self._buckets: deque[list[int]] = deque()  # [index, calls, failures], oldest first
        self._calls = 0
        self._failed = 0
        self._state: CircuitState = "closed"
        self._generation = 0
        self._open_until = 0.0
        self._probing = False
        self._why = ""
        self._opened = 0
        self._rejected = 0
        self._held: dict[asyncio.Task[object], list[_Ticket]] = {}

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The state now (an open circuit whose cooldown has passed reads half-open)."""
        if self._state == "open" and self._clock.monotonic() >= self._open_until:
            self._change("half-open")
        return self._state

    def statistics(self) -> CircuitStats:
        """Return a snapshot of the breaker's state and counts."""
        state = self.state
        if state == "closed":
            self._prune(self._clock.monotonic())
        remaining = max(0.0, self._open_until - self._clock.monotonic()) if state == "open" else 0
        return CircuitStats(
            state=state,
            calls=self._calls,
            failures=self._failed,
            remaining=remaining,
            opened=self._opened,
            rejected=self._rejected,
        )

    def trip(self) -> None:
        """Open the circuit now, for a full cooldown (e.g. the dependency announced downtime)."""
        self._open(self._clock.monotonic(), "it was opened by hand")

    def reset(self) -> None:
        """Close the circuit now and forget the window's counts."""
        self._change("closed")

    # -- the three ways in -----------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` through the breaker and return its result.

        Raises:
            CircuitOpen: the circuit is open (or half-open with its probe in flight); `fn`
                was not called.
        """
        ticket = self._admit()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._settle(ticket, exc)
            raise
        self._settle(ticket, None)
        return result

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """Decorate an async function so that every call goes through the breaker."""
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(
                f"@CircuitBreaker decorates async functions; {fn!r} is not one "
                "(wrap the blocking call in asyncio.to_thread inside an async function)"
            )

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return await self.call(fn, *args, **kwargs)

        return guarded

    async def __aenter__(self) -> None:
        ticket = self._admit()
        task = asyncio.current_task()
        assert task is not None  # `async with` runs inside a task
        self._held.setdefault(task, []).append(ticket)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        tickets = self._held[task]
        ticket = tickets.pop()
        if not tickets:
            del self._held[task]
        self._settle(ticket, exc)

    # -- the machine -----------------------------------------------------------------------

    def _admit(self) -> _Ticket:
        state = self.state
        if state == "closed":
            return (self._generation, False)
        if state == "open":
            remaining = self._open_until - self._clock.monotonic()
            self._rejected += 1
            raise CircuitOpen(
                f"{self._label()} is open for another {remaining:.1f} s because {self._why}; "
                "calls fail fast until then, then one probe call is let through",
                name=self.name,
                remaining=remaining,
            )
        if self._probing:
            self._rejected += 1
            raise CircuitOpen(
                f"{self._label()} is half-open and its one probe call is still running; "
                "calls fail fast until it succeeds",
                name=self.name,
                remaining=0.0,
            )
        self._probing = True
        return (self._generation, True)

    def _settle(self, ticket: _Ticket, exc: BaseException | None) -> None:
        generation, probe = ticket
        if probe and generation == self._generation:
            self._probing = False
        if generation != self._generation:
            return  # admitted before the last change of state: its outcome is stale
        if exc is not None and not isinstance(exc, Exception):
            return  # cancelled (or the process is exiting): neither success nor failure
        failed = exc is not None and isinstance(exc, self._failures)
        now = self._clock.monotonic()
        if probe:
            if failed:
                self._open(now, f"the probe call failed ({type(exc).__name__})")
            else:
                self._change("closed")
            return
        self._count(now, failed)
        # A small tolerance so 3 of 10 reaches a rate of 0.3 (0.3 * 10 is 3.0000000000000004).
        reached = self._failed >= self.circuit.failure_rate * self._calls - 1e-9
        if failed and self._calls >= self.circuit.min_calls and reached:
            self._open(
                now,
                f"{self._failed} of the last {self._calls} calls failed within "
                f"{self.circuit.window:g} s (limit {self.circuit.failure_rate:.0%})",
            )

    def _count(self, now: float, failed: bool) -> None:
        index = math.floor(now / self._width)
        self._prune(now)
        if self._buckets and self._buckets[-1][0] == index:
            bucket = self._buckets[-1]
        else:
            bucket = [index, 0, 0]
            self._buckets.append(bucket)
        bucket[1] += 1
        self._calls += 1
        if failed:
            bucket[2] += 1
            self._failed += 1

    def _prune(self, now: float) -> None:
        oldest = math.floor(now / self._width) - _BUCKETS + 1
        while self._buckets and self._buckets[0][0] < oldest:
            _, calls, failed = self._buckets.popleft()
            self._calls -= calls
            self._failed -= failed

    def _open(self, now: float, why: str) -> None:
        self._change("open")
        self._open_until = now + self.circuit.cooldown
        self._why = why
        self._opened += 1

    def _change(self, state: CircuitState) -> None:
        self._state = state
        self._generation += 1
        self._probing = False
        self._buckets.clear()
        self._calls = self._failed = 0

    def _label(self) -> str:
        return f"circuit {self.name!r}" if self.name else "circuit"

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name or ''} {self.state}>".replace("  ", " ")
