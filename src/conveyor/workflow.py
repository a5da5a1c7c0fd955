"""Workflows: chains, groups and chords of task calls, and batches with callbacks.

Each is a set of jobs with dependencies (`Job.parents`), written in one store call, all or
nothing; the store makes a waiting job ready in the settle that ends its last parent, so no
process coordinates a workflow. A chain step gets the previous step's result as its first
argument and a chord's callback the list of its members' results (`Job.feed`); a failed
step cancels what waits on it.

    flow = await conveyor.chain(fetch.s(url), parse.s(), store.s()).enqueue()
    done = await conveyor.chord([resize.s(p, 200) for p in paths], summarize.s()).enqueue()
    print(await done.result(timeout=60))
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

import msgspec

from conveyor.errors import ConfigError, ResultTimeout, StateError
from conveyor.handle import JobHandle
from conveyor.job import Job, JobState
from conveyor.registry import Registry
from conveyor.task import COLLECTING, RUNNING_JOB, Signature, write_jobs

__all__ = [
    "BatchStatus",
    "Chain",
    "Chord",
    "Group",
    "GroupHandle",
    "JobBatch",
    "chain",
    "chord",
    "group",
]

R = TypeVar("R")

#: The meta key a batch's callbacks carry: the ids of its callbacks, by name.
BATCH_META = "conveyor_batch"
#: Members linked to a callback per store call (on Redis ~6 µs of server time each: one
#: call holds the server ~30 ms, not the ~1 s of a 100,000-member call).
_LINK_CHUNK = 5_000


def _registry(signatures: Sequence[Signature[Any]], what: str) -> Registry:
    for sig in signatures:
        if not isinstance(sig, Signature):
            raise ConfigError(f"{what} takes task signatures (task.s(...)), got {sig!r}")
    registry = signatures[0].task.registry
    for sig in signatures[1:]:
        if sig.task.registry is not registry:
            raise ConfigError(f"{what}: {sig!r} belongs to another app than {signatures[0]!r}")
    return registry


def _now(registry: Registry) -> float:
    return registry.producer.clock.now()


class Chain(Generic[R]):
    """Steps that run one after another, each getting the previous one's result as its
    first argument (from `conveyor.chain`)."""

    def __init__(self, steps: Sequence[Signature[Any]]) -> None:
        if not steps:
            raise ConfigError("chain() needs at least one step")
        self.steps = tuple(steps)
        self._registry = _registry(self.steps, "chain()")
        self._jobs(_now(self._registry))  # every step binds (and encodes) now, or raises

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, self.steps))})"

    def _jobs(self, now: float) -> list[Job]:
        jobs = [self.steps[0].job(now)]
        for step in self.steps[1:]:
            jobs.append(step.job(now, parents=(jobs[-1].id,), feed="one"))
        return jobs

    async def enqueue(self) -> JobHandle[R]:
        """Store every step (one store call); the handle of the last one, whose result is
        the chain's."""
        jobs = self._jobs(_now(self._registry))
        ids = await write_jobs(self._registry, jobs)
        return self.steps[-1].handle(ids[-1], ids[-1] == jobs[-1].id)

    def enqueue_sync(self) -> JobHandle[R]:
        """`enqueue` for synchronous code."""
        return self._registry.portal.call(self.enqueue())


class GroupHandle(Generic[R]):
    """The jobs of an enqueued group, in member order."""

    def __init__(self, handles: list[JobHandle[R]]) -> None:
        self.handles = handles

    def __repr__(self) -> str:
        return f"<GroupHandle of {len(self.handles)} jobs>"

    def __len__(self) -> int:
        return len(self.handles)

    async def results(self, timeout: float | None = None) -> list[R]:
        """Every member's result, in member order (raises as `JobHandle.result` does for the
        first member that failed or was cancelled; `ResultTimeout` after `timeout`)."""
        try:
            async with asyncio.timeout(timeout):
                return [await h.result() for h in self.handles]
        except TimeoutError:
            raise ResultTimeout(
                f"the group of {len(self.handles)} jobs did not finish within {timeout} s"
            ) from None


class Group(Generic[R]):
    """Independent calls written together (from `conveyor.group`)."""

    def __init__(self, members: Iterable[Signature[R]]) -> None:
        self.members = tuple(members)
        self._registry = _registry(self.members, "group()") if self.members else None
        if self._registry is not None:
            self._jobs(_now(self._registry))

    def __repr__(self) -> str:
        return f"group({len(self.members)} calls)"

    def _jobs(self, now: float) -> list[Job]:
        return [m.job(now) for m in self.members]

    async def enqueue(self) -> GroupHandle[R]:
        """Store every member (one store call)."""
        if self._registry is None:
            return GroupHandle([])
        jobs = self._jobs(_now(self._registry))
        ids = await write_jobs(self._registry, jobs)
        return GroupHandle(
            [m.handle(got, got == j.id) for m, j, got in zip(self.members, jobs, ids, strict=True)]
        )

    def enqueue_sync(self) -> GroupHandle[R]:
        """`enqueue` for synchronous code."""
        if self._registry is None:
            return GroupHandle([])
        return self._registry.portal.call(self.enqueue())


class Chord(Generic[R]):
    """A group and a callback that gets the list of the members' results, in member order,
    once every member completed (from `conveyor.chord`)."""

    def __init__(self, members: Iterable[Signature[Any]], callback: Signature[R]) -> None:
        self.members = tuple(members)
        self.callback = callback
        self._registry = _registry((*self.members, callback), "chord()")
        self._jobs(_now(self._registry))

    def __repr__(self) -> str:
        return f"chord({len(self.members)} calls, {self.callback!r})"

    def _jobs(self, now: float) -> list[Job]:
        jobs = [m.job(now) for m in self.members]
        return [*jobs, self.callback.job(now, parents=tuple(j.id for j in jobs), feed="all")]

    async def enqueue(self) -> JobHandle[R]:
        """Store the members and the callback (one store call); the callback's handle."""
        jobs = self._jobs(_now(self._registry))
        ids = await write_jobs(self._registry, jobs)
        return self.callback.handle(ids[-1], ids[-1] == jobs[-1].id)

    def enqueue_sync(self) -> JobHandle[R]:
        """`enqueue` for synchronous code."""
        return self._registry.portal.call(self.enqueue())


def chain(*steps: Signature[Any]) -> Chain[Any]:
    """Steps that run in order, each given the previous result as its first argument.

    Example:
        flow = await conveyor.chain(fetch.s(url), parse.s(), store.s()).enqueue()
        print(await flow.result(timeout=30))    # store's result
    """
    return Chain(steps)


def group(members: Iterable[Signature[R]]) -> Group[R]:
    """Calls enqueued together in one store call.

    Example:
        g = await conveyor.group(resize.s(p, 200) for p in paths).enqueue()
        sizes = await g.results(timeout=60)
    """
    return Group(members)


def chord(members: Iterable[Signature[Any]], callback: Signature[R]) -> Chord[R]:
    """Members, then `callback` with the list of their results once all completed (a
    member that fails cancels the callback).

    Example:
        done = await conveyor.chord((resize.s(p, 200) for p in paths), summarize.s()).enqueue()
        print(await done.result(timeout=60))
    """
    return Chord(members, callback)


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """Where a batch's members are: counts by how they ended, and the fraction ended."""

    total: int
    pending: int
    completed: int
    failed: int
    cancelled: int
    purged: int = 0  # ended and already deleted (its retention passed)

    @property
    def progress(self) -> float:
        """The fraction of members that ended (1.0 for an empty batch)."""
        return 1.0 if not self.total else (self.total - self.pending) / self.total

    @property
    def done(self) -> bool:
        """Whether every member ended."""
        return self.pending == 0


class JobBatch:
    """Jobs enqueued inside ``async with app.batch(...)`` and callbacks for when they end.

    Every job enqueued in the block (in this context: nested calls and awaited helpers
    included) is a member. The callbacks are written when the block opens, as jobs held
    `waiting` (`Job.waiting_for` holds), and when it exits the members become their parents
    and the hold is given back (`Backend.link`): `on_success` runs once every member
    completed (a member that fails or is cancelled cancels it), `on_complete` once all
    ended, however they ended. Each runs once: the store releases it in the settle that
    ends the last member. Opened again (``app.batch(reopen=batch.id)``, from any process,
    a member's handler included) while its callbacks still wait, it gathers more members;
    once they ran, reopening is a `StateError`. A batch opened inside another is a member
    of it, callbacks included. If the block raises, the members it enqueued stay members.

    Example:
        async with app.batch(on_success=notify.s("import done"), on_complete=cleanup.s()) as b:
            for row in rows:
                await import_row.enqueue(row, b.id)    # a row may reopen the batch to add more
        print(await b.status())
    """

    def __init__(
        self,
        registry: Registry,
        on_success: Signature[Any] | None = None,
        on_complete: Signature[Any] | None = None,
        reopen: str | None = None,
    ) -> None:
        for name, sig in (("on_success", on_success), ("on_complete", on_complete)):
            if sig is not None:
                if not isinstance(sig, Signature):
                    raise ConfigError(
                        f"batch {name} takes a task signature (task.s(...)), got {sig!r}"
                    )
                if sig.task.registry is not registry:
                    raise ConfigError(f"batch {name}: {sig!r} belongs to another app")
                sig.job(_now(registry))  # binds now, or raises
        if reopen is not None and (on_success is not None or on_complete is not None):
            raise ConfigError("a reopened batch keeps its callbacks: give reopen= alone")
        if reopen is not None and (not isinstance(reopen, str) or not reopen):
            raise ConfigError(f"reopen= takes a batch's id (batch.id), not {reopen!r}")
        self._registry = registry
        self._calls = [
            (name, sig, policy)
            for name, sig, policy in (
                ("on_success", on_success, "cancel"),
                ("on_complete", on_complete, "run"),
            )
            if sig is not None
        ]
        self._reopen = reopen
        self.members: list[str] = []
        self.callbacks: dict[str, JobHandle[Any]] = {}
        self._callback_ids: dict[str, str] = {}
        self._token: Any = None
        self._held = False  # whether this opening holds the callbacks (given back at exit)

    def __repr__(self) -> str:
        return f"<JobBatch {self.id or '(no callbacks)'} of {len(self.members)} jobs>"

    @property
    def id(self) -> str | None:
        """The batch's id (its first callback's job id), to reopen it; `None` without
        callbacks (nothing waits for such a batch)."""
        ids = self._callback_ids
        return ids.get("on_complete") or ids.get("on_success") or self._reopen

    async def __aenter__(self) -> JobBatch:
        if self._token is not None:
            raise ConfigError("this batch is open already")
        if self._reopen is not None:
            await self._hold_again(self._reopen)
        elif self._calls and not self._callback_ids:
            now = _now(self._registry)
            jobs = [sig.job(now) for _, sig, _ in self._calls]
            ids = {name: job.id for (name, _, _), job in zip(self._calls, jobs, strict=True)}
            jobs = [
                msgspec.structs.replace(
                    job,
                    waiting_for=1,
                    on_parent_failure=policy,
                    meta={**job.meta, BATCH_META: ids},
                )
                for (_, _, policy), job in zip(self._calls, jobs, strict=True)
            ]
            got = await write_jobs(self._registry, jobs)  # members of any outer batch
            for (name, sig, _), job, job_id in zip(self._calls, jobs, got, strict=True):
                self._callback_ids[name] = job_id
                self.callbacks[name] = sig.handle(job_id, job_id == job.id)
            self._held = True
        elif self._callback_ids:  # the same object entered again
            await self._hold_again(self.id or "")
        self._token = COLLECTING.set((*COLLECTING.get(), self.members))
        return self

    async def _hold_again(self, batch_id: str) -> None:
        backend = self._registry.producer.backend
        (record,) = await backend.get([batch_id])
        ids = record.meta.get(BATCH_META) if record is not None else None
        if record is None or not isinstance(ids, dict) or not ids:
            raise StateError(f"no batch {batch_id!r} in this store (unknown, or purged)")
        running = RUNNING_JOB.get()
        if running in record.parents and record.state is JobState.WAITING:
            # A member reopening its own batch: its own end is what the callbacks still wait
            # for, so they can't run before this block exits, and no hold is taken (a hold a
            # SIGKILLed member took would never be given back).
            self._callback_ids.update((str(k), str(v)) for k, v in ids.items())
            return
        taken: list[str] = []
        for name, job_id in ids.items():
            if not await backend.link(str(job_id), holds=1):
                for held in taken:
                    await backend.link(held, holds=-1)  # give back what this reopen took
                raise StateError(
                    f"batch {batch_id} has finished: its {name} callback no longer waits, so "
                    "no job can join it"
                )
            taken.append(str(job_id))
            self._callback_ids[str(name)] = str(job_id)
        self._held = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        COLLECTING.reset(self._token)
        self._token = None
        backend = self._registry.producer.backend
        members = list(dict.fromkeys(self.members))  # a duplicate's holder may repeat
        step = _LINK_CHUNK
        chunks = [members[i : i + step] for i in range(0, len(members), step)]
        chunks = chunks or [[]]
        give_back = -1 if self._held else 0
        self._held = False
        for name, job_id in self._callback_ids.items():
            for i, chunk in enumerate(chunks):  # the hold goes back with the last chunk
                last = i == len(chunks) - 1
                if not await backend.link(job_id, chunk, holds=give_back if last else 0) and chunk:
                    raise StateError(
                        f"batch {self.id}'s {name} callback stopped waiting before "
                        f"{len(members)} job(s) enqueued in this block could join it"
                    )

    async def status(self) -> BatchStatus:
        """How the members stand, read from the store (one call per 1,000 members): every
        member, also those another process added by reopening the batch."""
        backend = self._registry.producer.backend
        ids = list(dict.fromkeys(self.members))
        if self.id is not None:
            (record,) = await backend.get([self.id])
            if record is not None:
                ids = list(dict.fromkeys([*record.parents, *ids]))
        by_state: dict[JobState | None, int] = {}
        for start in range(0, len(ids), 1000):
            for job in await backend.get(ids[start : start + 1000]):
                state = None if job is None else job.state  # None: purged
                by_state[state] = by_state.get(state, 0) + 1
        completed, failed = by_state.get(JobState.COMPLETED, 0), by_state.get(JobState.FAILED, 0)
        cancelled, purged = by_state.get(JobState.CANCELLED, 0), by_state.get(None, 0)
        return BatchStatus(
            total=len(ids),
            pending=len(ids) - completed - failed - cancelled - purged,
            completed=completed,
            failed=failed,
            cancelled=cancelled,
            purged=purged,
        )
