"""Huey 3.5 peer: a `SqliteHuey` with the same no-op task, for side-by-side numbers.

The consumer is started as Huey documents it::

    huey_consumer bench.peers.huey_peer.huey -w 8 -k thread -q

Environment (set by the bench):
    BENCH_HUEY_DB      the SQLite file (absolute path).
    BENCH_HUEY_EXPECT  how many completions to wait for (consumer side only).
    BENCH_HUEY_DONE    a file the consumer writes "<first start> <last completion> <n>" to
                       (epoch seconds) once BENCH_HUEY_EXPECT tasks have completed.

Huey has no burst mode and no completion record for tasks returning None, so the timing
comes from Huey's own signals (SIGNAL_EXECUTING / SIGNAL_COMPLETE), which fire in the
worker threads around each task.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from huey import SqliteHuey
from huey.signals import SIGNAL_COMPLETE, SIGNAL_EXECUTING

__all__ = ["consumer_command", "huey", "make_huey"]


def make_huey(db: str) -> tuple[SqliteHuey, Callable[[], Any]]:
    """A `SqliteHuey` on `db` (Huey's defaults otherwise) and its registered no-op task."""
    h = SqliteHuey(filename=os.path.abspath(db))

    @h.task()
    def noop() -> None:
        return None

    return h, noop


def _install_timing(h: SqliteHuey, expect: int, done_file: str) -> None:
    lock = threading.Lock()
    state: dict[str, float] = {"n": 0, "first": 0.0}

    @h.signal(SIGNAL_EXECUTING)
    def _executing(signal: str, task: object, *args: object) -> None:
        if not state["first"]:
            with lock:
                if not state["first"]:
                    state["first"] = time.time()

    @h.signal(SIGNAL_COMPLETE)
    def _complete(signal: str, task: object, *args: object) -> None:
        with lock:
            state["n"] += 1
            if state["n"] != expect:
                return
            now = time.time()
        tmp = done_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{state['first']!r} {now!r} {expect}\n")
        os.replace(tmp, done_file)


def consumer_command(python_bin_dir: str, workers: int) -> list[str]:
    """The `huey_consumer` command line for `workers` threads (default worker type)."""
    exe = os.path.join(python_bin_dir, "huey_consumer")
    return [exe, "bench.peers.huey_peer.huey", "-w", str(workers), "-k", "thread", "-q"]


huey, noop = make_huey(os.environ.get("BENCH_HUEY_DB", "huey-bench.db"))
if os.environ.get("BENCH_HUEY_EXPECT") and os.environ.get("BENCH_HUEY_DONE"):
    _install_timing(huey, int(os.environ["BENCH_HUEY_EXPECT"]), os.environ["BENCH_HUEY_DONE"])
