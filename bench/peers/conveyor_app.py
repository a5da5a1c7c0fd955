"""The Conveyor app the benchmarks run, in the bench process and in CLI worker processes.

The CLI worker loads ``bench.peers.conveyor_app:app``; the database file comes from the
environment variable ``BENCH_CONVEYOR_DB`` (an absolute path), which the bench sets per run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import conveyor

__all__ = ["BenchApp", "app", "make_app"]


@dataclass(frozen=True)
class BenchApp:
    app: conveyor.App
    noop: conveyor.AsyncTask[[], None]
    stamp: conveyor.AsyncTask[[], float]


def make_app(db: str) -> BenchApp:
    """A fresh App on the SQLite file `db` with the two benchmark tasks."""
    app = conveyor.App(f"sqlite:///{os.path.abspath(db)}")

    @app.task
    async def noop() -> None:
        return None

    @app.task
    async def stamp() -> float:
        """Returns the wall-clock time at which the handler started (latency probe)."""
        return time.time()

    return BenchApp(app, noop, stamp)


# Opening an App does not touch the file; the store is opened on first use.
app = make_app(os.environ.get("BENCH_CONVEYOR_DB", "conveyor-bench.db")).app
