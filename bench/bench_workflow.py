#!/usr/bin/env python
"""Workflows: a 10,000-member chord and a 1,000-step chain on SQLite and Redis, beside a plain
drain of 10,000 jobs in the same run, and Celery's chord on the same redis-server.

Run from the repository root:

    .venv/bin/python bench/bench_workflow.py            # full: N = 10,000, medians of 3
    .venv/bin/python bench/bench_workflow.py --quick    # smoke: N = 1,000, chain 100, 1 run
    .venv/bin/python bench/bench_workflow.py --only sqlite,redis    # without Celery

One ``python -m conveyor worker bench.bench_workflow:app -c 64`` process per measurement,
started on a fresh store and warmed up (one job run) before the clock starts; the clock
starts just before the enqueue call. Celery runs from the peers' venv (``.venv-peers``, see
bench/README.md): ``celery -A bench.peers_redis.celery_chord worker`` with its defaults
(prefork, concurrency = CPU count) and a Redis result backend, which a chord needs; its
client polls the callback's result (see bench/peers_redis/celery_chord.py for why). Times
come from the stores' own job timestamps (started_at, finished_at) and the callback's end.
CPU is per process (worker tree, redis-server, the enqueuing client) and, beside it, what
every other process on the machine used meanwhile: on 2 cores they compete.
It prints tables and exits 0 whether targets are met or not: it is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis  # noqa: E402

import conveyor  # noqa: E402
from bench.bench_redis import server_cost  # noqa: E402
from conveyor.backends.base import JobFilter  # noqa: E402
from conveyor.testing.redis_server import RedisServer  # noqa: E402

PEERS = ROOT / ".venv-peers" / "bin"
CONCURRENCY = 64
ENDED = (conveyor.JobState.COMPLETED, conveyor.JobState.FAILED, conveyor.JobState.CANCELLED)


def make_app(url: str) -> conveyor.App:
    """The bench's tasks: chord members and plain jobs (`member`), the chord's callback
    (`total`) and the chain's step (`step`)."""
    app = conveyor.App(url)

    @app.task
    async def member(i: int) -> int:
        return i

    @app.task
    async def total(values: list[int]) -> int:
        return sum(values)

    @app.task
    async def step(n: int) -> int:
        return n + 1

    return app


def __getattr__(name: str) -> conveyor.App:
    # `python -m conveyor worker bench.bench_workflow:app` builds the app from the environment.
    if name == "app":
        app = make_app(os.environ["BENCH_WORKFLOW_URL"])
        globals()["app"] = app
        return app
    raise AttributeError(name)


# ---------------------------------------------------------------- processes


def start(argv: list[str], env: dict[str, str], log: Path, **kw: Any) -> subprocess.Popen[str]:
    """A process in its own session (so its pool children stop with it), logging to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stderr=out,
            stdout=kw.pop("stdout", out),
            start_new_session=True,
            text=True,
            **kw,
        )


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the process group, SIGKILL to what is left after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            if sig is signal.SIGTERM:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # pool children left behind
                return


@contextlib.contextmanager
def running(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield proc
    finally:
        stop(proc)


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine (every core) since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its live children."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
    return total


# ---------------------------------------------------------------- figures


@dataclass
class Run:
    jobs: int
    enqueue_s: float  # the enqueue call
    to_end_s: float  # just before the enqueue call → the last job's (callback's) end
    span_s: float  # the first job's start → the last job's end (store timestamps)
    worker_cpu_s: float  # worker process tree, enqueue → done
    server_cpu_s: float | None  # redis-server, enqueue → done
    client_cpu_s: float  # the enqueuing process (building and writing the jobs)
    machine_cpu_s: float  # every process on the machine, enqueue → done
    gaps: list[float] = field(default_factory=list)  # chain: a step's end → the next's start
    callback: tuple[float, float] | None = None  # chord: last member's end → callback start, run

    @property
    def others_cores(self) -> float:
        """Cores the rest of the machine (other processes) kept busy meanwhile, on average."""
        ours = self.worker_cpu_s + (self.server_cpu_s or 0.0) + self.client_cpu_s
        return max(0.0, self.machine_cpu_s - ours) / self.to_end_s

    @property
    def rate(self) -> float:
        return self.jobs / self.span_s


def med(runs: list[Run], f: Callable[[Run], float | None]) -> float | None:
    vals = [v for v in map(f, runs) if v is not None]
    return statistics.median(vals) if vals else None


def spread(runs: list[Run], f: Callable[[Run], float], digits: int = 2) -> str:
    """The median of `f` over `runs`, with its range when there are several."""
    vals = [f(r) for r in runs]
    m, lo, hi = statistics.median(vals), min(vals), max(vals)
    return f"{m:,.{digits}f}" + (f" ({lo:,.{digits}f}-{hi:,.{digits}f})" if len(vals) > 1 else "")


# ---------------------------------------------------------------- Conveyor


async def store_times(app: conveyor.App, skip: str) -> list[tuple[float, float]]:
    """(start, end) of every completed job of the store but `skip`, by start."""
    times, after = [], None
    while True:
        page = await app.backend.query(JobFilter(), after=after, limit=2000)
        times += [
            (job.started_at, job.finished_at)
            for job in page.jobs
            if job.id != skip and job.state is conveyor.JobState.COMPLETED
            if job.started_at is not None and job.finished_at is not None
        ]
        if page.next is None:
            return sorted(times)
        after = page.next


async def conveyor_run(kind: str, url: str, n: int, server: str | None, log: Path) -> Run:
    """One measurement of `kind` (plain, chord, chain) with `n` jobs on a fresh store `url`."""
    app = make_app(url)
    member, total, step = (app.registry.get(t) for t in ("member", "total", "step"))
    argv = [sys.executable, "-m", "conveyor", "worker", "bench.bench_workflow:app"]
    argv += ["-c", str(CONCURRENCY)]
    try:
        with running(start(argv, {"BENCH_WORKFLOW_URL": url}, log)) as worker:
            warm = await member.enqueue(-1)
            await warm.result(timeout=60)  # the worker is up and claiming
            cpu0, srv0, c0 = tree_cpu(worker.pid), await server_cpu(server), time.process_time()
            all0 = machine_cpu()
            t0 = time.time()
            if kind == "plain":
                await member.enqueue_many([(i,) for i in range(n)])
                want: int | None = None
                jobs = n
            elif kind == "chord":
                handle = await conveyor.chord((member.s(i) for i in range(n)), total.s()).enqueue()
                want, jobs = n * (n - 1) // 2, n + 1
            else:
                handle = await conveyor.chain(
                    step.s(0), *(step.s() for _ in range(n - 1))
                ).enqueue()
                want, jobs = n, n
            enqueue_s = time.time() - t0
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited {worker.returncode}; see {log}")
                if want is None:
                    counts = (await app.backend.counts("default")).get("default", {})
                    if counts.get(conveyor.JobState.COMPLETED, 0) >= n + 1:
                        break
                    await asyncio.sleep(0.05)  # counts is a scan on SQLite: poll gently
                else:
                    if await handle.status() in ENDED:
                        got = await handle.result(timeout=1)
                        if got != want:
                            raise RuntimeError(f"{kind} ended with {got!r}, not {want!r}")
                        break
                    await asyncio.sleep(0.02)
            else:
                raise TimeoutError(f"{kind} of {n:,} not done in 600 s; see {log}")
            worker_cpu = tree_cpu(worker.pid) - cpu0
            srv1, client_cpu = await server_cpu(server), time.process_time() - c0
            machine = machine_cpu() - all0
        times = await store_times(app, warm.id)
        if len(times) != jobs:
            raise RuntimeError(f"{kind}: {len(times):,} jobs completed, not {jobs:,}")
        first, last = times[0][0], max(end for _, end in times)
        callback = None
        if kind == "chord":  # the callback starts last: after every member ended
            cb_start, cb_end = times[-1]
            callback = (cb_start - max(end for _, end in times[:-1]), cb_end - cb_start)
        return Run(
            jobs=jobs,
            enqueue_s=enqueue_s,
            to_end_s=last - t0,
            span_s=last - first,
            worker_cpu_s=worker_cpu,
            server_cpu_s=None if srv0 is None or srv1 is None else srv1 - srv0,
            client_cpu_s=client_cpu,
            machine_cpu_s=machine,
            callback=callback,
            # A chain's steps run one at a time: from one's end to the next one's start.
            gaps=[b[0] - a[1] for a, b in itertools.pairwise(times)] if kind == "chain" else [],
        )
    finally:
        await app.aclose()


async def server_cpu(url: str | None) -> float | None:
    return None if url is None else (await server_cost(url))[1] / 1e6


# ---------------------------------------------------------------- Celery


async def celery_run(base: str, n: int, log: Path) -> Run:
    """Celery's chord of `n` members on redis-server `base` (broker db 2, results db 3)."""
    for db in (2, 3):
        redis.Redis.from_url(f"{base}/{db}").flushdb()
    env = {"BENCH_REDIS_URL": f"{base}/2", "BENCH_RESULT_URL": f"{base}/3"}
    module = "bench.peers_redis.celery_chord"
    with running(start([str(PEERS / "celery"), "-A", module, "worker"], env, log)) as worker:
        client = start(
            [str(PEERS / "python"), "-m", module, str(n)],
            env,
            log,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        with running(client):
            assert client.stdin is not None and client.stdout is not None
            if client.stdout.readline().strip() != "ready":
                raise RuntimeError(f"Celery client or worker failed; see {log}")
            cpu0, srv0, all0 = tree_cpu(worker.pid), await server_cpu(base), machine_cpu()
            client.stdin.write("go\n")
            client.stdin.flush()
            line = client.stdout.readline()
            worker_cpu = tree_cpu(worker.pid) - cpu0
            srv1, machine = await server_cpu(base), machine_cpu() - all0
            client.wait(30)
    if not line:
        raise RuntimeError(f"Celery chord failed; see {log}")
    got = json.loads(line)
    if got["total"] != n * (n - 1) // 2:
        raise RuntimeError(f"Celery's callback got {got['total']}, not {n * (n - 1) // 2}")
    return Run(
        jobs=n + 1,
        enqueue_s=got["enqueue_s"],
        to_end_s=got["to_callback_s"],
        span_s=got["to_callback_s"] - got["first_start_s"],
        worker_cpu_s=worker_cpu,
        server_cpu_s=None if srv0 is None or srv1 is None else srv1 - srv0,
        client_cpu_s=got["client_cpu_s"],
        machine_cpu_s=machine,
    )


# ---------------------------------------------------------------- report


def us_per_job(seconds: float | None, jobs: int) -> str:
    return "—" if seconds is None else f"{seconds / jobs * 1e6:,.0f}"


def describe(run: Run) -> str:
    busy = run.worker_cpu_s / run.to_end_s
    return (
        f"{run.jobs:,} jobs: enqueue {run.enqueue_s:.2f} s, to last end {run.to_end_s:.2f} s, "
        f"drain {run.rate:,.0f} jobs/s; worker CPU {us_per_job(run.worker_cpu_s, run.jobs)} "
        f"µs/job ({busy:.0%} of a core), redis-server {us_per_job(run.server_cpu_s, run.jobs)} "
        f"µs/job; other processes {run.others_cores:.2f} cores"
        + (
            ""
            if run.callback is None
            else f"; last member → callback start {run.callback[0] * 1e3:.0f} ms, "
            f"callback ran {run.callback[1] * 1e3:.0f} ms"
        )
    )


def summary(results: dict[tuple[str, str], list[Run]]) -> None:
    print("\n## Medians (range over runs)\n")
    print(
        "| store | workload | jobs | enqueue s | enqueue → last end s | drain jobs/s "
        "| worker CPU µs/job | worker busy | redis-server CPU µs/job | client CPU µs/job "
        "| other processes, cores |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (store, kind), runs in results.items():
        if not runs:
            continue
        jobs = runs[0].jobs
        cpu = med(runs, lambda r: r.worker_cpu_s)
        srv = med(runs, lambda r: r.server_cpu_s)
        client = med(runs, lambda r: r.client_cpu_s)
        busy = statistics.median(r.worker_cpu_s / r.to_end_s for r in runs)
        print(
            f"| {store} | {kind} | {jobs:,} | {spread(runs, lambda r: r.enqueue_s)} "
            f"| {spread(runs, lambda r: r.to_end_s)} | {spread(runs, lambda r: r.rate, 0)} "
            f"| {us_per_job(cpu, jobs)} | {busy:.0%} | {us_per_job(srv, jobs)} "
            f"| {us_per_job(client, jobs)} | {spread(runs, lambda r: r.others_cores)} |"
        )


def verdicts(results: dict[tuple[str, str], list[Run]]) -> None:
    print("\n## Against the issue's targets\n")
    print("| figure | value | target | verdict |")
    print("|---|---:|---|---|")

    def line(figure: str, value: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else "PASS" if ok else "MISS"
        print(f"| {figure} | {value} | {target} | {verdict} |")

    for store in ("sqlite", "redis"):
        plain, chord = results.get((store, "plain"), []), results.get((store, "chord"), [])
        if plain and chord:
            ratios = sorted(c.rate / p.rate for p, c in zip(plain, chord, strict=False))
            r = statistics.median(ratios)
            span = f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
            line(f"{store}: chord of {chord[0].jobs - 1:,}, time to the callback",
                 f"{spread(chord, lambda r: r.to_end_s)} s")  # fmt: skip
            line(
                f"{store}: plain drain of {plain[0].jobs:,}",
                f"{spread(plain, lambda r: r.rate, 0)}/s",
            )
            line(f"{store}: chord drain", f"{spread(chord, lambda r: r.rate, 0)}/s")
            line(f"{store}: chord drain / plain drain (paired by run)", f"{r:.2f}×{span}",
                 "≥ 0.50×", r >= 0.5)  # fmt: skip
            edge = statistics.median(
                (c.span_s - p.span_s) / (c.jobs - 1) * 1e6
                for p, c in zip(plain, chord, strict=False)
            )
            line(f"{store}: chord's extra time per dependency edge", f"{edge:,.1f} µs")
            tails = [r.callback for r in chord if r.callback is not None]
            line(f"{store}: chord, last member's end → callback start, callback run",
                 " / ".join(f"{statistics.median(t) * 1e3:,.0f}" for t in zip(*tails, strict=True))
                 + " ms")  # fmt: skip
        chain = results.get((store, "chain"), [])
        if chain:
            line(f"{store}: chain of {chain[0].jobs:,}, time per step (first start → last end)",
                 f"{spread(chain, lambda r: r.span_s / r.jobs * 1e3)} ms")  # fmt: skip
            gaps = sorted(g for r in chain for g in r.gaps)
            slow = sum(g > 0.1 for g in gaps)
            line(f"{store}: chain, a step's end → the next one's start, p50 / p99 / max",
                 f"{statistics.median(gaps) * 1e3:.2f} / {gaps[int(len(gaps) * 0.99)] * 1e3:.2f}"
                 f" / {gaps[-1] * 1e3:.1f} ms")  # fmt: skip
            line(f"{store}: chain, steps that waited > 100 ms to start", f"{slow} of {len(gaps)}")
    mine, celery = results.get(("redis", "chord"), []), results.get(("celery", "chord"), [])
    if mine and celery:
        c, m = med(celery, lambda r: r.to_end_s), med(mine, lambda r: r.to_end_s)
        assert c is not None and m is not None
        line("Celery chord, time to the callback", f"{spread(celery, lambda r: r.to_end_s)} s")
        line("Conveyor (Redis) chord, time to the callback", f"{m:.2f} s")
        line("Celery ÷ Conveyor, time to the callback", f"{c / m:.1f}×", "≥ 5×", c / m >= 5)


async def run(args: argparse.Namespace) -> None:
    n, chain_n = args.n, args.chain
    only = set(args.only.split(",")) if args.only else {"sqlite", "redis", "celery"}
    if "celery" in only and not (PEERS / "celery").exists():
        print(f"celery: skipped ({PEERS / 'celery'} is missing; see bench/README.md)")
        only.discard("celery")
    print(
        f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; "
        f"N = {n:,} (chord, plain), chain {chain_n:,} steps, {args.runs} run(s), -c {CONCURRENCY}"
    )
    results: dict[tuple[str, str], list[Run]] = {
        (store, kind): []
        for store in ("sqlite", "redis")
        if store in only
        for kind in ("plain", "chord", "chain")
    }
    if "celery" in only:
        results[("celery", "chord")] = []
    with tempfile.TemporaryDirectory(prefix="conveyor-workflow-") as tmp, RedisServer() as server:
        base = server.url.rsplit("/", 1)[0]
        log = Path(tmp) / "workers.log"
        for i in range(args.runs):
            for store, kind in results:
                size = chain_n if kind == "chain" else n
                try:
                    if store == "celery":
                        got = await celery_run(base, n, log)
                    elif store == "sqlite":
                        url = f"sqlite:///{tmp}/{kind}-{i}.db"
                        got = await conveyor_run(kind, url, size, None, log)
                    else:
                        redis.Redis.from_url(f"{base}/1").flushdb()
                        got = await conveyor_run(kind, f"{base}/1?prefix=wf", size, base, log)
                except Exception as exc:
                    print(f"run {i + 1} {store} {kind}: FAILED {type(exc).__name__}: {exc}")
                    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                    print("  worker log tail: " + tail.replace("\n", "\n    "))
                    continue
                results[(store, kind)].append(got)
                print(f"run {i + 1} {store:6} {kind:5} {describe(got)}", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    summary(results)
    verdicts(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1,000, chain 100, 1 run")
    parser.add_argument("--only", default="", help="comma-separated: sqlite, redis, celery")
    parser.add_argument("--runs", type=int, default=0, help="runs (default 3, --quick 1)")
    parser.add_argument("--n", type=int, default=0, help="chord members and plain jobs")
    parser.add_argument("--chain", type=int, default=0, help="chain steps")
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.n = args.n or (1_000 if args.quick else 10_000)
    args.chain = args.chain or (100 if args.quick else 1_000)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through `running`, which stops every process

    signal.signal(signal.SIGTERM, on_sigterm)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
