"""The fault tests' ledger app, for workers on Redis: ``tests.redis.apps.ledger:app``.

The tasks are the SQLite fault tests' own (`tests.faults.apps.ledger.build`); the store's URL
comes from the environment variable ``FAULT_DB_URL`` (a ``redis://...`` URL), read on first use.
"""

from __future__ import annotations

import os

import conveyor
from tests.faults.apps.ledger import build

__all__ = ["build"]


def __getattr__(name: str) -> conveyor.App:
    if name == "app":
        app = build(os.environ["FAULT_DB_URL"])
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
