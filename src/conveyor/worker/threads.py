"""A thread pool for synchronous handlers whose threads never hold the process open.

`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit, so a sync
handler stuck in `time.sleep(3600)` would keep a stopped worker alive long after its grace
period — the job was already handed back, and another worker may be running it. This pool
uses daemon threads that exit does not wait for: when the worker process ends, an abandoned
handler ends with it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import ParamSpec, TypeVar

from conveyor.errors import ClosedError, ConfigError

__all__ = ["DaemonThreadPool"]

P = ParamSpec("P")
T = TypeVar("T")

_Work = tuple[Future[object], Callable[[], object]]


class DaemonThreadPool(Executor):
    """Up to `max_workers` daemon threads, started as work arrives.

    Example:
        pool = DaemonThreadPool(8, "conveyor-job")
        result = await loop.run_in_executor(pool, blocking_call)
    """

    def __init__(self, max_workers: int, name: str) -> None:
        if max_workers < 1:
            raise ConfigError(f"DaemonThreadPool needs max_workers >= 1, got {max_workers}")
        self._max = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            if self._shutdown:
                raise ClosedError("cannot submit to a DaemonThreadPool after shutdown")
            future: Future[T] = Future()
            self._queue.put((future, lambda: fn(*args, **kwargs)))  # type: ignore[arg-type]
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, call = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:
                    future.set_exception(exc)
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    @property
    def threads(self) -> int:
        """Threads started so far."""
        return len(self._threads)
