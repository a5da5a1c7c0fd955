"""Small helpers shared by the primitives tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from conveyor.clock import FakeClock


async def spin(times: int = 20) -> None:
    """Let every ready task run a few steps (FakeClock wake-ups hop through call_soon)."""
    for _ in range(times):
        await asyncio.sleep(0)


async def advance(clock: FakeClock, seconds: float) -> None:
    """Let pending timers register, move the fake clock, and let woken tasks run."""
    await spin()
    clock.advance(seconds)
    await spin()


def echo_handler(
    calls: list[list[int]],
) -> Callable[[Sequence[int]], Awaitable[list[int | BaseException]]]:
    """A handler that records each batch and returns every item doubled."""

    async def handle(items: Sequence[int]) -> list[int | BaseException]:
        calls.append(list(items))
        return [i * 2 for i in items]

    return handle
