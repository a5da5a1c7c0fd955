#!/usr/bin/env python
"""Observability at scale: store reads, dashboard pages and inspector.metrics at 1M jobs.

Run from the repository root:

    .venv/bin/python bench/bench_observe.py            # 1,000,000 jobs per store
    .venv/bin/python bench/bench_observe.py --quick    # 100,000 jobs per store
    .venv/bin/python bench/bench_observe.py --jobs 300000 --stores sqlite

Per store (a SQLite file cached under /tmp/conveyor-bench/, then its own redis-server
without persistence, seeded each run) it seeds the job mix of `bench/_seed.py` and an hour
of rollups for 20 tasks, then times (median of a few calls, in-process, so request time is
server time):

- the store calls the pages make: ``counts()``, ``query`` first page and a deep cursor page
  (past the 25,000th match) unfiltered and by state, task, queue and group (lane), ``get``;
- the dashboard pages (``create_app`` over httpx's ASGITransport): overview, jobs (first and
  deep page, each filter), dead letters;
- ``inspector.metrics(since=1h)``.

Budgets (issue 12): pages <= 200 ms, ``/metrics`` and ``inspector.metrics`` <= 50 ms. It
prints a table and exits 0: a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import conveyor  # noqa: E402
from bench import _seed  # noqa: E402
from conveyor.backends.base import JobFilter  # noqa: E402
from conveyor.job import JobState  # noqa: E402
from conveyor.testing.redis_server import RedisServer  # noqa: E402

DEEP = 25_000  # the deep page starts after this many matches
WALK = 5_000  # page size used to walk to the deep cursor
REPEAT = 5

Rows = list[tuple[str, float, float]]  # (what, median ms, budget ms)


def note(rows: Rows, row: tuple[str, float, float]) -> None:
    """Keep a measured row and print it now (a slow store shows where it is)."""
    rows.append(row)
    what, ms, budget = row
    print(f"    {what}: {ms:.1f} ms{'  OVER' if ms > budget else ''}", flush=True)


async def timed(call: Callable[[], Awaitable[Any]], repeat: int = REPEAT) -> float:
    """Median milliseconds of `repeat` calls (after one warm-up call)."""
    await call()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def deep_cursor(backend: conveyor.App, filter: JobFilter) -> str | None:
    """The cursor after the first `DEEP` matches of `filter` (None: fewer matches)."""
    after, seen = None, 0
    while seen < DEEP:
        page = await backend.backend.query(filter, after, min(WALK, DEEP - seen))
        seen += len(page.jobs)
        if page.next is None:
            return None
        after = page.next
    return after


FILTERS: dict[str, tuple[JobFilter, dict[str, str]]] = {
    "none": (JobFilter(), {}),
    "state=failed": (JobFilter(state=JobState.FAILED), {"state": "failed"}),
    "state=queued": (JobFilter(state=JobState.QUEUED), {"state": "queued"}),
    "task": (JobFilter(task="task_03"), {"task": "task_03"}),
    "queue": (JobFilter(queue="email"), {"queue": "email"}),
    "group": (JobFilter(lane="tenant-2"), {"group": "tenant-2"}),
}


async def store_reads(app: conveyor.App, rows: Rows) -> dict[str, str | None]:
    b = app.backend
    note(rows, ("store counts()", await timed(lambda: b.counts()), 200))
    cursors: dict[str, str | None] = {}
    for name, (f, _) in FILTERS.items():
        rows.append(
            (f"store query first page [{name}]", await timed(lambda f=f: b.query(f, None, 50)), 200)
        )
        cur = await deep_cursor(app, f)
        cursors[name] = cur
        if cur is not None:
            rows.append(
                (
                    f"store query deep page [{name}]",
                    await timed(lambda f=f, c=cur: b.query(f, c, 50)),
                    200,
                )
            )
    first = await b.query(JobFilter(), None, 50)
    ids = [j.id for j in first.jobs]
    note(rows, ("store get(50 ids)", await timed(lambda: b.get(ids)), 200))
    if hasattr(b, "oldest_ready"):
        note(rows, ("store oldest_ready()", await timed(lambda: b.oldest_ready(_seed.QUEUES)), 50))
    return cursors


async def pages(app: conveyor.App, cursors: dict[str, str | None], rows: Rows) -> None:
    try:
        import httpx

        from conveyor.dashboard import create_app
    except ImportError as exc:
        print(f"  dashboard not measured: {exc}")
        return
    web = create_app(app.inspector, schedules=app.schedules)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://t") as c:

        async def get(path: str, params: dict[str, str] | None = None) -> None:
            r = await c.get(path, params=params)
            if r.status_code != 200:
                raise RuntimeError(f"{path} {params}: HTTP {r.status_code}")

        note(rows, ("page /", await timed(lambda: get("/")), 200))
        note(rows, ("page /queues", await timed(lambda: get("/queues")), 200))
        note(rows, ("page /dead", await timed(lambda: get("/dead")), 200))
        for name, (_, params) in FILTERS.items():
            rows.append(
                (f"page /jobs [{name}]", await timed(lambda p=params: get("/jobs", p)), 200)
            )
            cur = cursors.get(name)
            if cur is not None:
                deep = {**params, "after": cur}
                rows.append(
                    (f"page /jobs deep [{name}]", await timed(lambda p=deep: get("/jobs", p)), 200)
                )


async def metrics(app: conveyor.App, rows: Rows) -> None:
    try:
        rows.append(
            ("inspector.metrics(1h)", await timed(lambda: app.inspector.metrics(3600.0)), 50)
        )
    except Exception as exc:
        print(f"  inspector.metrics not measured: {exc!r}")


DRAIN_JOBS = 20_000
DRAIN_CONCURRENCY = 32


def drain_app(url: str) -> conveyor.App:
    """A short no-op task: the drain measures the worker's own overhead."""
    app = conveyor.App(url)

    @app.task
    async def noop(i: int) -> int:
        return i

    return app


async def drain_once(url: str, n: int, on: bool) -> float:
    """Jobs/s of one in-process worker draining `n` fresh jobs, observability on or off."""
    app = drain_app(url)
    try:
        await app.registry.get("noop").enqueue_many([(i,) for i in range(n)])
        knobs: dict[str, Any] = (
            {"presence": True, "rollups": True, "metrics_port": 0}
            if on
            else {"presence": False, "rollups": False, "metrics_port": None}
        )
        server = app.worker(["default"], concurrency=DRAIN_CONCURRENCY, **knobs)
        started = time.perf_counter()
        task = asyncio.create_task(server.run())
        while True:
            c = (await app.backend.counts("default")).get("default", {})
            if c.get(JobState.COMPLETED, 0) >= n:
                break
            await asyncio.sleep(0.01)
        rate = n / (time.perf_counter() - started)
        server.stop()
        await task
        return rate
    finally:
        await app.aclose()


async def drains(store: str, url: Callable[[int], str], runs: int, n: int) -> tuple[float, float]:
    """Alternate off/on drains, each in a fresh store (``url(k)``); medians of jobs/s."""
    off: list[float] = []
    on: list[float] = []
    for k in range(runs):
        off.append(await drain_once(url(2 * k), n, False))
        on.append(await drain_once(url(2 * k + 1), n, True))
    print(f"  {store} drain jobs/s off {[round(x) for x in off]} on {[round(x) for x in on]}")
    return statistics.median(off), statistics.median(on)


async def run(store: str, url: str, n: int, fresh: bool) -> Rows:
    app = conveyor.App(url)
    rows: Rows = []
    try:
        if fresh:
            await _seed.seed(app.backend, n)
            print(f"    {await _seed.seed_rollups(app.backend)} rollup rows", flush=True)
        counts = await app.backend.counts()
        total = sum(sum(c.values()) for c in counts.values())
        print(f"  {store}: {total:,} jobs stored", flush=True)
        cursors = await store_reads(app, rows)
        await pages(app, cursors, rows)
        await metrics(app, rows)
        return rows
    finally:
        await app.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 jobs per store")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per store")
    parser.add_argument("--stores", default="sqlite,redis", help="comma separated")
    parser.add_argument("--drain-only", action="store_true", help="only the on/off drains")
    parser.add_argument("--runs", type=int, default=3, help="drains per setting")
    args = parser.parse_args()
    n = args.jobs or (100_000 if args.quick else 1_000_000)
    stores = args.stores.split(",")
    print(f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; {n:,} jobs per store")
    results: dict[str, Rows] = {}
    drained: dict[str, tuple[float, float]] = {}
    n_drain = 5_000 if args.quick else DRAIN_JOBS
    if "sqlite" in stores:
        with tempfile.TemporaryDirectory(prefix="conveyor-bench-observe-") as tmp:
            drained["sqlite"] = await drains(
                "sqlite", lambda k: f"sqlite:///{tmp}/d{k}.db", args.runs, n_drain
            )
    if "redis" in stores:
        with RedisServer() as server:
            drained["redis"] = await drains(
                "redis", lambda k: f"{server.url}?prefix=d{k}", args.runs, n_drain
            )
    print(f"\n| store | drain of {n_drain:,}, off | on | on ÷ off | target |")
    print("|---|---:|---:|---:|---:|")
    for store, (off, on) in drained.items():
        print(f"| {store} | {off:,.0f} jobs/s | {on:,.0f} jobs/s | {on / off:.1%} | ≥ 95 % |")
    if args.drain_only:
        return
    if "sqlite" in stores:
        _seed.CACHE.mkdir(parents=True, exist_ok=True)
        path = _seed.sqlite_path(n)
        done = path.with_suffix(".done")  # written once seeding finished: a cache hit
        fresh = not done.exists()
        if fresh:
            for extra in ("", "-wal", "-shm"):
                Path(f"{path}{extra}").unlink(missing_ok=True)  # noqa: ASYNC240
        results["sqlite"] = await run("sqlite", f"sqlite:///{path}", n, fresh)
        done.write_text("seeded")
    if "redis" in stores:
        with RedisServer() as server:
            results["redis"] = await run("redis", f"{server.url}?prefix=obs", n, True)
    names = list(dict.fromkeys(what for rows in results.values() for what, _, _ in rows))
    print("\n| call | budget | " + " | ".join(results) + " |")
    print("|---|---:|" + "---:|" * len(results))
    for what in names:
        budget = next(b for rows in results.values() for w, _, b in rows if w == what)
        cells = []
        for rows in results.values():
            ms = next((m for w, m, _ in rows if w == what), None)
            cells.append("-" if ms is None else f"{ms:.1f} ms{' **over**' if ms > budget else ''}")
        print(f"| {what} | {budget} ms | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    asyncio.run(main())
