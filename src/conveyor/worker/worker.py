"""The worker: claims jobs up to free capacity, runs them, heartbeats leases, settles outcomes.

One `asyncio.TaskGroup` owns everything: the fetch loop, one task per running job, the
heartbeat loop and the settle batcher. Shutdown is two-phase: `stop()` stops claiming and
lets running jobs finish for `grace` seconds; what is still running then is cancelled and
put back in the queue (retried, never lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence

from conveyor.backends.base import Backend
from conveyor.clock import Clock
from conveyor.errors import BackendError
from conveyor.job import AttemptError, Failed, Lease, Outcome, Retrying
from conveyor.primitives import Batcher
from conveyor.registry import Registry
from conveyor.task import BatchTask
from conveyor.worker.batch import BatchRunner
from conveyor.worker.config import QueueSelector, WorkerConfig
from conveyor.worker.execute import execute, precheck
from conveyor.worker.lease import Running, heartbeat
from conveyor.worker.stats import WorkerStats, record
from conveyor.worker.threads import DaemonThreadPool

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("conveyor.worker")

# Backoff while the store is unreachable, in seconds.
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0
_REFILL_WAIT = 0.005  # longest a claim waits for more free slots while jobs run


class Worker:
    """Runs jobs from `backend` for the tasks in `registry`.

    Use `await worker.run()` (returns after `stop()`, or when idle in burst mode).

    Args:
        backend: the job store.
        registry: the tasks this worker can run.
        config: how to run; see `WorkerConfig`.
        clock: the time source.
    """

    def __init__(
        self, backend: Backend, registry: Registry, config: WorkerConfig, clock: Clock
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.config = config
        self.clock = clock
        self.name = config.name or f"{socket.gethostname()}:{os.getpid()}"
        self.stats = WorkerStats()
        self._selector = QueueSelector(config.queues, config.strict)
        self._running: dict[str, Running] = {}
        self._slot_free = asyncio.Event()
        self._idle_waiter: asyncio.Future[list[Lease]] | None = None
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()  # second stop: cancel running jobs now
        self._started = asyncio.Event()
        self._threads: DaemonThreadPool | None = None
        self._outage_since: float | None = None
        self._backoff = _BACKOFF_MIN
        self._settler: Batcher[list[tuple[Lease, Outcome]], list[bool]] | None = None
        self._batches: dict[str, BatchRunner] = {}

    # -- control ---------------------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming. Running jobs get `grace` seconds, or are cancelled at once if `now`
        (or on a second call)."""
        if self._stopping.is_set() or now:
            self._hurry.set()
        self._stopping.set()
        self._slot_free.set()
        self._wake_idle()

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called."""
        return self._stopping.is_set()

    async def started(self) -> None:
        """Wait until the worker is claiming (the readiness handshake)."""
        await self._started.wait()

    @property
    def running(self) -> int:
        """Jobs running right now."""
        return len(self._running)

    # -- main ------------------------------------------------------------------------------

    async def run(self) -> WorkerStats:
        """Run until stopped (or idle, in burst mode). Returns the counters."""
        cfg = self.config
        self._threads = DaemonThreadPool(cfg.threads or cfg.concurrency, "conveyor-job")
        # Items are groups of outcomes (one job, or a batch task's group), so a group costs
        # one future; the flush settles every group in one backend call.
        settler: Batcher[list[tuple[Lease, Outcome]], list[bool]] = Batcher(
            self._settle_groups,
            max_size=64,
            max_wait=0.0,
            capacity=cfg.concurrency * 4,
            name="settle",
        )
        log.info(
            "worker %s starting: queues=%s concurrency=%d",
            self.name,
            ",".join(f"{n}={w}" for n, w in cfg.queues),
            cfg.concurrency,
        )
        runners = {
            t.name: BatchRunner(t, self.clock, self._threads)
            for t in self.registry
            if isinstance(t, BatchTask)
        }
        try:
            async with contextlib.AsyncExitStack() as stack:
                # Exit order matters: job tasks finish, then batch runners drain, then the
                # settle batcher drains.
                await stack.enter_async_context(settler)
                for runner in runners.values():
                    await stack.enter_async_context(runner.batcher)
                tg = await stack.enter_async_context(asyncio.TaskGroup())
                self._settler, self._batches = settler, runners
                beat = heartbeat(
                    self.backend,
                    self._running,
                    every=cfg.heartbeat,
                    lease_for=cfg.lease_for,
                    clock=self.clock,
                    stats=self.stats,
                    worker=self.name,
                )
                heartbeats = tg.create_task(beat, name="conveyor-heartbeat")
                await self._fetch_loop(tg)
                await self._drain()
                heartbeats.cancel()
        finally:
            self._settler, self._batches = None, {}
            self._threads.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped: %s", self.name, self.stats)
        return self.stats

    async def _fetch_loop(self, tg: asyncio.TaskGroup) -> None:
        cfg = self.config
        # With jobs running, wait (briefly) for a few slots to free before claiming again:
        # one claim of 16 costs the store far less than 16 claims of 1.
        refill = max(1, min(cfg.claim_batch, cfg.concurrency) // 4)
        while not self._stopping.is_set():
            free = cfg.concurrency - len(self._running)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            if free < refill and self._running:
                await self._slots_or_timeout(refill, _REFILL_WAIT)
            try:
                leases = await self.backend.claim(
                    self._selector.order(), min(free, cfg.claim_batch), cfg.lease_for, self.name
                )
            except BackendError as exc:
                if not self._started.is_set():
                    raise  # a store that fails at start is a configuration error: say so
                await self._outage(exc)
                continue
            if self._outage_since is not None:
                log.warning(
                    "worker %s: the store is back after %.1fs",
                    self.name,
                    self.clock.monotonic() - self._outage_since,
                )
                self._outage_since, self._backoff = None, _BACKOFF_MIN
            self._started.set()  # ready: the store answered a claim
            if self._stopping.is_set() and leases:
                # Claimed as the stop arrived: hand them straight back, unstarted.
                await self._release(leases)
                break
            self._spawn(tg, leases)
            self.stats.claimed += len(leases)
            if leases:
                continue
            if cfg.burst and not self._running:
                break
            handed = await self._idle(cfg.poll)
            if handed:  # a job enqueued while we waited, leased to us on the way
                if self._stopping.is_set():
                    await self._release(handed)
                    break
                self._spawn(tg, handed)
                self.stats.claimed += len(handed)
                await asyncio.sleep(0)  # let it start before the next claim's round trip

    async def _slots_or_timeout(self, want: int, timeout: float) -> None:
        """Until `want` slots are free, or `timeout` seconds pass (so slow jobs never keep
        ready work waiting longer than that), or a stop."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.config.concurrency - len(self._running) < want and not self._stopping.is_set():
            left = end - loop.time()
            if left <= 0:
                return
            self._slot_free.clear()
            try:
                async with asyncio.timeout(left):
                    await self._slot_free.wait()
            except TimeoutError:
                return

    def _spawn(self, tg: asyncio.TaskGroup, leases: list[Lease]) -> None:
        """One task per job; jobs of a batch task share one task per claimed group."""
        now = self.clock.monotonic()
        groups: dict[str, list[Running]] = {}
        for lease in leases:
            entry = Running(lease, started=now)
            self._running[lease.id] = entry
            if lease.job.task in self._batches:
                groups.setdefault(lease.job.task, []).append(entry)
            else:
                entry.task = tg.create_task(self._run_one(entry), name=f"conveyor-job-{lease.id}")
        for name, entries in groups.items():
            task = tg.create_task(self._run_group(name, entries), name=f"conveyor-batch-{name}")
            for entry in entries:
                entry.task, entry.grouped = task, True

    async def _outage(self, exc: BaseException) -> None:
        """The store failed mid-run: log once, then wait with capped backoff and try again."""
        if self._outage_since is None:
            self._outage_since = self.clock.monotonic()
            log.error("worker %s: the store failed (%s); retrying with backoff", self.name, exc)
        await self._idle_for(self._backoff)
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    async def _idle_for(self, seconds: float) -> None:
        """Sleep, but wake early on a stop."""
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            pass

    async def _idle(self, timeout: float) -> list[Lease]:
        """Wait for work: the backend's hint, or a job it hands over. A stop interrupts the
        wait, and so does the last running job ending in burst mode (when a burst is over);
        a job handed over at that very moment goes back to the queue (the backend's duty)."""
        if self._stopping.is_set():
            return []
        cfg = self.config
        waiter = asyncio.ensure_future(
            self.backend.wait_for_lease(cfg.queue_names, timeout, self.name, cfg.lease_for)
        )
        self._idle_waiter = waiter
        try:
            return await waiter
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this worker is being cancelled, not just woken
            return []
        except BackendError as exc:
            await self._outage(exc)
            return []
        finally:
            self._idle_waiter = None

    def _wake_idle(self) -> None:
        waiter = self._idle_waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()

    def _slot_freed(self) -> None:
        self._slot_free.set()
        if self.config.burst and not self._running:
            self._wake_idle()  # the last job ended: the burst may be over

    async def _release(self, leases: list[Lease]) -> None:
        """Hand back leases claimed as the stop arrived: unstarted, so not an attempt."""
        try:
            await self.backend.release(leases)
        except BackendError as exc:
            # Not lost: their leases expire and maintenance puts them back.
            log.warning(
                "worker %s: could not hand back %d unstarted job(s) (%s); they return to the "
                "queue when their leases expire",
                self.name,
                len(leases),
                exc,
            )

    async def _drain(self) -> None:
        """Phase two of shutdown: wait `grace` for running jobs, then cancel the rest."""
        if not self._running:
            return
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            end = asyncio.get_running_loop().time() + self.config.grace
            while self._running and not self._hurry.is_set():
                left = end - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                self._slot_free.clear()
                waiter = asyncio.ensure_future(self._slot_free.wait())
                await asyncio.wait(
                    {waiter, hurry}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
        finally:
            hurry.cancel()
        if self._running:
            log.warning(
                "worker %s: cancelling %d job(s) still running after grace; they will be retried",
                self.name,
                len(self._running),
            )
        tasks = set()
        for entry in list(self._running.values()):
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
            try:
                outcome = await execute(
                    self.registry, lease, self.clock, self._threads, self._batches
                )
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
            await self._settle([(entry, outcome)])
        finally:
            self._running.pop(lease.id, None)
            self._slot_freed()

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
            await self._settle([(e, outcomes[e.lease.id]) for e in entries if not e.lost])
        finally:
            for entry in entries:
                self._running.pop(entry.lease.id, None)
            self._slot_freed()

    def _interrupted(self, lease: Lease) -> Outcome:
        now = self.clock.now()
        self.stats.interrupted += 1
        msg = "the worker shut down before the job finished"
        return Retrying(now, AttemptError(lease.job.attempts, "Interrupted", msg, "", now))

    def _internal_error(self, lease: Lease, exc: BaseException) -> Outcome:
        now = self.clock.now()
        msg = f"{type(exc).__name__}: {exc}"
        return Failed(AttemptError(lease.job.attempts, "InternalError", msg, "", now))

    async def _settle_groups(
        self, groups: Sequence[list[tuple[Lease, Outcome]]]
    ) -> list[list[bool] | BaseException]:
        """The settle batcher's handler: every group's outcomes in one backend call."""
        try:
            results = await self.backend.settle([pair for group in groups for pair in group])
        except BackendError as exc:
            return [exc] * len(groups)
        out: list[list[bool] | BaseException] = []
        start = 0
        for group in groups:
            out.append(results[start : start + len(group)])
            start += len(group)
        return out

    async def _settle(self, pairs: list[tuple[Running, Outcome]]) -> None:
        """Record outcomes through the settle batcher, then count and log them. While the
        store is down, retry until the leases would have expired anyway (then the jobs are
        rescued and run again: at-least-once)."""
        assert self._settler is not None
        if not pairs:
            return
        for entry, _ in pairs:
            entry.settling = True
        items = [(entry.lease, outcome) for entry, outcome in pairs]
        give_up = self.clock.monotonic() + 3 * self.config.lease_for
        pause = _BACKOFF_MIN
        while True:
            try:
                settled = await asyncio.shield(self._settler.submit(items))
                break
            except BackendError as exc:
                if self.clock.monotonic() >= give_up:
                    log.error(
                        "%d job(s) could not record their outcome (%s); they will run again",
                        len(items),
                        exc,
                    )
                    settled = [False] * len(items)
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, _BACKOFF_MAX)
        now = self.clock.monotonic()
        for (entry, outcome), ok in zip(pairs, settled, strict=True):
            record(self.stats, entry.lease.job, outcome, ok, now - entry.started, self.clock)
