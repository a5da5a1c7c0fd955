"""Running durable batch tasks: claimed jobs of one task are gathered by a `Batcher`, the
handler is called once per batch, and each job gets its own outcome.

The handler sees one `JobContext` per item (`conveyor.current_jobs()`, in item order): the
context of that job's `Running` entry, so its progress rides the heartbeat like any job's.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor

from conveyor.backends.base import Backend
from conveyor.clock import Clock
from conveyor.errors import Cancel, ConveyorError, Fail
from conveyor.job import Cancelled, Completed, Lease, Outcome
from conveyor.primitives import Batcher, CapacityLimiter
from conveyor.serde import encode_result
from conveyor.task import BatchTask
from conveyor.worker.context import JobContext, enter_batch, exit_batch
from conveyor.worker.execute import failed, retry_or_fail
from conveyor.worker.lease import Running

__all__ = ["BatchRunner"]


class BatchRunner:
    """One batch task's batcher inside a worker.

    Enter it (``async with runner.batcher``) for the worker's lifetime, then `run(lease)`
    from each job's slot: the job waits for its batch and returns its own outcome.
    """

    def __init__(
        self,
        task: BatchTask[object, object],
        clock: Clock,
        threads: Executor,
        backend: Backend,
        running: Mapping[str, Running],
    ) -> None:
        self.task = task
        self.clock = clock
        self.threads = threads
        self.backend = backend
        self.running = running  # the worker's running jobs, whose contexts the handler sees
        spec = task.batch
        assert spec is not None
        self.batcher_size = spec.max_size
        # One limit for handler calls from full groups and from the batcher alike.
        self._calls = CapacityLimiter(spec.max_concurrency)
        self.batcher: Batcher[Lease, Outcome] = Batcher(
            self._flush,
            max_size=spec.max_size,
            max_wait=spec.max_wait,
            max_concurrency=spec.max_concurrency,
            capacity=max(spec.max_size * spec.max_concurrency * 4, 64),
            clock=clock,
            name=f"batch:{task.name}",
        )

    async def run(self, lease: Lease) -> Outcome:
        """This job's outcome, once its batch ran."""
        return await self.batcher.submit(lease)

    async def run_many(self, leases: Sequence[Lease]) -> list[Outcome]:
        """The outcomes of several claimed jobs, in order.

        Full batches run at once, without the batcher's per-item bookkeeping; the remainder
        joins the batcher to gather with jobs from other claims.
        """
        size = self.batcher_size
        full = len(leases) - len(leases) % size
        out: list[Outcome] = []
        for start in range(0, full, size):
            out.extend(await self._flush(leases[start : start + size]))  # type: ignore[arg-type]
        if full < len(leases):
            rest = leases[full:]
            results = await self.batcher.submit_many(rest)
            out.extend(
                r if not isinstance(r, BaseException) else self._fault(lease, r)
                for lease, r in zip(rest, results, strict=True)
            )
        return out

    async def _flush(self, leases: Sequence[Lease]) -> list[Outcome | BaseException]:
        async with self._calls:
            return await self._flush_now(leases)

    async def _flush_now(self, leases: Sequence[Lease]) -> list[Outcome | BaseException]:
        outcomes: list[Outcome | BaseException | None] = [None] * len(leases)
        items: list[object] = []
        slots: list[int] = []
        for i, lease in enumerate(leases):
            try:
                items.append(self.task.codec.decode(lease.job.payload)["item"])
                slots.append(i)
            except ConveyorError as exc:
                now = self.clock.now()
                outcomes[i] = failed(lease, exc, now, "PoisonPayload")
        if items:
            batch = [leases[i] for i in slots]
            for i, outcome in zip(slots, await self._call(batch, items), strict=True):
                outcomes[i] = outcome
        return [o for o in outcomes if o is not None]

    async def _call(self, leases: list[Lease], items: list[object]) -> list[Outcome]:
        task = self.task
        timeouts = [lease.job.timeout for lease in leases if lease.job.timeout is not None]
        limit = asyncio.timeout(min(timeouts) if timeouts else None)
        token = enter_batch([self._context(lease) for lease in leases])
        try:
            async with limit:
                if task.is_async:
                    results = await task.handler(items)  # type: ignore[misc]
                else:
                    ctx = contextvars.copy_context()
                    call: Callable[[], object] = functools.partial(ctx.run, task.handler, items)
                    results = await asyncio.get_running_loop().run_in_executor(self.threads, call)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and limit.expired():
                exc = TimeoutError(f"batch attempt timed out after {min(timeouts)} s")
            return [self._fault(lease, exc) for lease in leases]
        finally:
            exit_batch(token)
        if not isinstance(results, Sequence) or isinstance(results, str | bytes):
            wrong = ConveyorError(
                f"batch task {task.name!r} returned {type(results).__name__}; it must return a "
                f"list with one result per item ({len(items)} items)"
            )
            return [self._fault(lease, wrong) for lease in leases]
        if len(results) != len(items):
            wrong = ConveyorError(
                f"batch task {task.name!r} returned {len(results)} results for {len(items)} "
                "items; it must return exactly one result (or exception) per item"
            )
            return [self._fault(lease, wrong) for lease in leases]
        out: list[Outcome] = []
        for lease, result in zip(leases, results, strict=True):
            if isinstance(result, BaseException):
                out.append(self._fault(lease, result))
                continue
            try:
                out.append(Completed(encode_result(result)))
            except ConveyorError as exc:
                now = self.clock.now()
                out.append(failed(lease, exc, now, "ResultNotSerializable"))
        return out

    def _context(self, lease: Lease) -> JobContext:
        """The job's context: its running entry's (made on first use), else a new one."""
        entry = self.running.get(lease.id)
        if entry is None:
            return JobContext(self.backend, lease)
        if entry.context is None:
            entry.context = JobContext(self.backend, lease)
        return entry.context

    def _fault(self, lease: Lease, exc: BaseException) -> Outcome:
        if isinstance(exc, Cancel):
            return Cancelled(exc.reason)
        if isinstance(exc, Fail):
            return failed(lease, exc, self.clock.now(), "Fail")
        kind = "Timeout" if isinstance(exc, TimeoutError) and "batch attempt" in str(exc) else None
        return retry_or_fail(self.task, lease, exc, self.clock, kind)
