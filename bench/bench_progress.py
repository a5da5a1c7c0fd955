#!/usr/bin/env python
"""Progress cost: the drain rate of short jobs beside 64 jobs reporting progress 100 times a second.

Run from the repository root:

    .venv/bin/python bench/bench_progress.py            # 5,000 jobs per run, about 30 s
    .venv/bin/python bench/bench_progress.py --quick    # 1,000 jobs per run

Per store (memory, a SQLite file, then its own redis-server without persistence) one
in-process worker drains short jobs (an async no-op) three times: alone (``-c 32``); beside
64 long jobs that only sleep 10 ms in a loop (``-c 96``: the same 32 slots left for the short
jobs); and beside 64 long jobs that call `current_job().progress(...)` every 10 ms (``-c 96``).
The last two differ only by the progress calls, which ride the heartbeat (one `annotate` per
beat for all 64). It prints the rates and exits 0: a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import conveyor  # noqa: E402
from conveyor.testing.redis_server import RedisServer  # noqa: E402

REPORTERS = 64
SLOTS = 32


def make_app(url: str, stop: asyncio.Event) -> conveyor.App:
    app = conveyor.App(url)

    @app.task
    async def noop() -> None:
        return None

    @app.task
    async def reporter(report: bool) -> None:
        job = conveyor.current_job()
        n = 0
        while not stop.is_set():
            n += 1
            if report:
                await job.progress((n % 100) / 100, f"step {n}")
            await asyncio.sleep(0.01)

    return app


async def completed(app: conveyor.App) -> int:
    counts = await app.backend.counts("default")
    return counts.get("default", {}).get(conveyor.JobState.COMPLETED, 0)


async def drain_rate(url: str, jobs: int, reporters: bool | None) -> float:
    """Short jobs per second; `reporters`: None (no long jobs), False (sleeping), True."""
    stop = asyncio.Event()
    app = make_app(url, stop)
    slots = SLOTS if reporters is None else SLOTS + REPORTERS
    async with app, app.worker(concurrency=slots, lease_for=4.0):
        if reporters is not None:
            await app.registry.get("reporter").enqueue_many([(reporters,)] * REPORTERS)
            await asyncio.sleep(0.5)  # all running
        base = await completed(app)
        start = time.perf_counter()
        await app.registry.get("noop").enqueue_many([() for _ in range(jobs)])
        while await completed(app) < base + jobs:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
        stop.set()
    return jobs / elapsed


async def main(quick: bool) -> None:
    jobs = 1_000 if quick else 5_000
    print(f"{jobs} short jobs per run; {REPORTERS} long jobs, progress every 10 ms each")
    print(f"{'store':8} {'alone':>10} {'+sleepers':>10} {'+progress':>10} {'progress cost':>14}")
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
        stores = {
            "memory": lambda: "memory://",
            "sqlite": lambda: f"sqlite:///{tmp}/{time.monotonic_ns()}.db",
            "redis": lambda: f"{server.url}?prefix=b{time.monotonic_ns()}",
        }
        for name, url in stores.items():
            alone = await drain_rate(url(), jobs, None)
            sleepers = await drain_rate(url(), jobs, False)
            reporting = await drain_rate(url(), jobs, True)
            cost = 1 - reporting / sleepers
            print(f"{name:8} {alone:>8.0f}/s {sleepers:>8.0f}/s {reporting:>8.0f}/s {cost:>13.1%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 jobs per run")
    asyncio.run(main(parser.parse_args().quick))
