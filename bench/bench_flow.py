#!/usr/bin/env python
"""Flow control (issue 10): head-of-line, the cost of lanes, and global rate limits beside
Celery's and Dramatiq's on the same redis-server.

Run from the repository root:

    .venv/bin/python bench/bench_flow.py              # full: medians of 3, peers 20 s each
    .venv/bin/python bench/bench_flow.py --quick      # smoke: N = 4,000, 1 run, peers 6 s
    .venv/bin/python bench/bench_flow.py --only hol,cost        # without the peers

Sections (one redis-server for every Redis figure):

1. ``hol``: 10,000 jobs of a task limited to 10/s are enqueued first in a queue, 20,000
   unlimited ones behind them; one worker drains. The unlimited drain rate against the
   plain drain of the same 20,000 (SQLite and Redis).
2. ``cost``: the plain drain of 20,000 against the same drain through one lane whose
   concurrency (10,000) never binds, and through 100 fair groups of 200 jobs (enqueued
   group by group).
3. ``peers``: 4 worker processes, one task limited to 100 starts/s with a backlog, and
   unlimited jobs behind it in the same queue. Conveyor ``rate_limit="100/s"``, Celery 5.7
   ``rate_limit="100/s"`` (a bucket per worker node: 4 nodes of ``-c 1``, and 1 node of
   ``-c 4``), Dramatiq 2.2 ``WindowRateLimiter(limit=100, window=1)`` and
   ``ConcurrentRateLimiter(limit=1)`` around a 10 ms body (both raise, and the Retries
   middleware re-enqueues with backoff). Each run is time-boxed: 20 s (6 s with --quick)
   from the first start. Start times are recorded by the tasks (bench/peers_redis/flow_probe.py).

Sections 1-2: per measurement a fresh store (a SQLite file; database 1 of the redis-server),
one ``python -m conveyor worker bench.bench_flow:app -c 64`` process, warmed up by one job;
the queue is paused, the jobs enqueued, then resumed; the drain is the measured jobs' first
start → last end from the store's own timestamps. Runs interleave the variants. CPU per job
is the worker's process tree and redis-server (``INFO cpu``) over the drain.
Section 3 runs the peers from ``.venv-peers`` (see bench/README.md); it is skipped without it.
It prints tables and exits 0 whether targets are met or not: it is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis  # noqa: E402

import conveyor  # noqa: E402
from bench.bench_redis import server_cost  # noqa: E402
from bench.peers_redis import flow_probe  # noqa: E402
from conveyor.backends.base import ClaimRequest, JobFilter  # noqa: E402
from conveyor.job import Completed  # noqa: E402
from conveyor.testing.redis_server import RedisServer  # noqa: E402

PEERS = ROOT / ".venv-peers" / "bin"
CONCURRENCY = 64
HOL_RATE = 10  # the head-of-line section's limited task: starts per second
WIDE = 10_000  # a concurrency that never binds with -c 64
GROUPS = 100
PEER_RATE = 100  # the peers section's global limit, starts per second
PEER_PROCESSES = 4
VARIANTS = ("plain", "hol", "wide", "groups")


def make_app(url: str) -> conveyor.App:
    """`member`: the measured no-op; `limited`: 10 starts/s; `wide`: one lane, concurrency
    10,000; `grouped`: fair groups by its first argument."""
    app = conveyor.App(url)

    @app.task
    async def member(i: int) -> None:
        return None

    @app.task(rate_limit=f"{HOL_RATE}/s")
    async def limited(i: int) -> None:
        return None

    @app.task(concurrency=WIDE)
    async def wide(i: int) -> None:
        return None

    @app.task(group="{g}")
    async def grouped(g: str, i: int) -> None:
        return None

    return app


def __getattr__(name: str) -> conveyor.App:
    # `python -m conveyor worker bench.bench_flow:app` builds the app from the environment.
    if name == "app":
        app = make_app(os.environ["BENCH_FLOW_URL"])
        globals()["app"] = app
        return app
    raise AttributeError(name)


# ---------------------------------------------------------------- processes


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A process in its own session (so its children stop with it), logging to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL to what is left after 5 s."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # pool children left behind, or a stuck worker
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@contextlib.contextmanager
def running(procs: list[subprocess.Popen[bytes]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    try:
        yield procs
    finally:
        for proc in procs:
            stop(proc)


def tree_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of processes and their live children."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = p.cpu_times()
                    total += t.user + t.system
    return total


async def server_cpu(url: str | None) -> float:
    return 0.0 if url is None else (await server_cost(url))[1] / 1e6


# ---------------------------------------------------------------- sections 1-2: Conveyor drains


@dataclass
class Drain:
    jobs: int
    span_s: float  # the measured jobs' first start → last end (store timestamps)
    worker_cpu_s: float
    server_cpu_s: float
    limited_started: int = 0  # hol: limited jobs that started within the span

    @property
    def rate(self) -> float:
        return self.jobs / self.span_s


def calls(variant: str, n: int) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """(task, calls) to enqueue, in order; the measured task's calls come last."""
    if variant == "plain":
        return [("member", [(i,) for i in range(n)])]
    if variant == "hol":
        return [("limited", [(i,) for i in range(n // 2)]), ("member", [(i,) for i in range(n)])]
    if variant == "wide":
        return [("wide", [(i,) for i in range(n)])]
    per = n // GROUPS
    return [("grouped", [(f"g{g}", i) for g in range(GROUPS) for i in range(per)])]


async def times_of(app: conveyor.App, task: str, skip: str = "") -> list[tuple[float, float]]:
    """(start, end) of the completed jobs of `task`, but job `skip`."""
    out, after = [], None
    flt = JobFilter(task=task, state=conveyor.JobState.COMPLETED)
    while True:
        page = await app.backend.query(flt, after=after, limit=5000)
        out += [
            (j.started_at, j.finished_at)
            for j in page.jobs
            if j.started_at is not None and j.finished_at is not None and j.id != skip
        ]
        if page.next is None:
            return out
        after = page.next


async def drain(variant: str, url: str, n: int, server: str | None, log: Path) -> Drain:
    """One measurement of `variant` on the fresh store `url`."""
    app = make_app(url)
    batches = calls(variant, n)
    measured = batches[-1][0]
    jobs = len(batches[-1][1])
    argv = [sys.executable, "-m", "conveyor", "worker", "bench.bench_flow:app"]
    argv += ["-c", str(CONCURRENCY)]
    try:
        with running([start(argv, {"BENCH_FLOW_URL": url}, log)]) as (worker,):
            warm = await app.registry.get("member").enqueue(-1)
            await warm.result(timeout=60)  # the worker is up and claiming
            await app.inspector.pause("default")
            for task, args in batches:
                t = app.registry.get(task)
                for i in range(0, len(args), 5_000):
                    await t.enqueue_many(args[i : i + 5_000])
            cpu0, srv0 = tree_cpu([worker.pid]), await server_cpu(server)
            await app.inspector.resume("default")
            deadline = time.monotonic() + 300
            want = jobs + (1 if measured == "member" else 0)
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{variant}: not drained in 300 s; see {log}")
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited {worker.returncode}; see {log}")
                await asyncio.sleep(0.05)
                counts = (await app.backend.counts("default")).get("default", {})
                if counts.get(conveyor.JobState.COMPLETED, 0) < want:
                    continue
                times = await times_of(app, measured, warm.id)
                if len(times) >= jobs:
                    break
            worker_cpu = tree_cpu([worker.pid]) - cpu0
            server_cpu_s = await server_cpu(server) - srv0
        first, last = min(s for s, _ in times), max(e for _, e in times)
        limited = 0
        if variant == "hol":
            limited = sum(first <= s <= last for s, _ in await times_of(app, "limited"))
        return Drain(len(times), last - first, worker_cpu, server_cpu_s, limited)
    finally:
        await app.aclose()


@dataclass
class Loop:
    jobs: int
    claims: int
    claim_s: float
    settle_s: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.jobs / (self.claim_s + self.settle_s)


async def store_loop(variant: str, url: str, n: int) -> Loop:
    """The store alone, in this process: `claim` 64 → `settle` them completed, until the
    measured jobs are done (no worker, no handler): what the variant costs the store."""
    app = make_app(url)
    try:
        for task, args in calls(variant, n):
            t = app.registry.get(task)
            for i in range(0, len(args), 5_000):
                await t.enqueue_many(args[i : i + 5_000])
        backend = app.backend
        request = ClaimRequest(queues=("default",), limit=CONCURRENCY, lease_for=60, worker="b")
        done = claims = 0
        claim_s = settle_s = 0.0
        cpu0 = time.process_time()
        while done < n:
            t0 = time.perf_counter()
            leases = await backend.claim(request)
            t1 = time.perf_counter()
            claims += 1
            claim_s += t1 - t0
            if not leases:
                raise RuntimeError(f"{variant}: claim gave nothing with {n - done:,} to go")
            await backend.settle([(lease, Completed(result=None)) for lease in leases])
            settle_s += time.perf_counter() - t1
            done += sum(lease.job.task != "limited" for lease in leases)
        return Loop(done, claims, claim_s, settle_s, time.process_time() - cpu0)
    finally:
        await app.aclose()


# ---------------------------------------------------------------- section 3: peers


@dataclass(frozen=True)
class Peer:
    name: str
    module: str  # bench.peers_redis.<module>: its tasks and its enqueue CLI
    db: int
    env: tuple[tuple[str, str], ...] = ()
    note: str = ""

    def workers(self, url: str) -> list[list[str]]:
        py = str(PEERS / "python")
        mod = f"bench.peers_redis.{self.module}"
        if self.module == "flow_conveyor":
            argv = [py, "-m", "conveyor", "worker", f"{mod}:app", "-c", str(CONCURRENCY)]
            return [[*argv, "-p", str(PEER_PROCESSES)]]
        if self.module == "flow_dramatiq":
            return [[str(PEERS / "dramatiq"), mod, "-p", str(PEER_PROCESSES)]]
        celery = [str(PEERS / "celery"), "-A", mod, "worker"]
        if self.name == "celery, 1 node -c 4":
            return [[*celery, "-c", str(PEER_PROCESSES), "-n", "flow0@%h"]]
        return [[*celery, "-c", "1", "-n", f"flow{i}@%h"] for i in range(PEER_PROCESSES)]


PEER_SET = (
    Peer("conveyor", "flow_conveyor", 9, note='rate_limit="100/s" (burst 100), -p 4 -c 64'),
    Peer("celery, 4 nodes -c 1", "flow_celery", 10, note='rate_limit="100/s", prefork'),
    Peer("celery, 1 node -c 4", "flow_celery", 10, note='rate_limit="100/s", prefork'),
    Peer(
        "dramatiq window",
        "flow_dramatiq",
        11,
        (("BENCH_FLOW_LIMITER", "window"),),
        "WindowRateLimiter(limit=100, window=1), -p 4 (8 threads each)",
    ),
    Peer(
        "dramatiq concurrent",
        "flow_dramatiq",
        11,
        (("BENCH_FLOW_LIMITER", "concurrent"),),
        "ConcurrentRateLimiter(limit=1) around a 10 ms body, -p 4",
    ),
)


@dataclass
class PeerRun:
    enqueued: tuple[int, int]  # limited, free
    enqueue_s: float
    window_s: float
    starts: list[float]  # limited starts inside the window, sorted
    free_done: int
    free_span_s: float
    worker_cpu_s: float
    server_cpu_s: float
    t0: float  # the first start of any job: the window's beginning
    retries: int  # Dramatiq: limited attempts refused and re-enqueued ("Retrying message")

    @property
    def rate(self) -> float:
        return len(self.starts) / self.window_s

    def worst(self, skip: float = 0.0) -> int:
        """Most limited starts in any 1-s window [t, t + 1) starting at a start at least
        `skip` s after the first one (sliding)."""
        s = self.starts
        if not s:
            return 0
        lo = s[0] + skip
        return max(
            (bisect.bisect_left(s, t + 1.0) - i for i, t in enumerate(s) if t >= lo), default=0
        )

    def per_second(self) -> list[int]:
        """Limited starts in each second of the window, from the first start of any job."""
        out = [0] * max(1, int(self.window_s + 0.999))
        for t in self.starts:
            out[min(len(out) - 1, int(t - self.t0))] += 1
        return out

    @property
    def free_rate(self) -> float:
        return self.free_done / self.free_span_s if self.free_span_s > 0 else 0.0

    @property
    def jobs_run(self) -> int:
        return len(self.starts) + self.free_done


def read_probe(probe: redis.Redis) -> tuple[list[float], int, float, float]:
    """Limited starts (sorted), and the unlimited jobs' count, first start, last end."""
    starts = sorted(float(x) for x in probe.lrange(flow_probe.STARTS, 0, -1))
    count, first, last = 0, float("inf"), 0.0
    for value in probe.hvals(flow_probe.FREE):
        c, f, e = value.split()
        count, first, last = count + int(c), min(first, float(f)), max(last, float(e))
    return starts, count, first, last


def count_in(log: Path, text: str) -> int:
    return log.read_text(errors="replace").count(text) if log.exists() else 0


def enqueue_peer(
    peer: Peer, sizes: tuple[int, int], mix: str, env: dict[str, str], log: Path
) -> float:
    """The peer's enqueue CLI in the peers' venv (`mix`: the limited backlog at the head,
    or spread among the unlimited jobs; see `flow_probe.plan`); the seconds it reports."""
    argv = [str(PEERS / "python"), "-m", f"bench.peers_redis.{peer.module}", *map(str, sizes)]
    argv.append(mix)
    with open(log, "ab") as err:
        client = subprocess.run(
            argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.PIPE, stderr=err, timeout=300, check=False,
        )  # fmt: skip
    if client.returncode != 0:
        raise RuntimeError(f"{peer.name}: enqueue failed; see {log}")
    return float(client.stdout.decode().strip().splitlines()[-1])


async def peer_run(
    peer: Peer, base: str, sizes: tuple[int, int], mix: str, window: float, log: Path
) -> PeerRun:
    url, probe_url = f"{base}/{peer.db}", f"{base}/15"
    main, probe = redis.Redis.from_url(url), redis.Redis.from_url(probe_url)
    main.flushdb()
    probe.flushdb()
    env = {"BENCH_REDIS_URL": url, "BENCH_PROBE_URL": probe_url, **dict(peer.env)}
    env["BENCH_FLOW_RATE"] = str(PEER_RATE)
    enqueue_s = enqueue_peer(peer, sizes, mix, env, log)
    procs = [start(argv, env, log) for argv in peer.workers(url)]
    with running(procs):
        deadline = time.monotonic() + 120
        while True:  # wait for the first start (worker start-up is not measured)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{peer.name}: no job started in 120 s; see {log}")
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{peer.name}: a worker exited; see {log}")
            if probe.exists(flow_probe.STARTS) or probe.exists(flow_probe.FREE):
                break
            await asyncio.sleep(0.02)
        cpu0, srv0 = tree_cpu([p.pid for p in procs]), await server_cpu(base)
        await asyncio.sleep(window)
        cpu, srv = tree_cpu([p.pid for p in procs]) - cpu0, await server_cpu(base) - srv0
        stopped = time.time()
    starts, free_done, free_first, free_last = read_probe(probe)
    first = min([*starts[:1], free_first])
    end = min(stopped, first + window)
    starts = [s for s in starts if s <= end]
    return PeerRun(
        enqueued=sizes,
        enqueue_s=enqueue_s,
        window_s=end - first,
        starts=starts,
        free_done=free_done,
        free_span_s=max(0.0, free_last - free_first),
        worker_cpu_s=cpu,
        server_cpu_s=srv,
        t0=first,
        retries=count_in(log, "Retrying message"),
    )


# ---------------------------------------------------------------- report


def spread(vals: list[float], digits: int = 0) -> str:
    m, lo, hi = statistics.median(vals), min(vals), max(vals)
    return f"{m:,.{digits}f}" + (f" ({lo:,.{digits}f}-{hi:,.{digits}f})" if len(vals) > 1 else "")


def us(seconds: float, jobs: int) -> str:
    return f"{seconds / jobs * 1e6:,.0f}" if jobs else "—"


def report_drains(results: dict[tuple[str, str], list[Drain]], n: int) -> None:
    print("\n## Sections 1-2: drains of one worker (-c 64), medians (range)\n")
    print("| store | variant | jobs | drain jobs/s | ÷ plain (paired) | target | verdict "
          "| worker CPU µs/job | redis-server CPU µs/job |")  # fmt: skip
    print("|---|---|---:|---:|---:|---|---|---:|---:|")
    names = {
        "plain": "plain",
        "hol": f"unlimited behind {n // 2:,} limited to {HOL_RATE}/s",
        "wide": f"one lane, concurrency {WIDE:,} (never binds)",
        "groups": f"{GROUPS} fair groups of {n // GROUPS:,}",
    }
    for store in ("sqlite", "redis"):
        plain = results.get((store, "plain"), [])
        for variant in VARIANTS:
            runs = results.get((store, variant), [])
            if not runs:
                continue
            ratio, target, verdict = "", "", ""
            if variant != "plain" and plain:
                rs = [r.rate / p.rate for p, r in zip(plain, runs, strict=False)]
                ratio, target = spread(rs, 2) + "×", "≥ 0.80×"
                verdict = "PASS" if statistics.median(rs) >= 0.8 else "MISS"
            cpu = statistics.median(r.worker_cpu_s / r.jobs for r in runs) * 1e6
            srv = statistics.median(r.server_cpu_s / r.jobs for r in runs) * 1e6
            print(
                f"| {store} | {names[variant]} | {runs[0].jobs:,} "
                f"| {spread([r.rate for r in runs])} | {ratio} | {target} | {verdict} "
                f"| {cpu:,.0f} | {srv:,.0f} |" if store == "redis" else
                f"| {store} | {names[variant]} | {runs[0].jobs:,} "
                f"| {spread([r.rate for r in runs])} | {ratio} | {target} | {verdict} "
                f"| {cpu:,.0f} | — |"
            )  # fmt: skip
        hol = results.get((store, "hol"), [])
        if hol:
            got = "; ".join(
                f"{r.limited_started} (≤ {HOL_RATE} + {HOL_RATE}/s × {r.span_s:.2f} s)" for r in hol
            )
            print(f"| {store} | limited jobs started during that drain | | {got} | | | | | |")


def report_loops(results: dict[tuple[str, str], list[Loop]]) -> None:
    print("\n## The store alone: claim 64 → settle, in-process, no worker (medians)\n")
    print("| store | variant | jobs/s | claim µs/job | settle µs/job | jobs per claim "
          "| time ÷ plain |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for (store, variant), runs in results.items():
        plain = results.get((store, "plain"), [])
        per = statistics.median((r.claim_s + r.settle_s) / r.jobs for r in runs)
        base = statistics.median((r.claim_s + r.settle_s) / r.jobs for r in plain) if plain else 0
        print(
            f"| {store} | {variant} | {spread([r.rate for r in runs])} "
            f"| {statistics.median(r.claim_s / r.jobs for r in runs) * 1e6:,.1f} "
            f"| {statistics.median(r.settle_s / r.jobs for r in runs) * 1e6:,.1f} "
            f"| {statistics.median(r.jobs / r.claims for r in runs):.1f} "
            f"| {per / base if base else 0:.2f}× |"
        )


def report_peers(results: dict[tuple[str, str], list[PeerRun]], window: float) -> None:
    print(
        f"\n## Section 3: a global limit of {PEER_RATE} starts/s, {PEER_PROCESSES} worker "
        f"processes, {window:.0f} s from the first start\n"
    )
    print("| system | limiter | limited jobs | enqueued limited + unlimited | achieved rate /s "
          "| worst 1-s window | worst after the 1st s | unlimited jobs/s (done) "
          "| refused attempts | worker CPU µs/job | redis-server CPU µs/job |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, mix), runs in results.items():
        peer = next(p for p in PEER_SET if p.name == name)
        r = runs[0]
        where = "at the head" if mix == "head" else "mixed in"
        print(
            f"| {peer.name} | {peer.note} | {where} | {r.enqueued[0]:,} + {r.enqueued[1]:,} "
            f"| {spread([x.rate for x in runs], 1)} | {spread([float(x.worst()) for x in runs])} "
            f"| {spread([float(x.worst(1.0)) for x in runs])} "
            f"| {spread([x.free_rate for x in runs])} ({r.free_done:,}) | {r.retries:,} "
            f"| {us(r.worker_cpu_s, r.jobs_run)} | {us(r.server_cpu_s, r.jobs_run)} |"
        )


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> None:
    only = set(args.only.split(",")) if args.only else {"hol", "cost", "store", "peers"}
    stores = [s for s in ("sqlite", "redis") if s in args.stores.split(",")]
    if "peers" in only and not (PEERS / "celery").exists():
        print(f"peers: skipped ({PEERS / 'celery'} is missing; see bench/README.md)")
        only.discard("peers")
    variants = ["plain"] if {"hol", "cost"} & only else []
    variants += ["hol"] if "hol" in only else []
    variants += ["wide", "groups"] if "cost" in only else []
    n = args.n
    print(
        f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; load "
        f"{os.getloadavg()[0]:.2f}; N = {n:,}; {args.runs} run(s); peers window {args.window:g} s"
    )
    t_all = time.monotonic()
    drains: dict[tuple[str, str], list[Drain]] = {}
    peers: dict[tuple[str, str], list[PeerRun]] = {}
    loops: dict[tuple[str, str], list[Loop]] = {}
    keep = tempfile.mkdtemp(prefix="conveyor-flow-") if args.keep else None
    tmpdir = contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="flow-")
    with tmpdir as tmp, RedisServer() as server:
        if keep:
            print(f"logs and stores kept in {keep}")
        base = server.url.rsplit("/", 1)[0]
        log = Path(tmp) / "workers.log"
        for i in range(args.runs if variants else 0):
            for store in stores:
                for variant in variants:
                    try:
                        if store == "sqlite":
                            url = f"sqlite:///{tmp}/{variant}-{i}.db"
                            got = await drain(variant, url, n, None, log)
                        else:
                            redis.Redis.from_url(f"{base}/1").flushdb()
                            got = await drain(variant, f"{base}/1?prefix=flow", n, base, log)
                    except Exception as exc:
                        print(f"run {i + 1} {store} {variant}: FAILED {type(exc).__name__}: {exc}")
                        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                        print("  log tail: " + tail.replace("\n", "\n    "))
                        continue
                    drains.setdefault((store, variant), []).append(got)
                    extra = f", {got.limited_started} limited started" if variant == "hol" else ""
                    print(
                        f"run {i + 1} {store:6} {variant:6} {got.jobs:,} in {got.span_s:.2f} s: "
                        f"{got.rate:,.0f}/s; worker {us(got.worker_cpu_s, got.jobs)} µs/job"
                        + (
                            f", redis-server {us(got.server_cpu_s, got.jobs)} µs/job"
                            if store == "redis"
                            else ""
                        )
                        + extra,
                        flush=True,
                    )
        for i in range(args.runs if "store" in only else 0):
            for store in stores:
                for variant in VARIANTS:
                    if store == "sqlite":
                        url = f"sqlite:///{tmp}/loop-{variant}-{i}.db"
                    else:
                        redis.Redis.from_url(f"{base}/1").flushdb()
                        url = f"{base}/1?prefix=loop"
                    try:
                        lp = await store_loop(variant, url, n)
                    except Exception as exc:
                        print(f"store loop {store} {variant}: FAILED {type(exc).__name__}: {exc}")
                        continue
                    loops.setdefault((store, variant), []).append(lp)
                    print(
                        f"store loop {i + 1} {store:6} {variant:6} {lp.rate:,.0f}/s, claim "
                        f"{us(lp.claim_s, lp.jobs)} + settle {us(lp.settle_s, lp.jobs)} µs/job, "
                        f"{lp.jobs / lp.claims:.1f} jobs/claim",
                        flush=True,
                    )
        for mix in args.mix.split(",") if "peers" in only else []:
            for peer in PEER_SET:
                if args.peers and not any(p in peer.name for p in args.peers.split(",")):
                    continue
                sizes = peer_sizes(peer, args)
                slug = "".join(c if c.isalnum() else "-" for c in peer.name)
                plog = Path(tmp) / f"peer-{slug}-{mix}.log"
                try:
                    got_p = await peer_run(peer, base, sizes, mix, args.window, plog)
                except Exception as exc:
                    print(f"peers {peer.name} ({mix}): FAILED {type(exc).__name__}: {exc}")
                    tail = plog.read_text(errors="replace")[-1500:] if plog.exists() else ""
                    print("  log tail: " + tail.replace("\n", "\n    "))
                    continue
                peers.setdefault((peer.name, mix), []).append(got_p)
                print(
                    f"peers {peer.name} ({mix}): enqueue {got_p.enqueue_s:.1f} s; "
                    f"{len(got_p.starts):,} limited starts in {got_p.window_s:.1f} s = "
                    f"{got_p.rate:,.1f}/s, worst 1-s window {got_p.worst()}, after the 1st s "
                    f"{got_p.worst(1.0)}; unlimited {got_p.free_done:,} at "
                    f"{got_p.free_rate:,.0f}/s; CPU µs/job worker "
                    f"{us(got_p.worker_cpu_s, got_p.jobs_run)}, redis-server "
                    f"{us(got_p.server_cpu_s, got_p.jobs_run)}",
                    flush=True,
                )
                print(f"  limited starts per second: {got_p.per_second()}")
                if got_p.retries:
                    print(f"  limited attempts refused and retried: {got_p.retries:,}")
                if args.keep:
                    print(f"  log: {plog}")
    print(f"load at the end {os.getloadavg()[0]:.2f}; {time.monotonic() - t_all:.0f} s")
    if drains:
        report_drains(drains, n)
    if loops:
        report_loops(loops)
    if peers:
        report_peers(peers, args.window)


def peer_sizes(peer: Peer, args: argparse.Namespace) -> tuple[int, int]:
    """Backlogs: enough limited jobs for 4× the limit over the window, and enough unlimited
    ones for about the window at each system's speed (Celery and Dramatiq enqueue at
    ~1-2k/s, so theirs is smaller)."""
    limited = int(PEER_RATE * PEER_PROCESSES * args.window * 1.25)
    free = {"flow_conveyor": 8_000, "flow_dramatiq": 2_000, "flow_celery": 800}[peer.module]
    return limited, int(free * args.window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 4,000, 1 run, peers 6 s")
    parser.add_argument("--only", default="", help="comma-separated: hol, cost, store, peers")
    parser.add_argument("--stores", default="sqlite,redis", help="for hol and cost")
    parser.add_argument("--peers", default="", help="peer names containing these, e.g. celery")
    parser.add_argument("--runs", type=int, default=0, help="runs of hol/cost (default 3)")
    parser.add_argument("--n", type=int, default=0, help="unlimited jobs per drain")
    parser.add_argument("--window", type=float, default=0, help="seconds per peer run")
    parser.add_argument("--mix", default="head,mixed", help="peers: head and/or mixed")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.n = args.n or (4_000 if args.quick else 20_000)
    args.window = args.window or (6.0 if args.quick else 20.0)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through `running`, which stops every process

    signal.signal(signal.SIGTERM, on_sigterm)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
