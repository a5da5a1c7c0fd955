"""In-process wake-ups for `Backend.wait`, safe across threads and event loops."""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["Wakeup"]


class Wakeup:
    """Waiters from any event loop; `notify()` from any thread wakes them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            with contextlib.suppress(RuntimeError):  # its loop is already closed
                fut.get_loop().call_soon_threadsafe(_wake, fut)

    async def wait(self, timeout: float) -> None:
        """Wait for the next `notify()` or until `timeout` seconds pass."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.add(fut)
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await fut
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(fut)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
