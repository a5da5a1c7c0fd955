"""Test support for Conveyor users and backends.

- `drain(app)`: run every ready job of an app now, in this process (the inline mode for
  your own app tests), and return the worker's counters.
- `FakeClock`: instant time for retry, delay and lease tests.
- `FaultyBackend`: wraps a backend and fails chosen operations on demand.
- `conveyor.testing.contract.BackendContract`: the test suite every backend must pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from conveyor.app import App
from conveyor.clock import FakeClock
from conveyor.testing.faulty import FaultyBackend
from conveyor.worker import WorkerStats

__all__ = ["FakeClock", "FaultyBackend", "drain"]


async def drain(
    app: App,
    queues: str | Sequence[str] | None = None,
    *,
    concurrency: int = 8,
) -> WorkerStats:
    """Run jobs until no job is ready, then return what happened.

    Jobs scheduled in the future stay scheduled (advance a `FakeClock` and drain again).

    Example:
        app = conveyor.App("memory://")
        await add.enqueue(1, 2)
        stats = await drain(app)
        assert stats.completed == 1
    """
    names = (
        queues
        if queues is not None
        else sorted({t.defaults.queue or "default" for t in app.registry} | {"default"})
    )
    server = app.worker(names, concurrency=concurrency, burst=True, maintenance=False, poll=0.01)
    return await server.run()
