"""Presence: the worker beats in the store (`capabilities.Presence`) so operators see it.

Each beat says who the worker is (host, pid, version, queues, concurrency), what it runs
(the ids of its running jobs), its current stuck-job reports and where its metrics are
served; a worker not heard from for three beats is gone (`Presence.workers` drops it), so a
SIGKILLed worker disappears within ``3 * presence_every`` seconds; a clean stop leaves at
once. A store outage only delays beats: it is logged once, and the worker keeps running.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import socket
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from conveyor.capabilities import Presence, WorkerInfo
from conveyor.clock import Clock
from conveyor.errors import BackendError
from conveyor.worker.config import WorkerConfig
from conveyor.worker.lease import Running
from conveyor.worker.observe import Observers
from conveyor.worker.service import Service

__all__ = ["PresenceBeat", "version"]

log = logging.getLogger("conveyor.worker")

_JOBS_SHOWN = 100  # running job ids carried by one beat


def version() -> str:
    """The installed Conveyor's version (``""`` when it is not installed as a package)."""
    try:
        return importlib.metadata.version("conveyor")
    except importlib.metadata.PackageNotFoundError:
        return ""


class PresenceBeat(Service):
    """Beats every `config.presence_every` seconds while the worker runs; leaves on a stop.

    Started before the settle service (so stopped after every job has ended: a draining
    worker still shows its running jobs). Ready at once: the first beat is a try, not a
    condition of starting.

    Args:
        store: the store, with `Presence`.
        name: the worker's name (its presence id).
        config: its configuration (queues, concurrency, beat interval).
        clock: the time source (the loop's pacing only; the store stamps beats).
        running: the worker's running jobs (read at each beat).
        observers: told of failed beats.
        claiming: waits until the worker is claiming (the store answered); the first beat
            comes after it, so a store that refuses the worker is reported once, by the
            claim loop.
    """

    name = "presence"

    def __init__(
        self,
        store: Presence,
        name: str,
        config: WorkerConfig,
        clock: Clock,
        running: Mapping[str, Running],
        observers: Observers | None = None,
        claiming: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self._claiming = claiming
        self.worker = name
        self.config = config
        self.clock = clock
        self.running = running
        self.observers = observers or Observers()
        #: The current stuck-job reports (`observability.stuck.StuckWatch.reports`).
        self.stuck: Callable[[], tuple[str, ...]] = tuple
        #: Where this worker serves /metrics (set by the metrics server once bound).
        self.metrics_url = ""
        self._started_at = clock.now()
        self._version = version()
        self._failing = False

    def info(self) -> WorkerInfo:
        """What the next beat says."""
        cfg = self.config
        jobs = tuple(jid for jid in list(self.running) if not jid.endswith("/hooks"))
        return WorkerInfo(
            id=self.worker,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=tuple(cfg.queue_names),
            concurrency=cfg.concurrency,
            running=len(jobs),
            started_at=self._started_at,
            version=self._version,
            jobs=jobs[:_JOBS_SHOWN],
            stuck=self.stuck(),
            metrics_url=self.metrics_url,
        )

    async def beat(self) -> None:
        """One beat; a store error is logged (once per outage) and swallowed."""
        try:
            await self.store.beat(self.info(), ttl=3 * self.config.presence_every)
        except BackendError as exc:
            self.observers.store_error("beat", exc)
            if not self._failing:
                log.warning("worker %s: presence beat failed (%s); retrying", self.worker, exc)
            self._failing = True
        else:
            if self._failing:
                log.info("worker %s: presence beats are back", self.worker)
            self._failing = False

    async def run(self) -> None:
        self.started()
        if self._claiming is not None:
            await self.cancel_on_stop(self._claiming())
            if self._stop.is_set():
                return
        try:
            while not self._stop.is_set():
                await self.beat()
                try:
                    async with asyncio.timeout(self.config.presence_every):
                        await self._stop.wait()
                except TimeoutError:
                    pass
        finally:
            try:
                await self.store.leave(self.worker)
            except BackendError as exc:  # it expires by itself
                log.info("worker %s: could not leave presence (%s)", self.worker, exc)
