"""The interface every peer module implements (``Adapter``), and helpers.

Each peer module (``<system>_app.py``) is both the *app module* its worker CLI imports and
the adapter the bench drives. It reads its Redis URL from ``BENCH_REDIS_URL`` at import time
(the bench sets it to that system's own database before importing, and passes it to the
worker processes), defines two tasks:

- ``noop``: calls ``probe.hit(start)`` and nothing else;
- ``stamp(sent)``: calls ``probe.latency(sent)`` first thing;

and an ``Adapter`` subclass. Sync libraries (Celery, Dramatiq, RQ) are called directly
from the adapter's ``async`` methods: the bench does one thing at a time, so blocking the
bench's loop costs nothing.
"""

from __future__ import annotations

import abc
import sys
from pathlib import Path
from typing import ClassVar

__all__ = ["Adapter", "script"]


def script(name: str) -> str:
    """A console script of the interpreter running the bench (the peers' venv)."""
    return str(Path(sys.executable).parent / name)


class Adapter(abc.ABC):
    name = ""
    app_module = ""
    bulk_api = ""  # which API `enqueue_bulk` uses, for the table
    single_api = ""
    defaults = ""  # the worker's documented defaults, and what we pass
    drain_jobs: int | None = None  # fewer jobs for the drain (RQ: one fork per job)
    env: ClassVar[dict[str, str]] = {}  # extra environment for worker processes
    latency_gap = 0.02  # seconds between latency probes

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Connect (the first connection is not timed)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections."""

    async def reset(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Called after the bench flushed this system's database, before enqueueing."""

    @abc.abstractmethod
    async def enqueue_one(self) -> None:
        """Enqueue one no-op job."""

    @abc.abstractmethod
    async def enqueue_bulk(self, n: int) -> None:
        """Enqueue `n` no-op jobs with the system's best bulk API."""

    @abc.abstractmethod
    async def enqueue_stamp(self, sent: float) -> None:
        """Enqueue one latency probe carrying its send time."""

    @abc.abstractmethod
    def worker_cmd(self, processes: int) -> list[list[str]]:
        """argv of the worker processes to start for `processes` worker processes."""
