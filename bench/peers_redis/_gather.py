"""Bulk enqueue for async peers without a bulk API: `asyncio.gather`, 100 calls at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

WIDTH = 100


async def gather_n(n: int, call: Callable[[], Awaitable[Any]]) -> None:
    done = 0
    while done < n:
        k = min(WIDTH, n - done)
        await asyncio.gather(*(call() for _ in range(k)))
        done += k
