#!/usr/bin/env python
"""Autoscaling: a burst of 10,000 jobs of 20 ms against ``conveyor worker --autoscale 1:4``.

Prints a timeline (every 0.5 s: worker processes, queued / running / completed jobs) and the
issue's figures: how long until the process count reached MAX (goal: within 10 s), and how
long after the last job it fell back to MIN (goal: within 60 s of idle), with every job
completed and none lost. The supervisor's scaling log lines follow.

Run from the repository root:

    .venv/bin/python bench/bench_autoscale.py                  # SQLite, about 1 minute
    .venv/bin/python bench/bench_autoscale.py --store redis    # its own redis-server
    .venv/bin/python bench/bench_autoscale.py --quick          # smoke run

The jobs sleep on the event loop (an I/O-bound task), so CPU is not what limits them and the
supervisor's CPU gate (add only with >= 20 % idle) lets it grow. A report, not a test: it
exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

import conveyor  # noqa: E402
from conveyor.testing.redis_server import RedisServer  # noqa: E402

APP = """
import asyncio, os
import conveyor

app = conveyor.App(os.environ["BENCH_URL"])

@app.task
async def work(n: int) -> None:
    await asyncio.sleep(float(os.environ["BENCH_JOB_S"]))
"""


def workers(sup: int) -> int:
    """Live worker processes of the supervisor."""
    try:
        kids = psutil.Process(sup).children()
    except psutil.NoSuchProcess:
        return 0
    return sum(1 for k in kids if k.status() != psutil.STATUS_ZOMBIE)


@contextlib.contextmanager
def store(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'jobs.db'}"
        return
    with RedisServer() as server:
        yield server.url


async def run(args: argparse.Namespace, url: str, tmp: Path) -> None:
    (tmp / "benchapp.py").write_text(APP)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "BENCH_URL": url,
        "BENCH_JOB_S": str(args.job_ms / 1000),
        "PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT / "src")]),
    }
    cmd = [
        sys.executable, "-m", "conveyor", "-v", "worker", "benchapp:app",
        "--autoscale", f"{args.min}:{args.max}", "-c", str(args.concurrency),
        "--scale-idle", str(args.idle), "--no-scheduler",
    ]  # fmt: skip
    err = open(tmp / "supervisor.err", "wb")  # noqa: SIM115, ASYNC230 - closed below
    sup = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
        cmd, cwd=tmp, env=env, stderr=err, start_new_session=True
    )
    app = conveyor.App(url)

    @app.task(name="work")
    async def work(n: int) -> None: ...

    try:
        while "starting: queues=" not in (tmp / "supervisor.err").read_text():
            assert sup.poll() is None, (tmp / "supervisor.err").read_text()
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        for start in range(0, args.jobs, 1000):
            await work.enqueue_many([(i,) for i in range(start, min(args.jobs, start + 1000))])
        print(f"enqueued {args.jobs} jobs of {args.job_ms} ms in {time.monotonic() - t0:.2f} s")
        print(f"{'t (s)':>6} {'procs':>5} {'queued':>7} {'running':>7} {'completed':>9}")
        at_max = drained = at_min = None
        peak = 0
        while True:
            now = time.monotonic() - t0
            counts = (await app.backend.counts()).get("default", {})
            done = counts.get(conveyor.JobState.COMPLETED, 0)
            n = workers(sup.pid)
            peak = max(peak, n)
            print(
                f"{now:6.1f} {n:5d} {counts.get(conveyor.JobState.QUEUED, 0):7d} "
                f"{counts.get(conveyor.JobState.RUNNING, 0):7d} {done:9d}"
            )
            if at_max is None and n >= args.max:
                at_max = now
            if drained is None and done == args.jobs:
                drained = now
            if drained is not None and n <= args.min:
                at_min = now
                break
            if now > args.timeout:
                print("timed out")
                break
            await asyncio.sleep(0.5)
        final = (await app.backend.counts()).get("default", {})
    finally:
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()
        err.close()
        await app.aclose()
    lost = args.jobs - final.get(conveyor.JobState.COMPLETED, 0)
    print()
    print(f"store: {args.store}; autoscale {args.min}:{args.max}, -c {args.concurrency}, "
          f"idle {args.idle:g} s; peak {peak} processes")  # fmt: skip
    reached = f"{at_max:.1f} s after the burst" if at_max is not None else "never"
    print(f"MAX ({args.max}) reached: {reached}")
    print("drained: " + (f"{drained:.1f} s after the burst" if drained is not None else "no"))
    if drained is not None and at_min is not None:
        print(f"back to MIN ({args.min}): {at_min - drained:.1f} s after the last job")
    states = {s.value: c for s, c in final.items()}
    print(f"final states: {states}; not completed: {lost}; supervisor exit {sup.returncode}")
    print()
    for line in (tmp / "supervisor.err").read_text().splitlines():
        if "scale " in line or "retired" in line or "replacing" in line:
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--job-ms", type=float, default=20.0)
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--max", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--quick", action="store_true", help="2,000 jobs, 3 s idle")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.idle = 2000, 3.0
    with tempfile.TemporaryDirectory() as tmp, store(args.store, Path(tmp)) as url:
        asyncio.run(run(args, url, Path(tmp)))


if __name__ == "__main__":
    main()
