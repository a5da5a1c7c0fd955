"""Property tests of Batcher invariants over random workloads, on a FakeClock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.clock import FakeClock
from conveyor.errors import Dropped, QueueFull
from conveyor.primitives import Batcher, Overflow
from conveyor.retry import RetryPolicy

from .helpers import spin

STEP = 0.25  # a binary fraction: FakeClock sums stay exact, so deadlines are hit exactly


@dataclass
class Config:
    max_size: int
    max_wait: float
    capacity: int
    overflow: Overflow
    max_concurrency: int
    retries: bool
    fail_every: int


@dataclass
class Seen:
    batch_sizes: list[int] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)


configs = st.builds(
    Config,
    max_size=st.integers(1, 8),
    max_wait=st.sampled_from([0.0, STEP, 2 * STEP, 4 * STEP]),
    capacity=st.integers(1, 12),
    overflow=st.sampled_from(["block", "reject", "drop_oldest", "drop_newest"]),
    max_concurrency=st.integers(1, 3),
    retries=st.booleans(),
    fail_every=st.integers(0, 4),
)
# An operation: submit that many items at once (0 = let time pass by one step).
operations = st.lists(st.integers(0, 10), min_size=1, max_size=25)


async def run_workload(cfg: Config, ops: list[int]) -> None:
    clock = FakeClock(start=0.0)
    seen = Seen()
    submitted_at: dict[int, float] = {}
    attempts: dict[int, int] = {}
    batcher: Batcher[int, int]

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        seen.batch_sizes.append(len(items))
        seen.depths.append(batcher.stats().queue_depth)
        out: list[int | BaseException] = []
        for i in items:
            attempts[i] = attempts.get(i, 0) + 1
            if attempts[i] == 1:  # retries wait out a backoff: only first tries are timed
                seen.waits.append(clock.monotonic() - submitted_at[i])
            failing = cfg.fail_every and i % cfg.fail_every == 0 and attempts[i] < 3
            out.append(OSError(i) if failing else i)
        return out

    policy = RetryPolicy(max_attempts=3, base_delay=STEP, jitter=0) if cfg.retries else None
    batcher = Batcher(
        handler,
        max_size=cfg.max_size,
        max_wait=cfg.max_wait,
        capacity=cfg.capacity,
        overflow=cfg.overflow,
        max_concurrency=cfg.max_concurrency,
        retry=policy,
        clock=clock,
    )
    accepted: dict[int, asyncio.Future[int]] = {}
    refused = 0
    async with batcher:
        n = 0
        for op in ops:
            if op == 0:
                await quiesce(batcher)
                clock.advance(STEP)
            for _ in range(op):
                try:
                    submitted_at[n] = clock.monotonic()
                    accepted[n] = batcher.submit_nowait(n)
                except (QueueFull, Dropped):
                    refused += 1
                n += 1
                assert batcher.stats().queue_depth <= cfg.capacity
            await spin(30)
            assert batcher.stats().queue_depth <= cfg.capacity
        closing = asyncio.ensure_future(batcher.aclose())
        while not closing.done():  # let retry backoffs run out
            await quiesce(batcher)
            clock.advance(STEP)
        await closing

    stats = batcher.stats()
    # Every accepted item has exactly one outcome, and the counters agree.
    assert all(f.done() for f in accepted.values())
    assert stats.submitted == len(accepted)
    assert stats.completed + stats.failed + stats.cancelled + stats.dropped - refused_drops(
        cfg, refused
    ) == len(accepted)
    for i, fut in accepted.items():
        if fut.exception() is None:
            assert fut.result() == i
        else:
            assert isinstance(fut.exception(), OSError | Dropped)
    # No batch is larger than max_size; queue depth never exceeded capacity.
    assert max(seen.batch_sizes, default=0) <= cfg.max_size
    assert max(seen.depths, default=0) <= cfg.capacity
    # Nothing waited for its first flush longer than max_wait, unless the queue was full
    # enough to block on busy slots (impossible here: the handler never awaits). Items
    # flushed by aclose() were flushed earlier than their deadline, never later.
    assert max(seen.waits, default=0.0) <= cfg.max_wait + 1e-9
    assert stats.max_wait_observed <= cfg.max_wait + 1e-9


async def quiesce(batcher: Batcher[int, int]) -> None:
    """Run the loop until the batcher makes no more progress at the current fake time.

    Time only moves when nothing can happen without it, as with an instant handler on a
    real clock; otherwise a backlog flushed one slot at a time would seem to wait.
    """
    last = None
    stable = 0
    while stable < 3:
        await spin(5)
        stats = batcher.stats()
        now = (stats.batches, stats.in_flight, stats.queue_depth, stats.retry_pending)
        stable = stable + 1 if now == last else 0
        last = now


def refused_drops(cfg: Config, refused: int) -> int:
    """drop_newest counts refused items as dropped although they were never accepted."""
    return refused if cfg.overflow == "drop_newest" else 0


@settings(max_examples=80, deadline=None)
@given(cfg=configs, ops=operations)
def test_batcher_invariants(cfg: Config, ops: list[int]) -> None:
    asyncio.run(run_workload(cfg, ops))
