"""A private event loop on a daemon thread, so synchronous code can call async code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import TypeVar

from conveyor.errors import ClosedError, ConfigError

__all__ = ["Portal"]

T = TypeVar("T")


class Portal:
    """Runs coroutines from synchronous code on a loop of its own (started on first use).

    Example:
        portal = Portal()
        jobs = portal.call(backend.get(["id"]))
        portal.close()
    """

    def __init__(self, name: str = "conveyor-portal") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise ClosedError("the portal is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def call(self, coro: Coroutine[object, object, T], timeout: float | None = None) -> T:
        """Run `coro` on the portal's loop and return its result (or raise its error)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise ConfigError(
                "a synchronous Conveyor call (enqueue_sync, result_sync, ...) was made from "
                "inside a running event loop; use the async form instead (await ...enqueue())"
            )
        loop = self._start()
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def submit(self, coro: Coroutine[object, object, T]) -> concurrent.futures.Future[T]:
        """Start `coro` on the portal's loop and return at once: a future of its result (for
        work that outlives one call, such as a held lock and its renewals)."""
        return asyncio.run_coroutine_threadsafe(coro, self._start())

    def close(self) -> None:
        """Stop the loop and join its thread. Idempotent."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()
