#!/usr/bin/env python
"""Conveyor on Redis: enqueue, drain and idle latency against the issue's targets, beside the
floor of this machine (one redis-py client's PING round trips/s and LMPOP items/s).

Run from the repository root:

    .venv/bin/python bench/bench_redis.py            # full run, about a minute
    .venv/bin/python bench/bench_redis.py --quick    # smoke run

It starts its own redis-server (no persistence) on a free port, and CLI worker processes
(``python -m conveyor worker bench.bench_redis:app``) that find the server through the
environment variable ``BENCH_REDIS_URL``. It prints a table and exits 0 whether targets are
met or not: it is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

import conveyor  # noqa: E402
from conveyor.backends.base import JobFilter  # noqa: E402
from conveyor.testing.redis_server import RedisServer  # noqa: E402

ROWS: list[tuple[str, float, str, str]] = []


def make_app(url: str) -> conveyor.App:
    """The benchmark app: a no-op task and a latency probe."""
    app = conveyor.App(url)

    @app.task
    async def noop() -> None:
        return None

    @app.task
    async def stamp() -> float:
        return time.time()

    return app


def __getattr__(name: str) -> conveyor.App:
    # `python -m conveyor worker bench.bench_redis:app` builds the app from the environment.
    if name == "app":
        app = make_app(os.environ["BENCH_REDIS_URL"])
        globals()["app"] = app
        return app
    raise AttributeError(name)


def row(figure: str, value: float, unit: str, target: str = "") -> None:
    ROWS.append((figure, value, unit, target))
    print(f"  {figure:<52} {value:>12,.1f} {unit:<8} {target}", flush=True)


def workers(url: str, n: int, *extra: str) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "conveyor", "worker", "bench.bench_redis:app", *extra]
    return [
        subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(n)
    ]


async def floor(url: str, n: int) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.ping()
        start = time.perf_counter()
        for _ in range(n):
            await client.ping()
        row(
            "floor: redis-py PING round trips (one client)", n / (time.perf_counter() - start), "/s"
        )
        items = [b"x"] * 100
        for _ in range(n // 10):
            await client.rpush("bench:list", *items)
        start = time.perf_counter()
        popped = 0
        while True:
            got = await client.lmpop(1, "bench:list", direction="LEFT", count=100)
            if not got:
                break
            popped += len(got[1])
        row("floor: LMPOP count=100 items", popped / (time.perf_counter() - start), "/s")
    finally:
        await client.aclose()


async def enqueue_figures(url: str, single: int, each: int, many: int) -> None:
    app = make_app(f"{url}?prefix=enq")
    noop = app.registry.get("noop")
    try:
        await noop.enqueue()
        start = time.perf_counter()
        for _ in range(single):
            await noop.enqueue()
        row(
            "enqueue: sequential single",
            single / (time.perf_counter() - start),
            "jobs/s",
            ">= 2,400",
        )
        async with app:

            async def producer() -> None:
                for _ in range(each):
                    await noop.enqueue()

            start = time.perf_counter()
            async with asyncio.TaskGroup() as tg:
                for _ in range(100):
                    tg.create_task(producer())
            elapsed = time.perf_counter() - start
        row(
            "enqueue: 100 concurrent coroutines (coalesced)",
            100 * each / elapsed,
            "jobs/s",
            ">= 20,000",
        )
        app = make_app(f"{url}?prefix=many")
        noop = app.registry.get("noop")
        start = time.perf_counter()
        await noop.enqueue_many([() for _ in range(many)])
        row(
            f"enqueue_many of {many:,}", many / (time.perf_counter() - start), "jobs/s", ">= 18,000"
        )
    finally:
        await app.aclose()


async def server_cost(url: str) -> tuple[float, float]:
    """The server's cumulative script time (FCALL + EVALSHA, `INFO commandstats`) and its
    CPU time (`INFO cpu`), both in µs: differences show what a run cost the server."""
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
        cpu = await client.info("cpu")
    finally:
        await client.aclose()
    scripts = sum(
        float(v["usec"]) for k, v in stats.items() if k in ("cmdstat_fcall", "cmdstat_evalsha")
    )
    return scripts, (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6


async def drain(url: str, jobs: int, processes: int) -> float:
    prefix = f"drain{processes}"
    app = make_app(f"{url}?prefix={prefix}")
    try:
        await app.registry.get("noop").enqueue_many([() for _ in range(jobs)])
        before = await server_cost(url)
        procs = workers(f"{url}?prefix={prefix}", processes, "--burst", "-c", "64")
        for p in procs:
            p.wait(300)
        after_ = await server_cost(url)
        row(
            f"  redis-server: script time per job ({processes}p drain)",
            (after_[0] - before[0]) / jobs, "µs",
        )  # fmt: skip
        row(
            f"  redis-server: CPU per job ({processes}p drain)",
            (after_[1] - before[1]) / jobs,
            "µs",
        )
        # Throughput from the first start to the last finish (server time): startup excluded.
        first, last, done = float("inf"), 0.0, 0
        after = None
        while True:
            page = await app.backend.query(JobFilter(), after=after, limit=2000)
            for job in page.jobs:
                done += job.state is conveyor.JobState.COMPLETED
                first = min(first, job.started_at or first)
                last = max(last, job.finished_at or 0.0)
            if page.next is None:
                break
            after = page.next
        assert done == jobs, (done, jobs)
        return jobs / (last - first)
    finally:
        await app.aclose()


async def latency(url: str, samples: int) -> None:
    prefix = "lat"
    (proc,) = workers(f"{url}?prefix={prefix}", 1, "-c", "8")
    app = make_app(f"{url}?prefix={prefix}")
    stamp = app.registry.get("stamp")
    try:
        h = await stamp.enqueue()
        await h.result(timeout=30)  # the worker is up
        sent: list[tuple[float, str]] = []
        for _ in range(samples):
            await asyncio.sleep(0.02)
            t = time.time()
            h = await stamp.enqueue()
            sent.append((t, h.id))
        await asyncio.sleep(0.5)
        jobs = await app.backend.get([i for _, i in sent])
        lat = sorted(
            (msgspec.json.decode(j.result) - t) * 1000
            for (t, _), j in zip(sent, jobs, strict=True)
            if j is not None and j.result is not None
        )
        row("idle latency enqueue→start p50", statistics.median(lat), "ms", "< 1.6")
        row("idle latency enqueue→start p99", lat[int(len(lat) * 0.99) - 1], "ms", "< 2.4")
    finally:
        proc.terminate()
        proc.wait(30)
        await app.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    n = 2_000 if quick else 20_000
    with RedisServer() as server:
        url = server.url
        print(f"redis-server on {url}; python {sys.version.split()[0]}; {os.cpu_count()} CPUs")
        await floor(url, 2_000 if quick else 20_000)
        await enqueue_figures(url, 1_000 if quick else 5_000, 20 if quick else 200, n)
        one = await drain(url, n, 1)
        row(f"drain {n:,} no-op jobs, 1 process (-c 64)", one, "jobs/s", ">= 5,000")
        two = await drain(url, n, 2)
        row(f"drain {n:,} no-op jobs, 2 processes (-c 64)", two, "jobs/s", f">= {1.7 * one:,.0f}")
        row("  2 processes / 1 process", two / one, "x", ">= 1.7")
        await latency(url, 60 if quick else 300)
    print("\n| figure | value | unit | target |\n|---|---:|---|---|")
    for figure, value, unit, target in ROWS:
        print(f"| {figure.strip()} | {value:,.2f} | {unit} | {target} |")


if __name__ == "__main__":
    asyncio.run(main())
