"""One process's service: the worker's services and maintenance, run as one `ServiceGroup`.

`Server.services`, in start order (each ready before the next starts; stopped in reverse,
each finished before the one before it is told to stop; see `worker.service`):

1. ``settle``: the settle batcher. Stopped last: it drains every outcome.
2. ``heartbeat``: extends running jobs' leases, until the last job has ended.
3. ``jobs``: running jobs. Stopping it is phase two of shutdown: `grace` seconds for
   running jobs, then the rest are cancelled and put back (retried, never lost).
4. ``fetch``: the claim loop, ready once the store answered a claim (a store unreachable
   at start is waited for). Stopping it is phase one of shutdown: no more claims. In burst
   mode it ends by itself when no job is ready, which stops the rest.
5. ``maintenance`` (unless disabled): promote, rescue, purge. Started once the worker is
   claiming (so the store is known to answer).
6. ``scheduler`` (unless disabled, when the app has schedules): enqueues the fires
   of periodic jobs ahead of time (`scheduler.periodic`). Stopped first.

Observability runs before all of these (started first, stopped last, so it sees every job
settle and keeps answering while the worker drains), each when on in `WorkerConfig`:

0. ``metrics`` (with ``metrics_port``): ``/metrics``, ``/healthz``, ``/readyz``
   (`observability.http`); ``rollups``: writes the per-minute job metrics
   (`worker.rollups`); ``presence``: the worker's beats (`worker.presence`), leaving on a stop.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

from conveyor.backends.base import Backend
from conveyor.capabilities import Presence, Rollups, require
from conveyor.clock import Clock
from conveyor.errors import ClosedError, unwrap_group
from conveyor.observability.http import MetricsServer
from conveyor.observability.stuck import StuckWatch
from conveyor.registry import Registry
from conveyor.scheduler import Maintenance, Scheduler, Schedules
from conveyor.worker import Worker, WorkerConfig, WorkerStats
from conveyor.worker.hooks import Hooks
from conveyor.worker.presence import PresenceBeat
from conveyor.worker.rollups import RollupWriter
from conveyor.worker.service import Service, ServiceGroup

__all__ = ["Server"]

log = logging.getLogger("conveyor.worker")


class Server:
    """A worker plus maintenance, run together. `app.worker()` returns one.

    Run it to completion with `await server.run()`, or in the background of an existing
    asyncio program with `async with server:`, which returns once the worker is claiming
    (and raises if it cannot start) and stops it gracefully on exit.

    Example:
        async with app.worker(queues="default", concurrency=32):
            ...  # e.g. a FastAPI lifespan: the worker runs while the app serves
    """

    def __init__(
        self,
        backend: Backend,
        registry: Registry,
        config: WorkerConfig,
        clock: Clock,
        schedules: Schedules | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.config = config
        self.worker = Worker(backend, registry, config, clock, hooks)
        self.maintenance = Maintenance(
            backend,
            clock,
            sweep_every=config.sweep_every,
            purge_every=config.purge_every,
            failed_retention=config.failed_retention,
        )
        worker = self.worker
        #: The rollup writer (`None` with ``rollups=False``).
        self.rollups: RollupWriter | None = None
        #: The presence beats (`None` with ``presence=False``).
        self.presence: PresenceBeat | None = None
        first: list[Service] = []
        #: The ``/metrics`` and health server (`None` without ``metrics_port``).
        self.metrics: MetricsServer | None = None
        if config.metrics_port is not None:
            self.metrics = MetricsServer(worker, backend, config, clock)
            worker.observers.add(self.metrics.metrics)
            first.append(self.metrics)
        if config.rollups or (config.rollups is None and isinstance(backend, Rollups)):
            store = require(backend, Rollups, "WorkerConfig.rollups (pass rollups=False)")
            self.rollups = RollupWriter(
                store, keep_for=config.rollup_retention, observers=worker.observers
            )
            worker.observers.add(self.rollups)
            first.append(self.rollups)
        if config.presence or (config.presence is None and isinstance(backend, Presence)):
            beats = require(backend, Presence, "WorkerConfig.presence (pass presence=False)")
            self.presence = PresenceBeat(
                beats, worker.name, config, clock, worker.jobs.running, worker.observers,
                claiming=worker.fetch.ready,
            )  # fmt: skip
            first.append(self.presence)
        #: Stuck-job reports: jobs past their timeout, an event loop blocked too long.
        self.stuck = StuckWatch(worker, config, clock)
        if self.metrics is not None:
            self.stuck.on_report.append(lambda kind, _line: self._count_stuck(kind))
        if self.presence is not None:
            self.presence.stuck = self.stuck.reports
            if self.metrics is not None:
                self.presence.metrics_url = self.metrics.url
        first.append(self.stuck)
        #: Started in this order, stopped in reverse (see the module docstring).
        self.services: list[Service] = [*first, *worker.services]
        if config.maintenance:
            self.services.append(self.maintenance)
        #: The periodic-job scheduler (`None` with ``scheduler=False`` or no schedules). An
        #: app with no schedules runs none: its start-up clean-up pages through every
        #: scheduled job of the worker's queues, a cost an app that never schedules should not
        #: pay on every start. So the pending fire of an app's last removed schedule is not
        #: cancelled (it runs once more, or fails if its task is gone too).
        self.scheduler: Scheduler | None = None
        if config.scheduler and schedules:
            self.scheduler = Scheduler(
                backend,
                schedules,
                clock,
                lookahead=1.0 + config.poll,
                queues=config.queue_names,
            )
            self.services.append(self.scheduler)
        self._group = ServiceGroup(self.services)
        self._host: asyncio.TaskGroup | None = None
        self._used = False

    def _count_stuck(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.metrics.stuck_reported(kind)

    async def run(self) -> WorkerStats:
        """Run until `stop()` (or until idle in burst mode)."""
        if self._used:
            raise ClosedError("a Server runs once; create another with app.worker()")
        self._used = True
        cfg, name = self.config, self.worker.name
        queues = ",".join(f"{n}={w}" for n, w in cfg.queues)
        log.info("worker %s starting: queues=%s concurrency=%d", name, queues, cfg.concurrency)
        try:
            await self._group.run()
        except BaseExceptionGroup as eg:
            raise unwrap_group(eg) from None
        log.info("worker %s stopped: %s", name, self.worker.stats)
        return self.worker.stats

    def stop(self, *, now: bool = False) -> None:
        """Begin a graceful stop (a second call, or `now=True`, cancels running jobs)."""
        self.worker.stop(now=now)
        self._group.stop()

    async def ready(self) -> None:
        """Wait until every service is ready: the worker is claiming."""
        await self._group.ready()

    async def __aenter__(self) -> Self:
        host = asyncio.TaskGroup()
        await host.__aenter__()
        self._host = host
        running = host.create_task(self.run(), name="conveyor-server")
        ready = host.create_task(self.ready(), name="conveyor-server-ready")
        try:
            # Return once claiming, so a bad path or bad credentials fail here, plainly.
            await asyncio.wait({ready, running}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError as exc:  # the run failed (the host cancels us) or we were
            await self._leave(type(exc), exc, exc.__traceback__)
            raise
        finally:
            ready.cancel()
        if running.done():  # ended before it was ready: a stop, or an error to raise
            await self._leave(None, None, None)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        await self._leave(exc_type, exc, tb)

    async def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        host, self._host = self._host, None
        if host is not None:
            try:
                await host.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as eg:
                raise unwrap_group(eg) from None
