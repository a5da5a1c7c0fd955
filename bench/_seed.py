"""Build a large job store fast, through the backend API (no worker): for bench_observe.

The mix (of `n` jobs): 85 % completed, 5 % failed (dead letters, each with an error), 10 %
left queued (half of those scheduled an hour ahead), over 3 queues and 20 tasks; every
fourth task runs in a lane (a tenant group ``tenant-<k>``). Jobs are enqueued in chunks of
10,000, then claimed and settled in chunks of 1,000. A SQLite store is cached under
/tmp/conveyor-bench/ by size (reused when it is there); a Redis store is seeded each run.
"""

from __future__ import annotations

import time
from pathlib import Path

from conveyor.backends import Backend, ClaimRequest
from conveyor.capabilities import Rollups
from conveyor.job import AttemptError, Completed, Failed, Job, new_job_ids
from conveyor.rollup import RollupBuffer

CACHE = Path("/tmp/conveyor-bench")
QUEUES = ("default", "email", "reports")
TASKS = tuple(f"task_{k:02d}" for k in range(20))
ENQUEUE_CHUNK = 10_000
SETTLE_CHUNK = 1_000


def lane_of(task: int, i: int) -> str:
    """Every fourth task runs in one of 5 tenant lanes."""
    return f"tenant-{i % 5}" if task % 4 == 0 else ""


def sqlite_path(n: int) -> Path:
    return CACHE / f"observe-{n}.db"


async def seed(backend: Backend, n: int, log: bool = True) -> float:
    """Store `n` jobs in the mix above; returns the seconds it took."""
    started = time.perf_counter()
    now = backend.clock.now()
    ended = n * 9 // 10  # these get claimed and settled
    for lo in range(0, n, ENQUEUE_CHUNK):
        hi = min(n, lo + ENQUEUE_CHUNK)
        ids = new_job_ids(hi - lo, now)
        jobs = []
        for i, job_id in zip(range(lo, hi), ids, strict=True):
            t = i % len(TASKS)
            run_at = now + 3600.0 if i >= ended and i % 2 else 0.0
            jobs.append(
                Job(
                    id=job_id,
                    task=TASKS[t],
                    payload=b'{"n":%d}' % i,
                    queue=QUEUES[i % len(QUEUES)],
                    lane=lane_of(t, i),
                    run_at=run_at,
                    keep_for=30 * 86_400.0,
                )
            )
        # The ended ones first in each chunk would interleave with the queued ones; keep
        # queued jobs to the last 10 % so claims take only jobs meant to end.
        await backend.enqueue(jobs)
        if log and lo % 100_000 == 0:
            print(f"    enqueued {hi:,} ({time.perf_counter() - started:.0f} s)", flush=True)
        if hi <= ended:
            await _settle_all(backend, hi - lo)
    if log:
        print(f"    seeded {n:,} in {time.perf_counter() - started:.0f} s", flush=True)
    return time.perf_counter() - started


async def _settle_all(backend: Backend, count: int) -> None:
    """Claim and settle `count` ready jobs (all queues): 1 in 18 fails, the rest complete."""
    left = count
    while left > 0:
        leases = await backend.claim(
            ClaimRequest(
                queues=QUEUES, limit=min(SETTLE_CHUNK, left), lease_for=300.0, worker="seed"
            )
        )
        if not leases:
            return
        outcomes: list[tuple[object, object]] = []
        at = backend.clock.now()
        for lease in leases:
            if int(lease.job.id[-4:], 16) % 18 == 0:
                err = AttemptError(
                    attempt=1,
                    type="ValueError",
                    message="bad input",
                    traceback="Traceback...",
                    at=at,
                )
                outcomes.append((lease, Failed(error=err)))
            else:
                outcomes.append((lease, Completed(result=b"1")))
        await backend.settle(outcomes)  # type: ignore[arg-type]
        left -= len(leases)


async def seed_rollups(backend: Backend, minutes: int = 60) -> int:
    """An hour of per-minute rollups for every (queue, task): the rows a worker writes."""
    if not isinstance(backend, Rollups):
        return 0
    buf = RollupBuffer()
    now = backend.clock.now()
    for m in range(minutes):
        at = now - m * 60.0
        for t, task in enumerate(TASKS):
            for k in range(12):
                outcome = "failed" if k == 0 else "completed"
                buf.add(at, QUEUES[t % 3], task, outcome, 0.001 * (k + 1) * (t + 1), 0.01 * k)
    rows = buf.take()
    for lo in range(0, len(rows), 500):
        await backend.add_rollups(rows[lo : lo + 500], keep_for=7 * 86_400.0)
    return len(rows)
