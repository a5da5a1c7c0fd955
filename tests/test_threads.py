"""The daemon thread pool for sync handlers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from conveyor.worker.threads import DaemonThreadPool


async def test_runs_calls_and_reports_errors() -> None:
    pool = DaemonThreadPool(2, "t")
    loop = asyncio.get_running_loop()
    names = await asyncio.gather(
        *(loop.run_in_executor(pool, lambda: threading.current_thread().name) for _ in range(6))
    )
    assert all(n.startswith("t-") for n in names)
    assert pool.threads <= 2

    def boom() -> None:
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        await loop.run_in_executor(pool, boom)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(time.sleep, 0)


def test_threads_are_daemons_so_exit_never_waits_for_them() -> None:
    pool = DaemonThreadPool(1, "d")
    started = threading.Event()
    pool.submit(lambda: (started.set(), time.sleep(60)))
    assert started.wait(5)
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("d-"))
    pool.shutdown(wait=False, cancel_futures=True)
