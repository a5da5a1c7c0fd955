#!/usr/bin/env python
"""Pause propagation: from `inspector.pause()` returning to the last job start, 2 workers.

Run from the repository root:

    .venv/bin/python bench/bench_pause.py            # 5 pauses per store, about 30 s
    .venv/bin/python bench/bench_pause.py --quick    # 2 pauses per store

Per store (a SQLite file, then its own redis-server without persistence) it enqueues short
jobs (an async handler that notes the wall time it started at, as its result, then sleeps
2 ms), starts two CLI worker processes (``-c 16``) and, while they drain, pauses the queue,
waits, resumes, a few times. Propagation is the last handler start after `pause()` returned
and before the resume, minus that return time (0 when nothing started after it: every job
already claimed had started). It prints a table and exits 0: a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

import conveyor  # noqa: E402
from conveyor.backends.base import JobFilter  # noqa: E402
from conveyor.testing.redis_server import RedisServer  # noqa: E402

CONCURRENCY = 16
HOLD = 0.5  # seconds each pause lasts


def make_app(url: str) -> conveyor.App:
    """The benchmark app: one short job that reports when its handler started."""
    app = conveyor.App(url)

    @app.task
    async def tick() -> float:
        started = time.time()
        await asyncio.sleep(0.002)
        return started

    return app


def __getattr__(name: str) -> conveyor.App:
    # `python -m conveyor worker bench.bench_pause:app` builds the app from the environment.
    if name == "app":
        app = make_app(os.environ["BENCH_PAUSE_URL"])
        globals()["app"] = app
        return app
    raise AttributeError(name)


def workers(url: str, n: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "BENCH_PAUSE_URL": url, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "conveyor", "worker", "bench.bench_pause:app"]
    argv += ["-c", str(CONCURRENCY)]
    return [
        subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(n)
    ]


async def completed(app: conveyor.App) -> int:
    return sum(s.completed for s in await app.inspector.stats())


async def starts(app: conveyor.App) -> list[float]:
    """Every job's handler start time (its result), for completed jobs."""
    out: list[float] = []
    after = None
    while True:
        page = await app.backend.query(JobFilter(state=conveyor.JobState.COMPLETED), after, 5000)
        out += [msgspec.json.decode(j.result) for j in page.jobs if j.result is not None]
        if page.next is None:
            return out
        after = page.next


async def run(store: str, url: str, pauses: int) -> dict[str, float]:
    app = make_app(url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        jobs = 4_000 * (pauses + 1)
        await app.registry.get("tick").enqueue_many([() for _ in range(jobs)])
        procs = workers(url, 2)
        windows: list[tuple[float, float, float]] = []  # pause called, returned; resume called
        calls: list[float] = []
        for k in range(pauses):
            goal = jobs * (k + 1) // (pauses + 1)
            while await completed(app) < goal:
                await asyncio.sleep(0.02)
            called = time.time()
            await app.inspector.pause("default")
            returned = time.time()
            calls.append(returned - called)
            await asyncio.sleep(HOLD)
            windows.append((called, returned, time.time()))
            await app.inspector.resume("default")
        while await completed(app) < jobs:
            await asyncio.sleep(0.05)
        started = await starts(app)
        lags, late, from_call = [], [], []
        for called, returned, resumed in windows:
            after = [t for t in started if returned < t < resumed]
            late.append(len(after))
            lags.append(max(after, default=returned) - returned)
            since = [t for t in started if called < t < resumed]
            from_call.append(max(since, default=called) - called)
        print(
            f"  {store}: propagation per pause (ms) {[round(x * 1000, 1) for x in lags]}, "
            f"jobs started after pause() returned {late}, last start after pause() was "
            f"called (ms) {[round(x * 1000, 1) for x in from_call]}, pause() call "
            f"{statistics.median(calls) * 1000:.1f} ms",
            flush=True,
        )
        return {
            "p50": statistics.median(lags) * 1000,
            "max": max(lags) * 1000,
            "late": max(late),
            "call": statistics.median(calls) * 1000,
            "from_call": max(from_call) * 1000,
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        await app.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 pauses per store")
    pauses = 2 if parser.parse_args().quick else 5
    print(f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; 2 workers x -c {CONCURRENCY}")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-pause-") as tmp:
        results["sqlite"] = await run("sqlite", f"sqlite:///{tmp}/jobs.db", pauses)
    with RedisServer() as server:
        results["redis"] = await run("redis", f"{server.url}?prefix=pause", pauses)
    print(
        "\n| store | propagation p50 | max | most jobs started after pause() returned "
        "| last start after pause() was called, max | pause() call |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for store, r in results.items():
        print(
            f"| {store} | {r['p50']:.1f} ms | {r['max']:.1f} ms | {r['late']:.0f} | "
            f"{r['from_call']:.1f} ms | {r['call']:.1f} ms |"
        )


if __name__ == "__main__":
    asyncio.run(main())
