"""The checkpoint fault test's app: a job that works through pages, saving a checkpoint after
each, and notes in the ledger (``tests.faults.apps.ledger``) where each attempt resumed from
(``resume <page>``) and each checkpoint it saved (``saved <page>``).

Loaded as ``tests.faults.apps.checkpointer:app`` from ``FAULT_DB_URL`` (built on first use,
like the ledger app); the test process builds its own with `build(url)`.
"""

from __future__ import annotations

import asyncio
import os

import conveyor
from tests.faults.apps.ledger import note

__all__ = ["build"]


def build(url: str) -> conveyor.App:
    """An App on `url` with the one task, ``pages``."""
    app = conveyor.App(url)

    @app.task(name="pages", retry=conveyor.RetryPolicy(max_attempts=5, base_delay=0))
    async def pages(total: int) -> int:
        job = conveyor.current_job()
        start = job.checkpoint or 0
        note("resume", start)
        for page in range(start, total):
            await asyncio.sleep(0.02)  # the work of one page
            assert await job.save_checkpoint(page + 1)
            note("saved", page + 1)  # after the save returned: durable by then
        return os.getpid()

    return app


def __getattr__(name: str) -> conveyor.App:
    if name == "app":
        app = build(os.environ["FAULT_DB_URL"])
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
