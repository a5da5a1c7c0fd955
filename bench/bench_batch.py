"""Durable batch tasks vs single jobs on SQLite: the same no-op work, drained in-process.

    .venv/bin/python bench/bench_batch.py [--jobs 20000]

Target (issue 4): the batch task drains >= 3x the single-job rate. Both drain through the same
store; for no-op work the store's per-row claim and settle cost is the floor either way.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import conveyor


async def drain_rate(path: Path, jobs: int, batch: bool, size: int = 200) -> float:
    app = conveyor.App(f"sqlite:///{path}")
    if batch:

        @app.task(batch=conveyor.Batch(max_size=size, max_wait=0.005))
        async def work_many(items: list[int]) -> list[None]:
            return [None] * len(items)

        await work_many.enqueue_many([(i,) for i in range(jobs)])
        concurrency = 2 * size
    else:

        @app.task
        async def work(n: int) -> None:
            return None

        await work.enqueue_many([(i,) for i in range(jobs)])
        concurrency = 128
    start = time.perf_counter()
    stats = await app.worker(
        concurrency=concurrency, burst=True, maintenance=False, claim_batch=size
    ).run()
    took = time.perf_counter() - start
    await app.aclose()
    assert stats.completed == jobs, stats
    return jobs / took


async def main(jobs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:

        async def median(name: str, batch: bool, size: int = 200) -> float:
            rates = [
                await drain_rate(Path(tmp) / f"{name}{i}.db", jobs, batch=batch, size=size)
                for i in range(3)
            ]
            return statistics.median(rates)

        single = await median("single", batch=False)
        small = await median("batch200", batch=True, size=200)
        batched = await median("batch500", batch=True, size=500)
    ratio = small / single
    print(f"{'figure (median of 3)':<40} {'value':>14}   target")
    print(f"{'single jobs drain (-c 128)':<40} {single:>10,.0f} j/s")
    print(f"{'batch task drain (max_size=200)':<40} {small:>10,.0f} j/s")
    print(f"{'batch task drain (max_size=500)':<40} {batched:>10,.0f} j/s")
    verdict = "PASS" if ratio >= 3 else "MISS"
    print(f"{'ratio batch (200) / single':<40} {ratio:>12.2f}x   >= 3x  {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().jobs))
