"""The flow-control fault tests' app: limited tasks that append to the ledger (`ledger.note`).

The worker imports ``tests.faults.apps.flow_app:app`` (built lazily from ``FAULT_DB_URL``);
the test process builds its own with `build(url)`. Every task notes ``start <n>`` when its
handler begins and ``done <n>`` (or ``fail <n>``) right before it returns (or raises), so in
the ledger's file order a run's lines lie inside the time its job held the store's claim.

Environment, read when a task runs:

* ``FAULT_TASK_SLEEP``: seconds a handler sleeps between its lines (default 0.005).
* ``FAULT_FLAG``: a file; while it exists `flaky` fails every call.
"""

from __future__ import annotations

import os
import time

import conveyor
from tests.faults.apps.ledger import note

__all__ = ["BURST", "CIRCUIT", "RATE", "build"]

RETRY = conveyor.RetryPolicy(max_attempts=50, base_delay=0.05, max_delay=0.5)
RATE = 200.0
BURST = 20  # the bucket's size, picked explicitly: a 1-s window may hold RATE + BURST starts
CIRCUIT = conveyor.Circuit(failure_rate=0.5, window=5, cooldown=3, min_calls=5)


def _sleep() -> None:
    time.sleep(float(os.environ.get("FAULT_TASK_SLEEP", "0.005")))


def build(url: str) -> conveyor.App:
    """An App on `url` with every task the flow fault tests use."""
    app = conveyor.App(url)

    @app.task(concurrency=3, retry=RETRY)
    def capped(n: int) -> int:
        """At most 3 running at once, across every worker."""
        note("start", n)
        _sleep()
        note("done", n)
        return os.getpid()

    @app.task(rate_limit=conveyor.RateLimit(rate=RATE, burst=BURST), retry=RETRY)
    def limited(n: int) -> int:
        """At most RATE starts per second, in bursts of BURST."""
        note("start", n)
        _sleep()
        note("done", n)
        return os.getpid()

    @app.task(concurrency=1, limit_key="{key}", retry=RETRY)
    def singleton(key: int, n: int) -> int:
        """One at a time per key, in enqueue order."""
        note("start", n)
        _sleep()
        note("done", n)
        return os.getpid()

    @app.task(circuit=CIRCUIT, retry=RETRY)
    def flaky(n: int) -> int:
        """Fails every call while the flag file exists."""
        note("start", n)
        _sleep()
        if os.path.exists(os.environ["FAULT_FLAG"]):
            note("fail", n)
            raise RuntimeError("the dependency is down")
        note("done", n)
        return os.getpid()

    @app.task(group="{tenant}", retry=RETRY)
    def tenant_job(tenant: str, n: int) -> int:
        """A fair share per tenant."""
        note("start", n)
        note("done", n)
        return os.getpid()

    return app


def __getattr__(name: str) -> conveyor.App:
    # The worker's `tests.faults.apps.flow_app:app`: built on first use from FAULT_DB_URL.
    if name == "app":
        app = build(os.environ["FAULT_DB_URL"])
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
