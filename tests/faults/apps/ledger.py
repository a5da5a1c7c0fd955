"""The fault tests' app: every task appends to a ledger kept outside the job store.

Environment (read when a task runs, so one module serves every scenario):

* ``FAULT_DB_URL``: the store, a SQLite or a Redis URL (required to load ``app``).
* ``FAULT_LEDGER``: the ledger file; one line per event, ``"<event> <n> <pid> <time>\\n"``,
  written with one ``os.write`` on an ``O_APPEND`` descriptor (atomic for short lines).
* ``FAULT_TASK_SLEEP``: seconds `record` sleeps between "start" and "done" (default 0.005).
* ``FAULT_MARKERS``: a directory for `block_first`'s first-attempt markers.

The worker imports ``tests.faults.apps.ledger:app`` (on either store); the test process builds
its own App on the same store with `build(url)` (the module-level ``app`` is created lazily, on
first use).
"""

from __future__ import annotations

import asyncio
import os
import time

import conveyor

__all__ = ["build", "note", "read_ledger"]

RETRY = conveyor.RetryPolicy(max_attempts=50, base_delay=0.05, max_delay=0.5)


def note(event: str, n: int) -> None:
    """Append one ledger line atomically."""
    line = f"{event} {n} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(os.environ["FAULT_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_ledger(path: str | os.PathLike[str]) -> list[tuple[str, int, int, float]]:
    """The ledger's lines as (event, n, pid, time)."""
    out: list[tuple[str, int, int, float]] = []
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        return out
    # A line being appended while we read may be cut short: only whole lines count.
    for line in text[: text.rfind("\n") + 1].splitlines():
        event, n, pid, at = line.split()
        out.append((event, int(n), int(pid), float(at)))
    return out


def build(url: str) -> conveyor.App:
    """An App on `url` with every task the fault tests use."""
    app = conveyor.App(url)

    @app.task(retry=RETRY)
    def record(n: int) -> int:
        """The workhorse: start, a short sleep, done; returns the worker's pid."""
        note("start", n)
        time.sleep(float(os.environ.get("FAULT_TASK_SLEEP", "0.005")))
        note("done", n)
        return os.getpid()

    @app.task(retry=RETRY)
    def sleepy(n: int, seconds: float) -> int:
        """Sleep `seconds` in a worker thread (a blocking handler)."""
        note("start", n)
        time.sleep(seconds)
        note("done", n)
        return os.getpid()

    @app.task(retry=RETRY)
    async def asleep(n: int, seconds: float) -> int:
        """Sleep `seconds` on the worker's event loop (a cancellable handler)."""
        note("start", n)
        await asyncio.sleep(seconds)
        note("done", n)
        return os.getpid()

    @app.task(retry=RETRY)
    async def stall_loop(n: int) -> int:
        """Like `record`, but sleeps *on the event loop*: a stalled worker (no heartbeats)."""
        note("start", n)
        time.sleep(float(os.environ.get("FAULT_TASK_SLEEP", "0.005")))  # noqa: ASYNC251
        note("done", n)
        return os.getpid()

    @app.task(retry=RETRY)
    def block_first(n: int) -> int:
        """The first attempt hangs for 30 s; later attempts return at once."""
        marker = os.path.join(os.environ["FAULT_MARKERS"], f"first-{n}")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            first = False
        else:
            os.close(fd)
            first = True
        note("start", n)
        if first:
            time.sleep(30)
        note("done", n)
        return os.getpid()

    @app.task(retry=RETRY)
    async def fanout(n: int, batch_id: str) -> int:
        """A batch member that reopens its batch to add 3 `record` jobs (keyed, so a re-run
        finds the ones an interrupted attempt enqueued)."""
        note("start", n)
        await asyncio.sleep(float(os.environ.get("FAULT_TASK_SLEEP", "0.005")))
        async with app.batch(reopen=batch_id):
            for i in range(3):
                await record.options(key=f"fan-{n}-{i}").enqueue(100_000 + 10 * n + i)
        note("done", n)
        return os.getpid()

    @app.task(retry=RETRY)
    def batch_done(which: int) -> int:
        """A batch's callback: notes which one ran."""
        note("callback", which)
        return which

    @app.task(retry=RETRY)
    def summarize(values: list[int]) -> int:
        """A chord's callback: notes how many results it got."""
        note("callback", len(values))
        return len(values)

    @app.task(timeout=0.5, retry=conveyor.RetryPolicy(max_attempts=2, base_delay=0.05))
    async def never_returns(n: int) -> None:
        """Awaits forever; only its timeout ends it."""
        note("start", n)
        await asyncio.sleep(1000)
        note("done", n)

    return app


def __getattr__(name: str) -> conveyor.App:
    # The worker's `tests.faults.apps.ledger:app`: built on first use from FAULT_DB_URL.
    if name == "app":
        app = build(os.environ["FAULT_DB_URL"])
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
