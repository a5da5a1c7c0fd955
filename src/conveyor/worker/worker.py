"""The worker: its services (settle, heartbeat, jobs, fetch), running jobs, and shutdown.

`Worker` builds four services that share the worker's state (`worker.services`, in start
order; `serve.Server` runs them with maintenance in one TaskGroup):

1. `settle` (`settle.Settling`): the settle batcher; stopped last, so it drains every
   outcome.
2. `heartbeat` (`lease.heartbeat` as a `service.Loop`): extends the leases of running
   jobs; stops once they have all ended.
3. `jobs` (`JobRunner`): one task per running job, sync handlers on daemon threads, batch
   tasks' runners. Its stop is phase two of shutdown: running jobs get `grace` seconds,
   then the rest are cancelled and put back in the queue (retried, never lost).
4. `fetch` (`fetch.Fetch`): the claim loop; ready when the store answered a claim (the
   worker is claiming). Its stop is phase one of shutdown: no more claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import socket
from collections.abc import Callable

from conveyor.backends.base import Backend
from conveyor.clock import Clock
from conveyor.job import AttemptError, Completed, Failed, Lease, Outcome, Retrying
from conveyor.registry import Registry
from conveyor.task import BatchTask
from conveyor.worker.batch import BatchRunner
from conveyor.worker.config import WorkerConfig
from conveyor.worker.context import JobContext, JobInfo
from conveyor.worker.execute import FailedWith, execute, precheck
from conveyor.worker.fetch import Fetch
from conveyor.worker.hooks import Hooks
from conveyor.worker.lease import Running, flush_progress, heartbeat
from conveyor.worker.observe import Observers
from conveyor.worker.service import Loop, Service
from conveyor.worker.settle import Settling
from conveyor.worker.stats import WorkerStats
from conveyor.worker.threads import DaemonThreadPool

__all__ = ["JobRunner", "Worker", "WorkerStats"]

log = logging.getLogger("conveyor.worker")

_HOOKS = "/hooks"  # `running` key suffix of a job whose failure hooks run (see `_park`)


class Worker:
    """Runs jobs from `backend` for the tasks in `registry`, as a list of services.

    Run it through `serve.Server` (what `app.worker()` returns), which adds maintenance.

    Args:
        backend: the job store.
        registry: the tasks this worker can run.
        config: how to run; see `WorkerConfig`.
        clock: the time source.
        hooks: failure hooks and middleware (`App.hooks`), if any.
    """

    def __init__(
        self,
        backend: Backend,
        registry: Registry,
        config: WorkerConfig,
        clock: Clock,
        hooks: Hooks | None = None,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.config = config
        self.clock = clock
        self.name = config.name or f"{socket.gethostname()}:{os.getpid()}"
        self.stats = WorkerStats()
        #: Told of claims, outcomes and store errors (metrics, rollups): `worker.observe`.
        self.observers = Observers()
        self._stops = 0
        running: dict[str, Running] = {}
        slot_free = asyncio.Event()
        self.settling = Settling(
            backend, clock, self.stats, lease_for=config.lease_for,
            capacity=config.concurrency * 4, observers=self.observers,
        )  # fmt: skip
        beat = functools.partial(
            heartbeat, backend, running, every=config.heartbeat, lease_for=config.lease_for,
            clock=clock, stats=self.stats, worker=self.name,
        )  # fmt: skip
        self.heartbeat = Loop("heartbeat", beat)
        self.jobs = JobRunner(
            registry, config, clock, self.stats, self.name, running, slot_free, self.settling,
            hooks or Hooks(),
        )  # fmt: skip
        self.fetch = Fetch(
            backend,
            config,
            clock,
            worker=self.name,
            stats=self.stats,
            running=running,
            slot_free=slot_free,
            spawn=self.jobs.spawn,
            observers=self.observers,
        )
        self.jobs.slot_freed = self.fetch.slot_freed  # a job ending frees a slot for claims

    @property
    def services(self) -> list[Service]:
        """The worker's services in start order (stopped in reverse)."""
        return [self.settling, self.heartbeat, self.jobs, self.fetch]

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming. Running jobs get `grace` seconds, or are cancelled at once if `now`
        (or on a second call)."""
        self._stops += 1
        if now or self._stops > 1:
            self.jobs.hurry()
        self.fetch.stop()

    @property
    def running(self) -> int:
        """Jobs running right now."""
        return len(self.jobs.running)


class JobRunner(Service):
    """Runs claimed jobs, one task each (a batch task's claimed group shares one).

    `stop()` waits up to `grace` for running jobs (measured on the injected clock), then
    cancels the rest; they settle as `Retrying(now)` with an `Interrupted` error. `hurry()`
    cuts the grace short. Failure hooks run in the failed job's task, after its settle.
    """

    name = "jobs"

    def __init__(
        self,
        registry: Registry,
        config: WorkerConfig,
        clock: Clock,
        stats: WorkerStats,
        worker: str,
        running: dict[str, Running],
        slot_free: asyncio.Event,
        settling: Settling,
        hooks: Hooks,
    ) -> None:
        super().__init__()
        self.hooks = hooks
        self.registry = registry
        self.config = config
        self.clock = clock
        self.stats = stats
        self.worker = worker
        self.running = running
        # Called whenever a job ends; `Worker` puts the claim loop's here.
        self.slot_freed: Callable[[], None] = slot_free.set
        self._slot_free = slot_free
        self._settle = settling.settle
        self.backend = settling.backend  # the store job contexts write checkpoints to
        self._hurry = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._threads: DaemonThreadPool | None = None
        self._batches: dict[str, BatchRunner] = {}

    def hurry(self) -> None:
        """Cancel running jobs now instead of waiting for `grace`."""
        self._hurry.set()

    async def run(self) -> None:
        cfg = self.config
        self._threads = threads = DaemonThreadPool(cfg.threads or cfg.concurrency, "conveyor-job")
        runners = {
            t.name: BatchRunner(t, self.clock, threads, self.backend, self.running)
            for t in self.registry
            if isinstance(t, BatchTask)
        }
        try:
            async with contextlib.AsyncExitStack() as stack:
                # Exit order matters: job tasks finish, then batch runners drain.
                for runner in runners.values():
                    await stack.enter_async_context(runner.batcher)
                self._tg = await stack.enter_async_context(asyncio.TaskGroup())
                self._batches = runners
                self.started()
                await self._stop.wait()
                await self._drain()
        finally:
            self._tg, self._batches = None, {}
            threads.shutdown(wait=False, cancel_futures=True)

    def spawn(self, leases: list[Lease]) -> None:
        """One task per job; jobs of a batch task share one task per claimed group."""
        tg = self._tg
        assert tg is not None
        now = self.clock.monotonic()
        groups: dict[str, list[Running]] = {}
        for lease in leases:
            entry = Running(lease, started=now)
            self.running[lease.id] = entry
            if lease.job.task in self._batches:
                groups.setdefault(lease.job.task, []).append(entry)
            else:
                entry.task = tg.create_task(self._run_one(entry), name=f"conveyor-job-{lease.id}")
        for name, entries in groups.items():
            task = tg.create_task(self._run_group(name, entries), name=f"conveyor-batch-{name}")
            for entry in entries:
                entry.task, entry.grouped = task, True

    async def _drain(self) -> None:
        """Phase two of shutdown: wait `grace` for running jobs, then cancel the rest."""
        if not self.running:
            return
        clock = self.clock
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            end = clock.monotonic() + self.config.grace
            while self.running and not self._hurry.is_set():
                left = end - clock.monotonic()
                if left <= 0:
                    break
                self._slot_free.clear()
                waiter = asyncio.ensure_future(self._slot_free.wait())
                timer = asyncio.ensure_future(clock.sleep(left))
                await asyncio.wait({waiter, hurry, timer}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                timer.cancel()
        finally:
            hurry.cancel()
        if self.running:
            log.warning(
                "worker %s: cancelling %d job(s) still running after grace; they will be retried",
                self.worker,
                len(self.running),
            )
        tasks = set()
        for entry in list(self.running.values()):
            entry.interrupted = True
            if entry.task is not None:
                tasks.add(entry.task)
        for task in tasks:
            task.cancel()

    # -- one job ---------------------------------------------------------------------------

    async def _run_one(self, entry: Running) -> None:
        lease = entry.lease
        try:
            assert self._threads is not None
            context = entry.context = JobContext(self.backend, lease)
            try:
                outcome = await execute(
                    self.registry, lease, self.clock, self._threads, self._batches, context,
                    self.hooks.middleware,
                )  # fmt: skip
            except Exception as exc:  # a corrupt record or a bug: fail this job, keep the worker
                log.exception("job %s: could not be run", lease.id)
                outcome = self._internal_error(lease, exc)
            except asyncio.CancelledError:
                if entry.lost:
                    return
                if not entry.interrupted:
                    raise
                outcome = self._interrupted(lease)
            if entry.lost:
                return
            if context.has_progress():  # reported since the last beat: write it before settling
                await flush_progress(self.backend, [entry], self.worker)
            (ok,) = await self._settle([(entry, outcome)])
            if ok and type(outcome) is not Completed:  # a job that completed pays nothing more
                await self._after_failure([(entry, outcome)])
        finally:
            self._forget([entry])
            self.slot_freed()

    async def _run_group(self, name: str, entries: list[Running]) -> None:
        """Jobs of one batch task claimed together: one submit, one settle."""
        outcomes: dict[str, Outcome] = {}
        try:
            ready: list[Running] = []
            for entry in entries:
                pre = precheck(self.registry, entry.lease, self.clock)
                if pre is None:
                    ready.append(entry)
                else:
                    outcomes[entry.lease.id] = pre
            try:
                results = await self._batches[name].run_many([e.lease for e in ready])
                outcomes.update(zip((e.lease.id for e in ready), results, strict=True))
            except Exception as exc:  # a bug: fail these jobs, keep the worker
                log.exception("batch task %s: could not run a group", name)
                for e in ready:
                    outcomes[e.lease.id] = self._internal_error(e.lease, exc)
            except asyncio.CancelledError:
                if not any(e.interrupted for e in entries):
                    raise
                for e in ready:
                    outcomes[e.lease.id] = self._interrupted(e.lease)
            pending = [e for e in entries if e.context is not None and e.context.has_progress()]
            if pending:  # reported since the last beat: write it before settling
                await flush_progress(self.backend, [e for e in pending if not e.lost], self.worker)
            pairs = [(e, outcomes[e.lease.id]) for e in entries if not e.lost]
            settled = await self._settle(pairs)
            if self.hooks.on_failure or self.hooks.on_dead_letter:
                await self._after_failure([p for p, ok in zip(pairs, settled, strict=True) if ok])
        finally:
            self._forget(entries)
            self.slot_freed()

    async def _after_failure(self, pairs: list[tuple[Running, Outcome]]) -> None:
        """Run the failure hooks for the failed attempts among `pairs` (settled, not ended
        by a shutdown); several jobs' hooks run side by side, each job's in order."""
        hooks = self.hooks
        if not (hooks.on_failure or hooks.on_dead_letter):
            return
        calls = []
        for entry, outcome in pairs:
            if entry.interrupted or not isinstance(outcome, Retrying | Failed):
                continue
            job = entry.lease.job
            exc = getattr(outcome, "exc", None)
            if exc is None:  # not raised here (cannot happen for a worker's own outcomes)
                exc = RuntimeError(f"{outcome.error.type}: {outcome.error.message}")
            info = JobInfo(job, (*job.errors, outcome.error))
            calls.append((info, exc, isinstance(outcome, Failed)))
        if not calls:
            return
        self._park([entry for entry, _ in pairs])
        threads, timeout = self._threads, self.config.hook_timeout
        assert threads is not None
        try:
            async with asyncio.TaskGroup() as tg:
                for info, exc, dead in calls:
                    run = hooks.failed(info, exc, dead=dead, threads=threads, timeout=timeout)
                    # A fresh context: the attempt is over, so no `current_job()` in a hook.
                    name = f"conveyor-hooks-{info.id}"
                    tg.create_task(run, name=name, context=contextvars.Context())
        except asyncio.CancelledError:
            if not any(entry.interrupted for entry, _ in pairs):
                raise
            # stopped past the grace while hooks ran: the outcomes are recorded already

    # A settled retry may be claimed again, by this worker too, while the last attempt's hooks
    # run: so those run under another key of `running` (keeping their slot, and cancelled by
    # a stop like jobs), and each entry is removed only by its own task. If the new attempt
    # was claimed before the old one parked, the old one's hooks run outside `running` (not
    # counted, not cancelled by a stop: they end within `hook_timeout`).

    def _park(self, entries: list[Running]) -> None:
        for entry in entries:
            if self.running.get(entry.lease.id) is entry:
                del self.running[entry.lease.id]
                self.running[entry.lease.id + _HOOKS] = entry

    def _forget(self, entries: list[Running]) -> None:
        running = self.running
        for entry in entries:
            key = entry.lease.id
            if running.get(key) is entry:
                del running[key]
            elif running.get(key + _HOOKS) is entry:
                del running[key + _HOOKS]

    def _interrupted(self, lease: Lease) -> Outcome:
        now = self.clock.now()
        self.stats.interrupted += 1
        msg = "the worker shut down before the job finished"
        return Retrying(now, AttemptError(lease.job.attempts, "Interrupted", msg, "", now))

    def _internal_error(self, lease: Lease, exc: BaseException) -> Outcome:
        now = self.clock.now()
        msg = f"{type(exc).__name__}: {exc}"
        return FailedWith(AttemptError(lease.job.attempts, "InternalError", msg, "", now), exc)
