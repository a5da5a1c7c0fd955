#!/usr/bin/env python
"""Conveyor on SQLite: drain, enqueue, latency and memory against the issue's targets,
with Huey 3.5 (SqliteHuey) side by side and a raw-sqlite3 floor.

Run from the repository root:

    .venv/bin/python bench/bench_sqlite.py            # full run, a few minutes
    .venv/bin/python bench/bench_sqlite.py --quick    # smoke run, about a minute

Everything happens in a temporary directory that is removed at the end; every process this
script starts is stopped before it exits. It prints a table and exits 0 whether targets are
met or not (it is a report, not a test). See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import psutil  # noqa: E402

from bench.peers import huey_peer  # noqa: E402
from bench.peers.conveyor_app import BenchApp, make_app  # noqa: E402

PY = sys.executable
BIN = os.path.dirname(PY)
CONCURRENCY = 64


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    drain: int  # jobs per drain run (targets 1 and Huey)
    enqueue: int  # jobs per enqueue_many figure
    single: int  # sequential single enqueues per figure
    concurrent_each: int  # enqueues per coroutine, 100 coroutines
    latency: int  # latency samples
    rss: int  # jobs drained while sampling RSS
    repeats: int  # CLI drain repetitions (median reported)
    in_repeats: int  # in-process drain and enqueue repetitions (median reported)
    huey: int  # jobs per Huey drain run


FULL = Sizes(20_000, 20_000, 5_000, 200, 300, 200_000, 5, 3, 20_000)
QUICK = Sizes(2_000, 5_000, 1_000, 20, 60, 20_000, 1, 1, 2_000)


# -- results -------------------------------------------------------------------------------


@dataclass
class Row:
    section: str
    figure: str
    value: float | None
    unit: str
    target: float | None = None
    higher_is_better: bool = True
    note: str = ""
    fmt: str = "{:,.0f}"

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.value is None:
            return "MISS"
        ok = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return "PASS" if ok else "MISS"

    def target_text(self) -> str:
        if self.target is None:
            return ""
        op = ">=" if self.higher_is_better else "<="
        return f"{op} {self.fmt.format(self.target)}"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        value = "n/a" if row.value is None else row.fmt.format(row.value)
        extra = f"  [{row.verdict}]" if row.verdict else ""
        print(f"  {row.figure:<56} {value:>12} {row.unit}{extra}", flush=True)
        return row

    def print(self) -> None:
        w = [58, 12, 8, 12, 6]
        line = "-" * (sum(w) + 2 * len(w) + 30)
        print("\n" + line)
        header = (
            f"{'figure':<{w[0]}}  {'value':>{w[1]}}  {'unit':<{w[2]}}  "
            f"{'target':>{w[3]}}  {'':<{w[4]}}  note"
        )
        print(header)
        section = None
        for r in self.rows:
            if r.section != section:
                section = r.section
                print(line)
                print(f"[{section}]")
            value = "n/a" if r.value is None else r.fmt.format(r.value)
            print(
                f"{r.figure:<{w[0]}}  {value:>{w[1]}}  {r.unit:<{w[2]}}  "
                f"{r.target_text():>{w[3]}}  {r.verdict:<{w[4]}}  {r.note}"
            )
        print(line)


# -- process hygiene -----------------------------------------------------------------------

_children: list[subprocess.Popen[bytes]] = []


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    _children.append(proc)
    return proc


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    with contextlib.suppress(ValueError):
        _children.remove(proc)


def _kill_all() -> None:
    for proc in list(_children):
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(5)
    _children.clear()


atexit.register(_kill_all)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _tail(log: Path, n: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# -- helpers -------------------------------------------------------------------------------


class Workdir:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
        self._n = 0

    def db(self, name: str) -> str:
        self._n += 1
        return str(self.root / f"{self._n:02d}-{name}.db")

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _spread(xs: list[float]) -> str:
    if len(xs) == 1:
        return "1 run"
    return f"median of {len(xs)}, range {min(xs):,.0f}-{max(xs):,.0f}"


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def _open(b: BenchApp) -> None:
    """Open the store (connection + schema) so timings exclude file creation."""
    await b.app.backend.counts()


async def _fill(db: str, n: int, batch: int = 1000) -> None:
    b = make_app(db)
    async with b.app:
        for start in range(0, n, batch):
            await b.noop.enqueue_many([() for _ in range(min(batch, n - start))])


def _store_span(db: str) -> tuple[int, float, float]:
    """(completed jobs, first claim, last settle) read straight from the job table."""
    conn = sqlite3.connect(db)
    try:
        n, first, last = conn.execute(
            "SELECT count(*), min(started_at), max(finished_at) FROM jobs WHERE state = 'completed'"
        ).fetchone()
    finally:
        conn.close()
    return n, first or 0.0, last or 0.0


def _worker_cmd(*extra: str) -> list[str]:
    return [
        PY, "-m", "conveyor", "worker", "bench.peers.conveyor_app:app",
        "-c", str(CONCURRENCY), *extra,
    ]  # fmt: skip


# -- 0. floor: raw sqlite3 -----------------------------------------------------------------


def _floor_conn(db: str) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def floor_minimal(wd: Workdir, n: int, batch: int = 100) -> tuple[float, float]:
    """Minimal table: (insert rate, claim+settle rate) in jobs/s."""
    conn = _floor_conn(wd.db("floor-min"))
    conn.executescript(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, payload BLOB, "
        "started_at REAL, finished_at REAL);"
        "CREATE INDEX jobs_ready ON jobs (id) WHERE state = 'queued';"
    )
    t0 = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO jobs (state, payload) VALUES ('queued', ?)", ((b"{}",) for _ in range(n))
    )
    conn.execute("COMMIT")
    t_ins = time.perf_counter() - t0
    t0 = time.perf_counter()
    done = 0
    while True:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        ids = conn.execute(
            "UPDATE jobs SET state = 'running', started_at = ? WHERE id IN (SELECT id FROM jobs "
            "WHERE state = 'queued' ORDER BY id LIMIT ?) RETURNING id",
            (now, batch),
        ).fetchall()
        conn.execute("COMMIT")
        if not ids:
            break
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "UPDATE jobs SET state = 'completed', finished_at = ? WHERE id = ? "
            "AND state = 'running'",
            [(now, i) for (i,) in ids],
        )
        conn.execute("COMMIT")
        done += len(ids)
    t_cs = time.perf_counter() - t0
    conn.close()
    assert done == n, (done, n)
    return n / t_ins, n / t_cs


# Conveyor's claim, as in conveyor/backends/sqlite/ops.py when this bench was written; used
# only if that module no longer exposes it.
_CLAIM_FALLBACK = (
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, token = token + 1, "
    "lease_expires = ?, worker = ?, started_at = ? WHERE seq IN (SELECT seq FROM jobs "
    "WHERE state = 'queued' AND queue = ? ORDER BY priority DESC, run_at, seq LIMIT ?) "
    "RETURNING *"
)
_SETTLE_SQL = (
    "UPDATE jobs SET state = 'completed', result = ?, finished_at = ?, "
    "expires_at = ? + keep_for, worker = NULL, lease_expires = NULL "
    "WHERE id = ? AND state = 'running' AND token = ?"
)


def floor_conveyor_sql(wd: Workdir, n: int, batch: int = 100) -> float:
    """Conveyor's own schema (made by the App) and claim/settle SQL, run raw: no asyncio, no
    Job objects; settle is one executemany. Returns jobs/s."""
    try:
        from conveyor.backends.sqlite import ops

        claim_sql = getattr(ops, "_CLAIM", _CLAIM_FALLBACK)
    except ImportError:
        claim_sql = _CLAIM_FALLBACK
    db = wd.db("floor-sql")
    asyncio.run(_fill(db, n))
    conn = _floor_conn(db)
    t0 = time.perf_counter()
    done = 0
    while True:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute(claim_sql, (now + 5.0, "floor", now, "default", batch))
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall()
        conn.execute("COMMIT")
        if not rows:
            break
        i_id, i_token = cols.index("id"), cols.index("token")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_SETTLE_SQL, [(b"null", now, now, r[i_id], r[i_token]) for r in rows])
        conn.execute("COMMIT")
        done += len(rows)
    rate = n / (time.perf_counter() - t0)
    conn.close()
    assert done == n, (done, n)
    return rate


def floor_single_tx(wd: Workdir, n: int) -> float:
    """One INSERT per BEGIN IMMEDIATE/COMMIT into Conveyor's table: the floor of any
    one-job-per-transaction enqueue. Returns jobs/s."""
    db = wd.db("floor-single")
    asyncio.run(_open_and_close(make_app(db)))
    conn = _floor_conn(db)
    sql = (
        "INSERT INTO jobs (id, task, queue, priority, state, payload, run_at, enqueued_at, "
        "max_attempts, keep_for) VALUES (?, 'noop', 'default', 0, 'queued', ?, ?, ?, 3, 86400)"
    )
    t0 = time.perf_counter()
    for i in range(n):
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(sql, (f"{i:032x}", b"{}", now, now))
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - t0)
    conn.close()
    return rate


def floor_conveyor_ops(wd: Workdir, n: int, batch: int = 100) -> float | None:
    """The same through conveyor.backends.sqlite.ops.claim/settle (internal API: rows become
    Job/Lease objects, settle as Conveyor does it), synchronously. None if that API moved."""
    try:
        from conveyor.backends.base import ClaimRequest
        from conveyor.backends.sqlite import ops
        from conveyor.job import Completed

        db = wd.db("floor-ops")
        asyncio.run(_fill(db, n))
        conn = _floor_conn(db)
        t0 = time.perf_counter()
        done = 0
        while True:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            leases = ops.claim(conn, ClaimRequest(["default"], batch, 5.0, "floor"), now)
            conn.execute("COMMIT")
            if not leases:
                break
            conn.execute("BEGIN IMMEDIATE")
            ops.settle(conn, [(lease, Completed(b"null")) for lease in leases], now)
            conn.execute("COMMIT")
            done += len(leases)
        rate = n / (time.perf_counter() - t0)
        conn.close()
        return rate if done == n else None
    except Exception as exc:  # an internal API changed: report n/a rather than fail
        print(f"  (ops floor skipped: {type(exc).__name__}: {exc})")
        return None


# -- 1. drain --------------------------------------------------------------------------------


def cli_startup(wd: Workdir, tag: str) -> float:
    """Seconds for a CLI burst worker on an empty queue: process start to exit."""
    db = wd.db(f"empty-{tag}")
    asyncio.run(_open_and_close(make_app(db)))
    log = wd.log(f"startup-{tag}")
    t0 = time.perf_counter()
    proc = _spawn(_worker_cmd("--burst"), _env(BENCH_CONVEYOR_DB=db), log)
    try:
        proc.wait(60)
    finally:
        _stop(proc)
    return time.perf_counter() - t0


async def _open_and_close(b: BenchApp) -> None:
    await _open(b)
    await b.app.aclose()


@dataclass
class DrainRun:
    wall: float  # process start → exit (s)
    span: float  # first claim → last settle, from the store (s)
    completed: int
    startup: float = 0.0  # the paired empty-queue run (s), CLI only


def cli_drain(wd: Workdir, n: int, tag: str) -> DrainRun:
    db = wd.db(f"drain-{tag}")
    asyncio.run(_fill(db, n))
    log = wd.log(f"drain-{tag}")
    t0 = time.perf_counter()
    proc = _spawn(_worker_cmd("--burst"), _env(BENCH_CONVEYOR_DB=db), log)
    try:
        code = proc.wait(max(120, n / 500))
    except subprocess.TimeoutExpired:
        print(f"  ! CLI drain timed out; log tail:\n{_tail(log)}")
        _stop(proc)
        raise
    wall = time.perf_counter() - t0
    _stop(proc)
    if code != 0:
        print(f"  ! worker exited {code}; log tail:\n{_tail(log)}")
    completed, first, last = _store_span(db)
    return DrainRun(wall, last - first, completed, cli_startup(wd, tag))


async def _inproc_drain(db: str) -> tuple[float, int]:
    b = make_app(db)
    async with b.app:
        await _open(b)
        server = b.app.worker("default", concurrency=CONCURRENCY, burst=True)
        t0 = time.perf_counter()
        stats = await server.run()
        return time.perf_counter() - t0, stats.completed


def inproc_drain(wd: Workdir, n: int) -> DrainRun:
    db = wd.db("drain-inproc")
    asyncio.run(_fill(db, n))
    wall, _ = asyncio.run(_inproc_drain(db))
    completed, first, last = _store_span(db)
    return DrainRun(wall, last - first, completed)


# -- 2/3. enqueue ----------------------------------------------------------------------------


async def _enqueue_many(db: str, n: int, batch: int) -> float:
    b = make_app(db)
    async with b.app:
        await _open(b)
        calls = [() for _ in range(n)]
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            await b.noop.enqueue_many(calls[start : start + batch])
        return n / (time.perf_counter() - t0)


async def _single_outside(db: str, n: int) -> float:
    b = make_app(db)
    try:
        await _open(b)
        t0 = time.perf_counter()
        for _ in range(n):
            await b.noop.enqueue()
        return n / (time.perf_counter() - t0)
    finally:
        await b.app.aclose()


async def _single_inside(db: str, n: int) -> float:
    b = make_app(db)
    async with b.app:
        await _open(b)
        t0 = time.perf_counter()
        for _ in range(n):
            await b.noop.enqueue()
        return n / (time.perf_counter() - t0)


async def _concurrent_inside(db: str, coroutines: int, each: int) -> float:
    b = make_app(db)

    async def one() -> None:
        for _ in range(each):
            await b.noop.enqueue()

    async with b.app:
        await _open(b)
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(coroutines)))
        return coroutines * each / (time.perf_counter() - t0)


def _count_jobs(db: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    finally:
        conn.close()


# -- 4. latency ------------------------------------------------------------------------------


async def _latency(db: str, samples: int, spacing: float) -> list[float]:
    b = make_app(db)
    try:
        await _open(b)
        # Warm-up: wait until the worker process is claiming.
        warm = await b.stamp.enqueue()
        await warm.result(timeout=60)
        for _ in range(5):
            await (await b.stamp.enqueue()).result(timeout=10)
            await asyncio.sleep(spacing)
        ids: list[str] = []
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for _ in range(samples):
            handle = await b.stamp.enqueue()
            ids.append(handle.id)
            next_at += spacing
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        deadline = loop.time() + 30
        while True:
            jobs = await b.app.backend.get(ids)
            if all(j is not None and j.state.terminal for j in jobs) or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        out = []
        for j in jobs:
            if j is not None and j.result is not None:
                out.append((msgspec.json.decode(j.result) - j.enqueued_at) * 1000)
        return out
    finally:
        await b.app.aclose()


def latency(wd: Workdir, samples: int) -> list[float]:
    db = wd.db("latency")
    asyncio.run(_open_and_close(make_app(db)))
    log = wd.log("latency")
    proc = _spawn(_worker_cmd(), _env(BENCH_CONVEYOR_DB=db), log)
    try:
        return asyncio.run(_latency(db, samples, 0.020))
    finally:
        _stop(proc)


# -- 5. RSS ----------------------------------------------------------------------------------


@dataclass
class RssRun:
    samples: list[tuple[float, int]]  # (seconds since start, rss bytes)
    wall: float
    completed: int
    span: float


def rss_drain(wd: Workdir, n: int) -> RssRun:
    db = wd.db("rss")
    asyncio.run(_fill(db, n))
    log = wd.log("rss")
    t0 = time.perf_counter()
    proc = _spawn(_worker_cmd("--burst"), _env(BENCH_CONVEYOR_DB=db), log)
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, int]] = []
    limit = t0 + max(300, n / 200)
    try:
        while proc.poll() is None and time.perf_counter() < limit:
            with contextlib.suppress(psutil.Error):
                samples.append((time.perf_counter() - t0, ps.memory_info().rss))
            time.sleep(0.5)
        wall = time.perf_counter() - t0
    finally:
        _stop(proc)
    completed, first, last = _store_span(db)
    return RssRun(samples, wall, completed, last - first)


# -- Huey ------------------------------------------------------------------------------------


def huey_enqueue(db: str, n: int) -> float:
    h, noop = huey_peer.make_huey(db)
    h.pending_count()  # open the connection
    t0 = time.perf_counter()
    for _ in range(n):
        noop()
    rate = n / (time.perf_counter() - t0)
    h.storage.close()
    return rate


@dataclass
class HueyRun:
    enqueue_rate: float
    span: float | None  # first task start → last completion (s)
    wall: float | None  # consumer process start → last completion (s)


def huey_drain(wd: Workdir, n: int, workers: int) -> HueyRun:
    db = wd.db(f"huey-w{workers}")
    rate = huey_enqueue(db, n)
    done = str(wd.root / f"huey-w{workers}.done")
    log = wd.log(f"huey-w{workers}")
    env = _env(BENCH_HUEY_DB=db, BENCH_HUEY_EXPECT=str(n), BENCH_HUEY_DONE=done)
    t_start = time.time()
    proc = _spawn(huey_peer.consumer_command(BIN, workers), env, log)
    limit = time.perf_counter() + max(180, n / 100)
    try:
        while not os.path.exists(done):
            if proc.poll() is not None or time.perf_counter() > limit:
                print(f"  ! Huey consumer did not finish; log tail:\n{_tail(log)}")
                return HueyRun(rate, None, None)
            time.sleep(0.02)
    finally:
        _stop(proc, signal.SIGINT)  # SIGINT is Huey's graceful stop
    first, last, _ = Path(done).read_text().split()
    return HueyRun(rate, float(last) - float(first), float(last) - t_start)


# -- main ------------------------------------------------------------------------------------


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(sizes: Sizes, wd: Workdir, only: set[str]) -> Report:
    rep = Report()
    want: Callable[[str], bool] = lambda k: not only or k in only  # noqa: E731

    if want("floor"):
        _section("floor: raw sqlite3, same machine (batches of 100, WAL, synchronous=NORMAL)")
        s = "0. floor (raw sqlite3)"
        ins, cs = floor_minimal(wd, sizes.drain)
        rep.add(Row(s, "minimal table: INSERT executemany, one tx", ins, "jobs/s"))
        rep.add(Row(s, "minimal table: claim (UPDATE..RETURNING id) + settle", cs, "jobs/s"))
        raw = floor_conveyor_sql(wd, sizes.drain)
        rep.add(Row(s, "Conveyor schema+SQL raw: claim + settle (executemany)", raw, "jobs/s"))
        via_ops = floor_conveyor_ops(wd, sizes.drain)
        rep.add(Row(s, "Conveyor ops.claim/ops.settle, sync (+ Job objects)", via_ops, "jobs/s"))
        one = floor_single_tx(wd, sizes.single)
        rep.add(Row(s, "Conveyor table: one INSERT per transaction", one, "jobs/s"))

    conveyor_drain: float | None = None
    if want("drain"):
        _section(f"1. drain: {sizes.drain:,} no-op jobs, one worker process, -c {CONCURRENCY}")
        s = "1. drain (one worker, no-op)"
        runs = [cli_drain(wd, sizes.drain, f"cli{i}") for i in range(sizes.repeats)]
        bad = sum(r.completed != sizes.drain for r in runs)
        rates = [sizes.drain / r.span for r in runs]
        conveyor_drain = _median(rates)
        rep.add(
            Row(s, "CLI --burst: first claim -> last settle (store)", conveyor_drain, "jobs/s",
                8000, note=_spread(rates) + (f"; {bad} run(s) incomplete!" if bad else ""))
        )  # fmt: skip
        net = [sizes.drain / max(r.wall - r.startup, 1e-9) for r in runs]
        wall, startup = _median([r.wall for r in runs]), _median([r.startup for r in runs])
        rep.add(
            Row(s, "CLI --burst: wall minus empty-queue startup", _median(net), "jobs/s", 8000,
                note=f"{_spread(net)}; median wall {wall:.2f}s, startup {startup:.2f}s")
        )  # fmt: skip
        rep.add(Row(s, "CLI --burst: wall incl. startup", sizes.drain / wall, "jobs/s"))
        lag = _median([r.wall - r.startup - r.span for r in runs])
        rep.add(Row(s, "CLI --burst: exit lag after last settle", lag * 1000, "ms",
                    note="wall - paired empty-queue run - store span", fmt="{:,.0f}"))  # fmt: skip
        ips = [inproc_drain(wd, sizes.drain) for _ in range(sizes.in_repeats)]
        bad = sum(r.completed != sizes.drain for r in ips)
        ip_rates = [sizes.drain / r.wall for r in ips]
        rep.add(
            Row(s, "in-process app.worker(burst=True).run() wall", _median(ip_rates), "jobs/s",
                8000, note=_spread(ip_rates) + (f"; {bad} run(s) incomplete!" if bad else ""))
        )  # fmt: skip
        span_rates = [sizes.drain / r.span for r in ips]
        rep.add(Row(s, "in-process: first claim -> last settle (store)", _median(span_rates),
                    "jobs/s", 8000, note=_spread(span_rates)))  # fmt: skip
        ip_lag = _median([r.wall - r.span for r in ips])
        rep.add(Row(s, "in-process: run() return lag after last settle", ip_lag * 1000, "ms",
                    note="run() wall - store span", fmt="{:,.0f}"))  # fmt: skip

    conveyor_many = conveyor_single = None
    if want("enqueue"):
        _section("2/3. enqueue")
        s = "2. enqueue_many"
        n = sizes.enqueue
        k = sizes.in_repeats

        def many(batch: int) -> float:
            rate = asyncio.run(_enqueue_many(db := wd.db(f"em{batch}"), n, batch))
            assert _count_jobs(db) == n
            return rate

        r1 = [many(1000) for _ in range(k)]
        conveyor_many = _median(r1)
        rep.add(Row(s, f"enqueue_many, {n // 1000} batches of 1,000", conveyor_many, "jobs/s",
                    50_000, note=_spread(r1)))  # fmt: skip
        r2 = [many(n) for _ in range(k)]
        rep.add(Row(s, f"enqueue_many, one batch of {n:,}", _median(r2), "jobs/s", 50_000,
                    note=_spread(r2)))  # fmt: skip

        s = "3. single enqueue"
        m = sizes.single
        r3 = [asyncio.run(_single_outside(wd.db("single-out"), m)) for _ in range(k)]
        conveyor_single = _median(r3)
        rep.add(Row(s, "sequential enqueue(), outside `async with app`", conveyor_single,
                    "jobs/s", 5000, note=_spread(r3)))  # fmt: skip
        r4 = [asyncio.run(_single_inside(wd.db("single-in"), m)) for _ in range(k)]
        rep.add(Row(s, "sequential enqueue(), inside `async with app`", _median(r4), "jobs/s",
                    5000, note=_spread(r4)))  # fmt: skip
        r5 = []
        for _ in range(k):
            r5.append(asyncio.run(_concurrent_inside(db := wd.db("conc"), 100,
                                                     sizes.concurrent_each)))  # fmt: skip
            assert _count_jobs(db) == 100 * sizes.concurrent_each
        rep.add(
            Row(s, "100 coroutines enqueue() inside (coalesced)", _median(r5), "jobs/s",
                note=f"{100 * sizes.concurrent_each:,} jobs; " + _spread(r5))
        )  # fmt: skip

    if want("latency"):
        _section(f"4. idle latency: {sizes.latency} samples, 20 ms apart, CLI worker process")
        s = "4. idle latency enqueue -> start"
        lat = latency(wd, sizes.latency)
        ok = len(lat) == sizes.latency
        note = f"{len(lat)} samples" + ("" if ok else f" of {sizes.latency}!")
        p50 = _pct(lat, 50) if lat else None
        p99 = _pct(lat, 99) if lat else None
        rep.add(Row(s, "p50", p50, "ms", 5.0, False, note, "{:.2f}"))
        rep.add(Row(s, "p99", p99, "ms", note=f"max {max(lat):.2f} ms" if lat else "",
                    fmt="{:.2f}"))  # fmt: skip

    if want("rss"):
        _section(f"5. worker RSS while draining {sizes.rss:,} jobs (CLI --burst, 0.5 s samples)")
        s = "5. worker RSS flat"
        rr = rss_drain(wd, sizes.rss)
        pts = [rss for t, rss in rr.samples if t >= 1.0]
        if len(pts) >= 4:
            q = len(pts) // 4
            first, last = statistics.mean(pts[:q]), statistics.mean(pts[-q:])
            growth = (last / first - 1) * 100
            mib = 1 << 20
            rep.add(Row(s, "first-quartile mean RSS", first / mib, "MiB", fmt="{:.1f}"))
            rep.add(Row(s, "last-quartile mean RSS", last / mib, "MiB", fmt="{:.1f}"))
            rep.add(Row(s, "min / max RSS", min(pts) / mib, "MiB", fmt="{:.1f}",
                        note=f"max {max(pts) / mib:.1f} MiB, {len(pts)} samples"))  # fmt: skip
            rep.add(Row(s, "growth last vs first quartile (|x| <= 20)", abs(growth), "%", 20.0,
                        False, f"signed {growth:+.1f} %", "{:.1f}"))  # fmt: skip
        else:
            rep.add(Row(s, "growth last vs first quartile", None, "%", 20.0, False,
                        f"only {len(pts)} samples after warm-up"))  # fmt: skip
        rep.add(
            Row(s, f"drain rate over {sizes.rss:,} jobs (store span)",
                rr.completed / rr.span if rr.span else None, "jobs/s",
                note=f"{rr.completed:,} completed, wall {rr.wall:.1f}s")
        )  # fmt: skip

    if want("huey"):
        _section(f"Huey 3.5.4 SqliteHuey, {sizes.huey:,} no-op jobs, huey_consumer -k thread")
        s = "Huey 3.5.4 (SqliteHuey defaults)"
        best_drain = best_enq = None
        for workers in (1, 8):
            hr = huey_drain(wd, sizes.huey, workers)
            label = "default -w 1" if workers == 1 else f"-w {workers}"
            rate = sizes.huey / hr.span if hr.span else None
            rep.add(Row(s, f"drain, consumer {label}: first start -> last done", rate, "jobs/s",
                        note="" if hr.wall is None else
                        f"incl. startup {sizes.huey / hr.wall:,.0f}/s"))  # fmt: skip
            if rate and (best_drain is None or rate > best_drain):
                best_drain = rate
            best_enq = max(best_enq or 0.0, hr.enqueue_rate)
        rep.add(Row(s, "enqueue: sequential task() calls (best of 2)", best_enq, "jobs/s",
                    note="Huey has no batched enqueue; .map() loops"))  # fmt: skip
        s = "Conveyor / Huey"
        if conveyor_drain and best_drain:
            rep.add(Row(s, "drain ratio (CLI store span / best Huey)", conveyor_drain / best_drain,
                        "x", 3.0, fmt="{:.2f}"))  # fmt: skip
        if conveyor_many and best_enq:
            rep.add(Row(s, "enqueue ratio: enqueue_many(1,000) / Huey", conveyor_many / best_enq,
                        "x", fmt="{:.2f}"))  # fmt: skip
        if conveyor_single and best_enq:
            rep.add(Row(s, "enqueue ratio: single enqueue() / Huey", conveyor_single / best_enq,
                        "x", fmt="{:.2f}"))  # fmt: skip
    return rep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, ~1 minute")
    parser.add_argument(
        "--only",
        default="",
        help="comma list of sections: floor,drain,enqueue,latency,rss,huey (default all)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, dbs)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    only = {x.strip() for x in args.only.split(",") if x.strip()}

    def on_signal(signum: int, _frame: object) -> None:
        _kill_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    import huey

    print(
        f"Conveyor SQLite bench ({'quick' if args.quick else 'full'}): Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, huey {huey.__version__}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}"
    )
    print(f"load average at start: {_load()} (other processes on this machine skew results)")
    wd = Workdir()
    t0 = time.perf_counter()
    try:
        rep = run(sizes, wd, only)
    finally:
        _kill_all()
        if args.keep:
            print(f"kept {wd.root}")
        else:
            wd.cleanup()
    rep.print()
    print(f"load average at end: {_load()}")
    print(f"total bench time {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
