"""The schedule fault test's app: an ``@every 1s`` periodic job that notes each run in the
ledger (``tests.faults.apps.ledger``), kept outside the store.

Its ledger lines are ``fire <second> <pid> <time>``: the second the run started in. Loaded as
``tests.faults.apps.ticker:app`` from ``FAULT_DB_URL`` (built on first use, like the ledger
app); the test process builds its own with `build(url)`.
"""

from __future__ import annotations

import os
import time

import conveyor
from tests.faults.apps.ledger import note

__all__ = ["build"]


def build(url: str) -> conveyor.App:
    """An App on `url` with the one schedule, ``tick`` (every second)."""
    app = conveyor.App(url)

    @app.periodic("@every 1s", name="tick")
    async def tick() -> int:
        note("fire", int(time.time()))
        return os.getpid()

    return app


def __getattr__(name: str) -> conveyor.App:
    if name == "app":
        app = build(os.environ["FAULT_DB_URL"])
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
