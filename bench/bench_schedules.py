#!/usr/bin/env python
"""Periodic jobs: fire → start latency, and what the scheduler costs with 1,000 schedules.

Run from the repository root:

    .venv/bin/python bench/bench_schedules.py            # 100 fires per store, about 2 minutes
    .venv/bin/python bench/bench_schedules.py --quick    # 20 fires per store

**Latency.** Per store (a SQLite file; a redis-server at its default ``hz 10``; one at
``hz 100``) one CLI worker process (``-c 16``, running the scheduler) serves an app with one
``@every 250ms`` schedule whose handler returns the wall time it started at. A fire's latency
is that start minus the fire time (the job's ``run_at``), over the first N completed fires
after the worker is up. The worker is idle between fires, so this is the delayed-job path:
the fire was enqueued ahead, the worker's wait knew when it was due.

**Cost.** In this process, 1,000 schedules are registered (500 ``@every 1s``, 500 cron
expressions firing once a minute at different seconds) and a `Scheduler` ticks 30 times on a
`FakeClock` moved 1 s per tick: CPU per tick (`time.process_time`, the store's own work
included for SQLite, not Redis's server time) and store calls per tick, the first tick
(which also looks up what the store knows of each schedule) apart. It prints a table and
exits 0: a report, not a test.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

import conveyor  # noqa: E402
from conveyor.backends.base import Backend, JobFilter  # noqa: E402
from conveyor.scheduler import Scheduler  # noqa: E402
from conveyor.testing.redis_server import RedisServer  # noqa: E402

EVERY = 0.25


def make_app(url: str) -> conveyor.App:
    """The latency app: one schedule whose handler reports when it started."""
    app = conveyor.App(url)

    @app.periodic(f"@every {int(EVERY * 1000)}ms", name="beat")
    async def beat() -> float:
        return time.time()

    return app


def __getattr__(name: str) -> conveyor.App:
    # `python -m conveyor worker bench.bench_schedules:app` builds the app from the environment.
    if name == "app":
        app = make_app(os.environ["BENCH_SCHED_URL"])
        globals()["app"] = app
        return app
    raise AttributeError(name)


async def latency(url: str, fires: int) -> list[float]:
    app = make_app(url)
    env = {**os.environ, "BENCH_SCHED_URL": url, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "conveyor", "worker", "bench.bench_schedules:app", "-c", "16"]
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        began = time.time() + 2.0  # skip the start-up fires
        deadline = time.time() + 30 + fires * EVERY * 2
        while time.time() < deadline:
            await asyncio.sleep(0.5)
            page = await app.backend.query(JobFilter(state=conveyor.JobState.COMPLETED), None, 5000)
            done = sorted(
                (j.run_at, msgspec.json.decode(j.result))
                for j in page.jobs
                if j.result is not None and j.run_at >= began
            )
            if len(done) >= fires:
                return [(start - fire) * 1000 for fire, start in done[:fires]]
        raise RuntimeError(f"only {len(done)} fires completed on {url}")
    finally:
        proc.terminate()
        proc.wait(15)
        await app.aclose()


def count_calls(backend: Backend) -> list[str]:
    calls: list[str] = []
    for op in ("enqueue", "get", "query", "cancel"):
        real: Callable[..., Any] = getattr(backend, op)

        def counted(*a: Any, _real: Callable[..., Any] = real, _op: str = op, **k: Any) -> Any:
            calls.append(_op)
            return _real(*a, **k)

        setattr(backend, op, counted)
    return calls


async def cost(url: str, ticks: int) -> dict[str, float]:
    clock = conveyor.FakeClock(time.time())
    app = conveyor.App(url, clock=clock)

    @app.task
    async def work(n: int) -> None: ...

    for n in range(1000):
        expr = "@every 1s" if n % 2 else f"{n % 60} * * * * *"  # or once a minute
        app.schedule(work, expr, args=(n,), name=f"s{n}")
    calls = count_calls(app.backend)
    scheduler = Scheduler(app.backend, app.schedules, clock)
    cpu: list[float] = []
    per_tick: list[int] = []
    sent: list[int] = []
    try:
        for _ in range(ticks):
            before, c0 = len(calls), time.process_time()
            sent.append(await scheduler.tick())
            cpu.append((time.process_time() - c0) * 1000)
            per_tick.append(len(calls) - before)
            clock.advance(1.0)
        # Another scheduler joining the running ones: its first tick's lookups.
        joined = len(calls)
        c0 = time.process_time()
        await Scheduler(app.backend, app.schedules, clock).tick()
        join_cpu, join_calls = (time.process_time() - c0) * 1000, len(calls) - joined
    finally:
        await app.aclose()
    return {
        "first_cpu": cpu[0],
        "first_calls": per_tick[0],
        "cpu": statistics.median(cpu[1:]),
        "cpu_max": max(cpu[1:]),
        "calls": statistics.median(per_tick[1:]),
        "calls_max": max(per_tick[1:]),
        "sent": statistics.median(sent[1:]),
        "join_cpu": join_cpu,
        "join_calls": join_calls,
    }


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    fires = 20 if args.quick else 100
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}", flush=True)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        servers = [RedisServer(), RedisServer(extra_args=["--hz", "100"])]
        for s in servers:
            s.start()
        try:
            targets = [
                ("sqlite", f"sqlite:///{tmp}/lat.db", f"sqlite:///{tmp}/cost.db"),
                ("redis (hz 10)", servers[0].url, servers[0].url + "?prefix=cost"),
                ("redis (hz 100)", servers[1].url, None),
            ]
            for name, lat_url, cost_url in targets:
                lat = await latency(lat_url, fires)
                rows.append(
                    (
                        f"{name}: fire → start over {fires} fires",
                        f"p50 {statistics.median(lat):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
                        f"max {max(lat):.1f} ms",
                    )
                )
                print("  " + " | ".join(rows[-1]), flush=True)
                if cost_url is None:
                    continue
                c = await cost(cost_url, 31 if not args.quick else 6)
                rows.append(
                    (
                        f"{name}: 1,000 schedules, per tick",
                        f"CPU {c['cpu']:.1f} ms (max {c['cpu_max']:.1f}), store calls "
                        f"{c['calls']:.0f} (max {c['calls_max']:.0f}), fire jobs sent "
                        f"{c['sent']:.0f}; first tick on a fresh store CPU "
                        f"{c['first_cpu']:.0f} ms, {c['first_calls']} store calls; first tick "
                        f"of a scheduler joining running ones CPU {c['join_cpu']:.0f} ms, "
                        f"{c['join_calls']} store calls",
                    )
                )
                print("  " + " | ".join(rows[-1]), flush=True)
        finally:
            for s in servers:
                s.stop()
    print()
    print("| measure | result |")
    print("|---|---|")
    for a, b in rows:
        print(f"| {a} | {b} |")


if __name__ == "__main__":
    asyncio.run(main())
