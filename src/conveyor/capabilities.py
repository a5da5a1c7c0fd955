"""The optional store capabilities, in one place: shared state that features need beside jobs.

A store implements a capability by having its methods (memory, SQLite and Redis implement
all of these); a feature that needs one asks with `require`, which fails at start with a
`ConfigError` naming the store and the capability instead of an `AttributeError` later.
Each capability has its own contract mixin in `conveyor.testing.contract`.

==============  =====================================================================
capability      for
==============  =====================================================================
`Counters`      distributed rate limits (`RateLimiter(counters=...)`), metric rollups
`Locks`         distributed locks with fencing tokens (`app.lock`), singletons
`Presence`      worker heartbeats: who runs where, with what (inspect, dashboard)
`QueueControl`  pausing queues (`app.inspector.pause`): enforced inside the store's claim
`FlowControl`   the lanes of flow control (limits, circuits, fair groups): their use, and
                circuits opened or closed by hand (`inspect limits`, `inspect circuit`)
`Rollups`       job metrics over time: per-minute sums per (queue, task), written by
                workers with their settles (`inspector.metrics`, `inspect metrics`)
==============  =====================================================================

Every time these use is the store's clock (the server's `TIME` on Redis), so hosts whose
clocks disagree still agree on expiry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar, runtime_checkable

import msgspec

from conveyor.errors import ConfigError

__all__ = [
    "Counters",
    "FlowControl",
    "LaneInfo",
    "LockInfo",
    "Locks",
    "Presence",
    "QueueControl",
    "Rollup",
    "Rollups",
    "WorkerInfo",
    "require",
]


@runtime_checkable
class Counters(Protocol):
    """Shared counters in fixed windows."""

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        """Add `amount` to `key`'s counter and return the new value. The counter's window
        (`ttl` seconds) starts at the increment that creates it; then it starts from 0."""
        ...


class LockInfo(msgspec.Struct, frozen=True):
    """A held lock, as `Locks.locks` lists it.

    Attributes:
        name: the lock's name.
        owner: who holds it (free text chosen by the holder: host, pid, purpose).
        token: the fencing token of this holding; larger for every later holding of `name`.
        expires_at: when the lock frees itself unless extended (store time, epoch seconds).
    """

    name: str
    owner: str
    token: int
    expires_at: float


@runtime_checkable
class Locks(Protocol):
    """Named locks with a time to live and fencing tokens.

    A lock is held by at most one owner until it is released or its `ttl` passes. Each
    acquisition gets a token larger than any earlier one for that name, so a resource that
    records the last token it saw can refuse a holder whose lock expired meanwhile.
    """

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> int | None:
        """Take `name` for `ttl` seconds if it is free (or expired): its new fencing token,
        or `None` if someone else holds it."""
        ...

    async def extend_lock(self, name: str, token: int, ttl: float) -> bool:
        """Hold `name` for another `ttl` seconds from now, if `token` still holds it."""
        ...

    async def release_lock(self, name: str, token: int) -> bool:
        """Free `name` if `token` still holds it; `False` (no change) if not."""
        ...

    async def locks(self) -> list[LockInfo]:
        """The locks held now, by name."""
        ...

    async def wait_lock(self, name: str, timeout: float) -> None:
        """Return when `name` may be free: soon after a release of it (by any process), when
        its holder's ttl passes, or after `timeout` seconds, whichever comes first. Only a
        hint: the caller then tries `acquire_lock`, which decides."""
        ...


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker says about itself in its presence beats.

    Attributes:
        id: the worker's name (unique per process: ``host:pid`` by default).
        host, pid: where it runs.
        queues: the queues it serves.
        concurrency: its job slots.
        running: jobs it is running at the time of the beat.
        started_at: when it started (epoch seconds).
        version: the Conveyor version it runs.
        seen_at: when the store last heard from it (store time; set by the store).
        jobs: ids of the jobs it is running (the first 100 of them).
        stuck: its current stuck-job reports, one line each (a job past its timeout, an
            event loop blocked too long): see `conveyor.observability.stuck`.
        metrics_url: where it serves ``/metrics`` (``""``: it doesn't).
    """

    id: str
    host: str = ""
    pid: int = 0
    queues: tuple[str, ...] = ()
    concurrency: int = 0
    running: int = 0
    started_at: float = 0.0
    version: str = ""
    seen_at: float = 0.0
    jobs: tuple[str, ...] = ()
    stuck: tuple[str, ...] = ()
    metrics_url: str = ""


@runtime_checkable
class Presence(Protocol):
    """Workers announce themselves with beats; a worker not heard from for its `ttl` is gone."""

    async def beat(self, worker: WorkerInfo, ttl: float) -> None:
        """Record `worker` as alive for `ttl` seconds (replacing its previous beat)."""
        ...

    async def workers(self) -> list[WorkerInfo]:
        """Workers whose last beat has not expired, by id, with `seen_at` set."""
        ...

    async def leave(self, worker_id: str) -> None:
        """Forget `worker_id` at once (a clean stop)."""
        ...


@runtime_checkable
class QueueControl(Protocol):
    """Paused queues: a claim (and the Redis handoff) takes no job from a paused queue.

    The paused set lives in the store, so it holds for every worker on every host and
    survives restarts. Jobs already running finish; enqueues are still accepted; resuming
    wakes idle workers. Queue names are checked (`conveyor.names.check_queue`).
    """

    async def pause(self, queue: str) -> bool:
        """Stop claims from `queue`: `True` if it was running, `False` if already paused."""
        ...

    async def resume(self, queue: str) -> bool:
        """Let claims take from `queue` again: `True` if it was paused."""
        ...

    async def paused(self) -> list[str]:
        """The paused queues, by name."""
        ...


class LaneInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One lane of a queue, as `FlowControl.lanes` lists it (see `Backend.claim`).

    Attributes:
        queue: the queue the lane is part of.
        lane: its name (`Job.lane`).
        ready: its queued jobs (waiting for their turn, a slot, a token or the circuit).
        running: its jobs running now (each holds one of `concurrency`'s slots).
        weight: jobs it is served per turn.
        concurrency: the most running at once (0: no limit).
        rate: starts per second (0: no limit), with `burst` the bucket's size.
        burst: the token bucket's size (0 without a rate).
        tokens: the tokens in the bucket now (after refill; 0 without a rate).
        circuit: the circuit's spec (`Job.circuit`; ``""``: none).
        circuit_state: ``"closed"``, ``"open"`` or ``"half_open"``.
        open_until: while open, when it turns half-open (None: until closed by hand).
        calls: calls counted in the circuit's current window.
        failures: failed calls among them.
    """

    queue: str
    lane: str
    ready: int = 0
    running: int = 0
    weight: int = 1
    concurrency: int = 0
    rate: float = 0.0
    burst: int = 0
    tokens: float = 0.0
    circuit: str = ""
    circuit_state: str = "closed"
    open_until: float | None = None
    calls: int = 0
    failures: int = 0


@runtime_checkable
class FlowControl(Protocol):
    """The lanes of flow control, for operators: what each uses, and circuits by hand.

    The limits themselves are not set here: each job carries its lane's (`Job.lane` and
    the fields after it) and the store enforces them inside its claim (`Backend.claim`).
    """

    async def lanes(self, queue: str | None = None) -> list[LaneInfo]:
        """The lanes the store keeps (of `queue`, or of every queue), by queue then name.
        A lane with no jobs, a full bucket and a closed circuit with nothing counted may be
        forgotten (and then is not listed)."""
        ...

    async def set_circuit(
        self, queue: str, lane: str, state: str, duration: float | None = None
    ) -> str:
        """Open (``state="open"``) or close (``"closed"``) a lane's circuit by hand.

        Open holds the lane's jobs (none is claimed) for `duration` seconds, then lets a
        probe through as an opened circuit does (a lane with no circuit of its own is then
        closed); with no `duration`, until closed by hand.
        Closed lets its jobs run again at once (and wakes idle workers), with the failure
        window reset. A lane the store doesn't know yet is created. Returns the state the
        circuit was in.

        Raises:
            InvalidOption: `state` is neither, `duration` is not > 0, or a bad name.
        """
        ...


class Rollup(msgspec.Struct, frozen=True, kw_only=True):
    """Named sums for one minute of one (queue, task): what `Rollups` stores.

    The store knows nothing of what the names mean (`conveyor.rollup` does): it adds
    values name by name. Names match ``[a-z][a-z0-9_]{0,31}``.

    Attributes:
        minute: the minute's start, epoch seconds (a multiple of 60).
        queue: the jobs' queue.
        task: the jobs' task name.
        values: name → amount (counts and sums of seconds).
    """

    minute: int
    queue: str
    task: str
    values: dict[str, float]


@runtime_checkable
class Rollups(Protocol):
    """Job metrics over time, as per-minute sums per (queue, task).

    Workers add what their settles recorded (`conveyor.worker.observe`); the inspector
    reads ranges of minutes and summarizes them (`conveyor.rollup.summarize`). Nothing here
    reads the jobs themselves, so the figures survive purges, and reading an hour costs the
    same with a million jobs stored as with ten.
    """

    async def add_rollups(self, rows: Sequence[Rollup], keep_for: float) -> None:
        """Add each row's values to those stored for its (minute, queue, task) (a new one
        starts at 0), and keep that minute for at least `keep_for` seconds after it ends;
        then the store may drop it. Each row is added whole or not at all (a call may be
        split between minutes on Redis Cluster).

        Raises:
            InvalidOption: a minute not a multiple of 60, a bad queue, task or value name,
                a value that is not finite, or `keep_for` not > 0 (nothing is written).
        """
        ...

    async def rollups(
        self, since: float, until: float | None = None, *, queue: str | None = None
    ) -> list[Rollup]:
        """The stored rows of the minutes that overlap ``[since, until)`` (`until` None: up
        to now), of `queue` or of every queue, one row per (minute, queue, task), by minute,
        then queue, then task."""
        ...


C = TypeVar("C")


def require(store: object, capability: type[C], feature: str) -> C:
    """`store` as a `capability`, or a `ConfigError` naming both and the feature needing it.

    Example:
        locks = require(app.backend, Locks, "app.lock()")
    """
    if isinstance(store, capability):
        return store
    raise ConfigError(
        f"{feature} needs the {capability.__name__} capability, which the store "
        f"{store!r} does not have; use a store that provides it (memory, sqlite and redis "
        "all do)"
    )
