"""Durable batch tasks vs single jobs on SQLite: the same no-op work, drained in-process.

    .venv/bin/python bench/bench_batch.py [--jobs 20000]

Target (issue 4): the batch task drains >= 3x the single-job rate.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import conveyor


async def drain_rate(path: Path, jobs: int, batch: bool) -> float:
    app = conveyor.App(f"sqlite:///{path}")
    if batch:

        @app.task(batch=conveyor.Batch(max_size=200, max_wait=0.005))
        async def work_many(items: list[int]) -> list[None]:
            return [None] * len(items)

        await work_many.enqueue_many([(i,) for i in range(jobs)])
        concurrency = 400
    else:

        @app.task
        async def work(n: int) -> None:
            return None

        await work.enqueue_many([(i,) for i in range(jobs)])
        concurrency = 64
    start = time.perf_counter()
    stats = await app.worker(
        concurrency=concurrency, burst=True, maintenance=False, claim_batch=200
    ).run()
    took = time.perf_counter() - start
    await app.aclose()
    assert stats.completed == jobs, stats
    return jobs / took


async def main(jobs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        single = await drain_rate(Path(tmp) / "single.db", jobs, batch=False)
        batched = await drain_rate(Path(tmp) / "batch.db", jobs, batch=True)
    ratio = batched / single
    print(f"{'figure':<40} {'value':>14}   target")
    print(f"{'single jobs drain':<40} {single:>10,.0f} j/s")
    print(f"{'batch task drain (max_size=200)':<40} {batched:>10,.0f} j/s")
    verdict = "PASS" if ratio >= 3 else "MISS"
    print(f"{'ratio batch / single':<40} {ratio:>12.2f}x   >= 3x  {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().jobs))
