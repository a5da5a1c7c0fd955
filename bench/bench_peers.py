#!/usr/bin/env python
"""Conveyor on Redis beside its peers (Celery, Dramatiq, RQ, arq, SAQ, Taskiq, streaQ): one
redis-server, the same no-op task, each system's documented default worker, side by side.

Run from the repository root with the peers' venv (see bench/README.md, "Peer comparison"):

    .venv-peers/bin/python bench/bench_peers.py                    # full: medians of 3
    .venv-peers/bin/python bench/bench_peers.py --quick            # smoke: 1 run, small N
    .venv-peers/bin/python bench/bench_peers.py --only conveyor,dramatiq

Columns: single enqueue/s, bulk enqueue/s (+ API), drain with 1 and 2 worker processes,
idle latency enqueue→start p50/p99. Then Conveyor's ratio to the best peer per column and
PASS/MISS against the issue's targets. A system that fails to import or run gets its error
in its row; the run goes on. Every process started here is stopped before exit (also on
Ctrl-C or SIGTERM). It exits 0 whether targets are met or not: it is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from conveyor.testing.redis_server import RedisServer  # noqa: E402

SYSTEMS = ["conveyor", "celery", "dramatiq", "rq", "arq", "saq", "taskiq", "streaq"]
DB = {name: i + 1 for i, name in enumerate(SYSTEMS)}  # each system its own database
PROBE_DB = 15
HITS, LAT = "peerbench:hits", "peerbench:lat"  # bench/peers_redis/probe.py

STARTUP_TIMEOUT = 60.0  # seconds for a worker to start its first job
STALL_TIMEOUT = 30.0  # seconds without progress before a drain is called failed

PROCS: list[subprocess.Popen[bytes]] = []  # every worker process we started and not stopped
SERVER: list[RedisServer] = []  # stopped in main()'s finally too (idempotent)
LOGDIR = Path(tempfile.mkdtemp(prefix="conveyor-peers-"))


# ---------------------------------------------------------------- processes


def start_workers(ad: Any, processes: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i, argv in enumerate(ad.worker_cmd(processes)):
        log = open(LOGDIR / f"{ad.name}-{processes}p-{i}.log", "ab")  # noqa: SIM115
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        log.flush()
        # Own session: stopping kills the whole group (pool children included).
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        proc.log_path = log.name  # type: ignore[attr-defined]
        PROCS.append(proc)
        procs.append(proc)
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]], grace: float = 3.0) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        # The group may outlive its leader (pool children): kill what is left either way.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc in PROCS:
            PROCS.remove(proc)


def stop_all() -> None:
    stop_workers(list(PROCS), grace=2.0)


def log_tail(procs: list[subprocess.Popen[bytes]], chars: int = 600) -> str:
    out = []
    for proc in procs:
        path = getattr(proc, "log_path", None)
        if path and Path(path).exists():
            out.append(Path(path).read_text(errors="replace")[-chars:])
    return " | ".join(x.strip().replace("\n", " ⏎ ") for x in out)


# ---------------------------------------------------------------- results


@dataclass
class Result:
    name: str
    error: str = ""
    single: list[float] = field(default_factory=list)
    bulk: list[float] = field(default_factory=list)
    drain1: list[float] = field(default_factory=list)
    drain2: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    last_note: dict[str, str] = field(default_factory=dict)  # drain notes of the last run
    bulk_api: str = ""

    def fail(self, what: str, exc: BaseException) -> None:
        msg = f"{what}: {type(exc).__name__}: {str(exc).strip()[:300]}"
        self.notes.append(msg)
        print(f"    ! {self.name} {msg}", flush=True)
        if os.environ.get("BENCH_TRACE"):
            traceback.print_exc()


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- measurements


class Bench:
    def __init__(self, base_url: str, n: int, single_n: int, samples: int, window: float):
        self.base = base_url.rsplit("/", 1)[0]  # redis://127.0.0.1:port
        self.n, self.single_n, self.samples, self.window = n, single_n, samples, window
        self.probe = redis.Redis.from_url(f"{self.base}/{PROBE_DB}")
        self.dbs = {name: redis.Redis.from_url(f"{self.base}/{DB[name]}") for name in SYSTEMS}

    def url(self, name: str) -> str:
        url = f"{self.base}/{DB[name]}"
        return f"{url}?prefix=bench" if name == "conveyor" else url

    def env(self, ad: Any) -> dict[str, str]:
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return {
            **os.environ,
            "PYTHONPATH": path,
            "BENCH_REDIS_URL": ad.url,
            "BENCH_PROBE_URL": f"{self.base}/{PROBE_DB}",
            **ad.env,
        }

    async def flush(self, ad: Any) -> None:
        self.dbs[ad.name].flushdb()
        self.probe.flushdb()
        await ad.reset()

    def hits(self) -> tuple[int, float, float, int]:
        """(jobs done, first start, last end, processes that ran jobs) from the probe."""
        count, first, last, pids = 0, float("inf"), 0.0, set()
        for key, value in self.probe.hgetall(HITS).items():
            c, f, la = value.split()
            count += int(c)
            first = min(first, float(f))
            last = max(last, float(la))
            pids.add(key.split(b":")[0])
        return count, first, last, len(pids)

    async def single(self, ad: Any) -> float:
        await self.flush(ad)
        start = time.perf_counter()
        for _ in range(self.single_n):
            await ad.enqueue_one()
        rate = self.single_n / (time.perf_counter() - start)
        await self.flush(ad)
        return rate

    async def bulk(self, ad: Any, n: int) -> float:
        start = time.perf_counter()
        await ad.enqueue_bulk(n)
        return n / (time.perf_counter() - start)

    async def drain(self, ad: Any, processes: int, n: int) -> tuple[float, str, int]:
        """Workers on a backlog of about `n` queued jobs: done / (last end − first start).

        Stops at `n` completions, or `window` seconds after the first job started, or when
        ≥ 90% are done and nothing moved for 1.5 s (jobs a previous, killed worker held
        come back late or never), whichever comes first; the note says which. Returns
        (rate, note, jobs done).
        """
        procs = start_workers(ad, processes, self.env(ad))
        count = 0
        try:
            t0 = time.monotonic()
            began = None
            progress_at, seen = t0, 0
            while True:
                await asyncio.sleep(0.05)
                count, first, last, pids = self.hits()
                now = time.monotonic()
                if count != seen:
                    progress_at, seen = now, count
                dead = [p for p in procs if p.poll() is not None]
                if dead and count < n:
                    raise RuntimeError(f"worker exited {dead[0].returncode}: {log_tail(dead)}")
                if count == 0:
                    if now - t0 > STARTUP_TIMEOUT:
                        raise TimeoutError(
                            f"no job started in {STARTUP_TIMEOUT:.0f} s: {log_tail(procs)}"
                        )
                    continue
                began = began or now
                note = ""
                if count >= n:
                    pass
                elif count >= 0.9 * n and now - progress_at > 1.5:
                    note = f"{count:,}/{n:,} then idle"
                elif now - progress_at > STALL_TIMEOUT:
                    raise TimeoutError(f"stalled at {count}/{n}: {log_tail(procs)}")
                elif now - began > self.window:
                    note = f"{count:,}/{n:,} in {self.window:.0f} s window"
                else:
                    continue
                if processes > 1 and not ad.env.get("BENCH_PROBE_DIRECT") and pids < processes:
                    note = ", ".join(filter(None, [note, f"jobs ran in {pids} process(es) only"]))
                return count / (last - first), note, count
        finally:
            stop_workers(procs)

    async def latency(self, ad: Any) -> tuple[float, float]:
        await self.flush(ad)
        procs = start_workers(ad, 1, self.env(ad))
        try:
            t0 = time.monotonic()
            # Warm-up: probes sent with `sent=0` until one runs (filtered out below).
            while not self.probe.llen(LAT):
                if procs[0].poll() is not None:
                    raise RuntimeError(f"worker exited: {log_tail(procs)}")
                if time.monotonic() - t0 > STARTUP_TIMEOUT:
                    raise TimeoutError(f"worker never started: {log_tail(procs)}")
                await ad.enqueue_stamp(0.0)
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # warm-up probes drained; worker idle
            for _ in range(self.samples):
                await asyncio.sleep(ad.latency_gap)
                await ad.enqueue_stamp(time.time())
            deadline = time.monotonic() + 15
            while True:
                lat = sorted(
                    float(x) * 1000 for x in self.probe.lrange(LAT, 0, -1) if float(x) < 1000
                )
                if len(lat) >= self.samples or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            if len(lat) < self.samples * 0.9:
                raise RuntimeError(f"only {len(lat)}/{self.samples} probes ran")
            return statistics.median(lat), lat[max(0, int(len(lat) * 0.99) - 1)]
        finally:
            stop_workers(procs)
            await self.flush(ad)


# ---------------------------------------------------------------- table


def fmt(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def print_table(results: list[Result], runs: int) -> None:
    head = ["system", "single/s", "bulk/s", "drain 1p/s", "drain 2p/s", "p50 ms", "p99 ms"]
    rows = []
    for r in results:
        rows.append(
            [
                r.name,
                fmt(med(r.single)),
                fmt(med(r.bulk)),
                fmt(med(r.drain1)),
                fmt(med(r.drain2)),
                fmt(med(r.p50), 2),
                fmt(med(r.p99), 2),
            ]
        )
    what = "median of 3" if runs == 3 else f"median of {runs}" if runs > 1 else "1 run"
    print(f"\n## Results ({what} each; N = see header)\n")
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nBulk API used / notes:")
    for r in results:
        notes = [*r.notes, *(f"{k} (last run): {v}" for k, v in r.last_note.items())]
        extra = "; ".join(dict.fromkeys(notes))
        print(f"  - {r.name}: {r.bulk_api or '—'}" + (f" — {extra}" if extra else ""))


def verdicts(results: list[Result]) -> None:
    conv = next((r for r in results if r.name == "conveyor"), None)
    peers = [r for r in results if r.name != "conveyor"]
    if conv is None or not peers:
        return

    def best(attr: str, low: bool = False) -> tuple[float | None, str]:
        vals = [(med(getattr(p, attr)), p.name) for p in peers if getattr(p, attr)]
        if not vals:
            return None, "—"
        return (min if low else max)(vals)

    print("\n## Conveyor against the issue's targets\n")
    print("| column | Conveyor | best peer | ratio | target | verdict |")
    print("|---|---:|---:|---:|---|---|")

    def line(
        col: str,
        mine: float | None,
        peer: tuple[float | None, str],
        ok: bool | None,
        target: str,
        digits: int = 0,
        low: bool = False,
    ) -> None:
        pv, pn = peer
        ratio = "—"
        if mine and pv:
            ratio = f"{(pv / mine) if low else (mine / pv):.2f}×"
        verdict = "n/a" if ok is None else "PASS" if ok else "MISS"
        print(
            f"| {col} | {fmt(mine, digits)} | {fmt(pv, digits)} ({pn}) | {ratio} | {target} "
            f"| {verdict} |"
        )

    c1, c2 = med(conv.drain1), med(conv.drain2)
    b1 = best("drain1")
    line(
        "drain 1p/s",
        c1,
        b1,
        None if c1 is None or b1[0] is None else c1 >= 3 * b1[0] and c1 >= 5000,
        "≥ 3× fastest peer and ≥ 5,000/s",
    )
    line(
        "drain 2p/s",
        c2,
        best("drain2"),
        None if c1 is None or c2 is None else c2 >= 1.7 * c1,
        f"≥ 1.7× Conveyor 1p ({fmt(None if c1 is None else 1.7 * c1)})",
    )
    cs, bs = med(conv.single), best("single")
    line(
        "single enqueue/s",
        cs,
        bs,
        None if cs is None or bs[0] is None else cs >= bs[0],
        "≥ fastest peer",
    )
    cb, bb = med(conv.bulk), best("bulk")
    line(
        "bulk enqueue/s",
        cb,
        bb,
        None if cb is None or bb[0] is None else cb >= 3 * bb[0] and cb >= 18000,
        "≥ 3× fastest peer and ≥ 18,000/s",
    )
    c50, b50 = med(conv.p50), best("p50", low=True)
    line(
        "latency p50 ms",
        c50,
        b50,
        None if c50 is None or b50[0] is None else c50 < b50[0],
        "below every peer",
        2,
        low=True,
    )
    c99, b99 = med(conv.p99), best("p99", low=True)
    line(
        "latency p99 ms",
        c99,
        b99,
        None if c99 is None or b99[0] is None else c99 < b99[0],
        "below every peer",
        2,
        low=True,
    )
    print(
        "\n(ratio: Conveyor ÷ best peer for rates; best peer ÷ Conveyor for latencies, so > 1× "
        "is Conveyor ahead in every row)"
    )


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> None:
    quick = args.quick
    runs = args.runs or (1 if quick else 3)
    n = args.n or (2_000 if quick else 20_000)
    single_n = 500 if quick else 2_000
    samples = 50 if quick else 200
    window = args.window or (4.0 if quick else 6.0)
    names = [s.strip() for s in args.only.split(",")] if args.only else SYSTEMS
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")

    t_start = time.monotonic()
    with RedisServer() as server:
        SERVER.append(server)
        bench = Bench(server.url, n, single_n, samples, window)
        print(
            f"redis-server {server.url}; python {sys.version.split()[0]} ({sys.executable}); "
            f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}"
        )
        print(
            f"single N={single_n:,}, bulk N={n:,}, drain N={n:,} (rq: fewer, see notes) with "
            f"a {window:.0f} s processing window, latency {samples} probes 20 ms apart "
            "(rq: 100 ms); "
            f"{runs} run(s); worker logs in {LOGDIR}"
        )

        results: dict[str, Result] = {}
        adapters: dict[str, Any] = {}
        for name in names:
            res = results[name] = Result(name)
            try:
                os.environ["BENCH_REDIS_URL"] = bench.url(name)
                os.environ["BENCH_PROBE_URL"] = f"{bench.base}/{PROBE_DB}"
                mod = importlib.import_module(f"bench.peers_redis.{name}_app")
                ad = mod.Adapter(bench.url(name))
                res.bulk_api = ad.bulk_api
                # Not under wait_for: that runs it in another task, and streaQ's client
                # context must be left in the context (task) it was entered in.
                await ad.open()
                await bench.flush(ad)
                adapters[name] = ad
                print(f"  {name}: worker defaults: {ad.defaults}", flush=True)
            except Exception as exc:
                res.error = f"{type(exc).__name__}: {exc}"
                res.fail("setup", exc)

        try:
            await run_all(bench, adapters, results, runs, n, t_start)
        finally:
            for ad in adapters.values():
                with contextlib.suppress(Exception):
                    await ad.close()
        ordered = [results[name] for name in names]
        for r in ordered:
            if r.error:
                r.notes.insert(0, f"FAILED: {r.error}")
        print_table(ordered, runs)
        verdicts(ordered)
        print(
            f"\nload average at end {os.getloadavg()[0]:.2f}; "
            f"total {time.monotonic() - t_start:.0f} s"
        )


async def run_all(
    bench: Bench,
    adapters: dict[str, Any],
    results: dict[str, Result],
    runs: int,
    n: int,
    t_start: float,
) -> None:
    for i in range(runs):
        print(f"\n# run {i + 1}/{runs} (elapsed {time.monotonic() - t_start:.0f} s)", flush=True)
        for name, ad in adapters.items():
            res = results[name]
            t0 = time.monotonic()
            await measure(bench, ad, res, n)
            print(
                f"  {name:<9} single {fmt(res.single[-1] if res.single else None):>7}  "
                f"bulk {fmt(res.bulk[-1] if res.bulk else None):>7}  "
                f"1p {fmt(res.drain1[-1] if res.drain1 else None):>7}  "
                f"2p {fmt(res.drain2[-1] if res.drain2 else None):>7}  "
                f"p50 {fmt(res.p50[-1] if res.p50 else None, 2):>6}  "
                f"p99 {fmt(res.p99[-1] if res.p99 else None, 2):>6} ms  "
                f"({time.monotonic() - t0:.0f} s)",
                flush=True,
            )


async def measure(bench: Bench, ad: Any, res: Result, n: int) -> None:
    async def step(what: str, coro: Any, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(coro, timeout)
        except Exception as exc:
            res.fail(what, exc)
            stop_all()
            with contextlib.suppress(Exception):
                await bench.flush(ad)
            return None

    rate = await step("single enqueue", bench.single(ad), 120)
    if rate is not None:
        res.single.append(rate)

    if ad.latency_gap != 0.02:
        res.notes.append(f"latency probes {ad.latency_gap * 1000:.0f} ms apart")
    drain_n = ad.drain_jobs or n
    if ad.drain_jobs:
        res.notes.append(f"drain on {drain_n:,} jobs")
    # 1p: the timed bulk enqueue of N is the backlog (RQ: a fresh, smaller one).
    # 2p: the jobs 1p left are kept and the queue is topped up by what 1p drained, with
    # the same bulk API (untimed): re-enqueueing 20,000 at a slow peer's ~1,000/s would
    # take most of the run's time budget.
    await bench.flush(ad)
    rate = await step("bulk enqueue", bench.bulk(ad, n), 180)
    if rate is not None:
        res.bulk.append(rate)
        if drain_n != n:
            await bench.flush(ad)
            await step("backlog", ad.enqueue_bulk(drain_n), 180)
        got = await step("drain 1p", bench.drain(ad, 1, drain_n), 300)
        if got is not None:
            res.drain1.append(got[0])
            if got[1]:
                res.last_note["1p"] = got[1]
            done = bench.hits()[0]  # workers stopped: include what finished after the poll
            bench.probe.flushdb()
            if done < drain_n:
                await step("backlog", ad.enqueue_bulk(done), 180)
            else:
                await bench.flush(ad)
                await step("backlog", ad.enqueue_bulk(drain_n), 180)
            got = await step("drain 2p", bench.drain(ad, 2, drain_n), 300)
            if got is not None:
                res.drain2.append(got[0])
                if got[1]:
                    res.last_note["2p"] = got[1]
    await bench.flush(ad)

    lat = await step("latency", bench.latency(ad), 180)
    if lat is not None:
        res.p50.append(lat[0])
        res.p99.append(lat[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run, small N")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SYSTEMS}")
    parser.add_argument("--runs", type=int, default=0, help="runs (default 3, --quick 1)")
    parser.add_argument("--n", type=int, default=0, help="bulk/drain jobs (default 20,000)")
    parser.add_argument(
        "--window",
        type=float,
        default=0.0,
        help="drain processing window, seconds (default 6, --quick 4)",
    )
    args = parser.parse_args()

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Our own handler for both, raising at once: asyncio.run's SIGINT handler only cancels
    # the main task, and a cancel that lands while a sync client (Celery, Dramatiq, RQ)
    # blocks the loop can be swallowed by wait_for (Python 3.11).
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping workers", file=sys.stderr)
    finally:
        stop_all()
        if SERVER:
            SERVER[0].stop()
        if not os.environ.get("BENCH_KEEP_LOGS"):
            import shutil

            shutil.rmtree(LOGDIR, ignore_errors=True)


if __name__ == "__main__":
    main()
