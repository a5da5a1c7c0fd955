"""Fetching: the claim loop, which claims only up to free slots, idles on the store's wake-up
hint (or takes a job it hands over), and rides out store outages with capped backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from conveyor.backends.base import Backend, ClaimRequest
from conveyor.clock import Clock
from conveyor.errors import BackendError, StoreUnavailable
from conveyor.job import Lease
from conveyor.worker.config import QueueSelector, WorkerConfig
from conveyor.worker.lease import Running
from conveyor.worker.observe import Observers
from conveyor.worker.service import Service
from conveyor.worker.settle import BACKOFF_MAX, BACKOFF_MIN
from conveyor.worker.stats import WorkerStats

__all__ = ["Fetch"]

log = logging.getLogger("conveyor.worker")

_REFILL_WAIT = 0.005  # longest a claim waits for more free slots while jobs run


class Fetch(Service):
    """The claim loop: ready once the store answered a claim (the worker is claiming).

    A store that is unreachable at start (`StoreUnavailable` with ``transient``) is waited
    for with capped backoff, said once in the log; any other store error at start is a
    configuration problem and is raised. Once running, every store error is logged once
    per outage and retried. `stop()` ends the loop: leases claimed as it arrived (or
    handed over during an idle wait) go back to the store unstarted.

    Args:
        backend: the store.
        config: the worker's configuration.
        clock: the time source.
        worker: the worker's name (in leases and logs).
        stats: the worker's counters.
        running: the jobs running now (read for free slots).
        slot_free: set whenever a slot frees (or on a stop).
        spawn: starts the jobs of new leases.
        observers: told of each claim's leases and of store errors.
    """

    name = "fetch"

    def __init__(
        self,
        backend: Backend,
        config: WorkerConfig,
        clock: Clock,
        *,
        worker: str,
        stats: WorkerStats,
        running: Mapping[str, Running],
        slot_free: asyncio.Event,
        spawn: Callable[[list[Lease]], None],
        observers: Observers | None = None,
    ) -> None:
        super().__init__()
        self.observers = observers or Observers()
        self.backend = backend
        self.config = config
        self.clock = clock
        self.worker = worker
        self.stats = stats
        self._running = running
        self._slot_free = slot_free
        self._spawn = spawn
        self._selector = QueueSelector(config.queues, config.strict)
        self._idle_waiter: asyncio.Future[list[Lease]] | None = None
        self._outage_since: float | None = None
        self._backoff = BACKOFF_MIN

    def stop(self) -> None:
        super().stop()
        self._slot_free.set()
        self.wake_idle()

    def slot_freed(self) -> None:
        """A job ended: wake a claim waiting for slots (and, in burst mode, the idle wait
        when it was the last one: the burst may be over)."""
        self._slot_free.set()
        if self.config.burst and not self._running:
            self.wake_idle()

    def wake_idle(self) -> None:
        """Interrupt the idle wait, if one is under way."""
        waiter = self._idle_waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()

    async def run(self) -> None:
        cfg = self.config
        stopping = self._stop
        # With jobs running, wait (briefly) for a few slots to free before claiming again:
        # one claim of 16 costs the store far less than 16 claims of 1.
        refill = max(1, min(cfg.claim_batch, cfg.concurrency) // 4)
        while not stopping.is_set():
            free = cfg.concurrency - len(self._running)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            if free < refill and self._running:
                await self._slots_or_timeout(refill, _REFILL_WAIT)
            try:
                leases = await self.backend.claim(
                    ClaimRequest(
                        self._selector.order(),
                        min(free, cfg.claim_batch),
                        cfg.lease_for,
                        self.worker,
                    )
                )
            except BackendError as exc:
                if not self._ready.is_set():
                    if not (isinstance(exc, StoreUnavailable) and exc.transient):
                        raise  # a bad path, credentials or certificate: say so, at once
                    await self._outage(exc, "store unavailable at start, retrying: %s")
                    continue
                await self._outage(exc, "the store failed (%s); retrying with backoff")
                continue
            if self._outage_since is not None:
                log.warning(
                    "worker %s: the store is back after %.1fs",
                    self.worker,
                    self.clock.monotonic() - self._outage_since,
                )
                self._outage_since, self._backoff = None, BACKOFF_MIN
            self._ready.set()  # ready: the store answered a claim
            if stopping.is_set() and leases:
                # Claimed as the stop arrived: hand them straight back, unstarted.
                await self._release(leases)
                break
            self._spawn(leases)
            self.stats.claimed += len(leases)
            if self.observers.items:
                self.observers.claimed(leases, self.clock.now())
            if leases:
                continue
            if cfg.burst and not self._running:
                break
            handed = await self._idle(cfg.poll)
            if handed:  # a job enqueued while we waited, leased to us on the way
                if stopping.is_set():
                    await self._release(handed)
                    break
                self._spawn(handed)
                self.stats.claimed += len(handed)
                if self.observers.items:
                    self.observers.claimed(handed, self.clock.now())
                await asyncio.sleep(0)  # let it start before the next claim's round trip

    async def _slots_or_timeout(self, want: int, timeout: float) -> None:
        """Until `want` slots are free, or `timeout` seconds pass (so slow jobs never keep
        ready work waiting longer than that), or a stop. The timeout is the event loop's:
        it paces claims in real time, and no decision about a job depends on it."""
        try:
            async with asyncio.timeout(timeout):
                while (
                    self.config.concurrency - len(self._running) < want and not self._stop.is_set()
                ):
                    self._slot_free.clear()
                    await self._slot_free.wait()
        except TimeoutError:
            pass

    async def _outage(self, exc: BaseException, message: str) -> None:
        """The store failed: log once (`message` % exc), then wait with capped backoff."""
        self.observers.store_error("claim", exc)
        if self._outage_since is None:
            self._outage_since = self.clock.monotonic()
            log.log(
                logging.WARNING if not self._ready.is_set() else logging.ERROR,
                f"worker %s: {message}",
                self.worker,
                exc,
            )
        await self._idle_for(self._backoff)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    async def _idle_for(self, seconds: float) -> None:
        """Sleep, but wake early on a stop."""
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        except TimeoutError:
            pass

    async def _idle(self, timeout: float) -> list[Lease]:
        """Wait for work: the backend's hint, or a job it hands over. A stop interrupts the
        wait, and so does the last running job ending in burst mode (when a burst is over);
        a job handed over at that very moment goes back to the queue (the backend's duty)."""
        if self._stop.is_set():
            return []
        cfg = self.config
        waiter = asyncio.ensure_future(
            self.backend.wait_for_lease(cfg.queue_names, timeout, self.worker, cfg.lease_for)
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
            await self._outage(exc, "the store failed (%s); retrying with backoff")
            return []
        finally:
            self._idle_waiter = None

    async def _release(self, leases: list[Lease]) -> None:
        """Hand back leases claimed as the stop arrived: unstarted, so not an attempt."""
        try:
            await self.backend.release(leases)
        except BackendError as exc:
            # Not lost: their leases expire and maintenance puts them back.
            log.warning(
                "worker %s: could not hand back %d unstarted job(s) (%s); they return to the "
                "queue when their leases expire",
                self.worker,
                len(leases),
                exc,
            )
