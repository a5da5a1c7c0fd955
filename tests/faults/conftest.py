"""Process plumbing for the fault-injection tests.

`cluster` starts real ``conveyor worker`` (and helper) processes with their output in files
under ``tmp_path``, reads the ledger the test app writes, and at teardown kills every process
it started, and their descendants, by pid, even when the test failed.

The store is a SQLite file unless a test runs `on_both_stores`: then it runs once more with
its workers on the session's redis-server (a key prefix unique to the test), and that variant
skips without redis-server locally and fails under ``CI=true`` like every Redis test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self, TypeVar

import psutil
import pytest

import conveyor
from tests.faults.apps.ledger import build, read_ledger
from tests.redis.conftest import flush

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.faults.apps.ledger:app"

T = TypeVar("T")


@dataclass
class Proc:
    """One process we started, with its output files."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    started_at: float
    descendants: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def send(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def remember_descendants(self) -> set[int]:
        """Note this process's descendants now (so teardown finds them even if reparented)."""
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return set()
        pids = {k.pid for k in kids}
        self.descendants |= pids
        return pids

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} rc={self.popen.poll()}>"


class Cluster:
    """Processes of one test, all sharing one store and one ledger.

    The store is the SQLite file ``tmp_path/jobs.db``, or, given `redis_url`, that Redis
    under a key prefix unique to this cluster. Use it as a context manager to tear down.
    """

    def __init__(self, tmp_path: Path, redis_url: str | None = None) -> None:
        self.dir = tmp_path
        self.db = tmp_path / "jobs.db"  # the SQLite store (unused on Redis)
        if redis_url is None:
            self.store = "sqlite"
            self.url = f"sqlite:///{self.db}"
        else:
            self.store = "redis"
            sep = "&" if "?" in redis_url else "?"
            self.url = f"{redis_url}{sep}prefix=fault-{uuid.uuid4().hex[:8]}"
        self.ledger_path = tmp_path / "ledger.txt"
        self.markers = tmp_path / "markers"
        self.markers.mkdir()
        self.tag = uuid.uuid4().hex
        self.procs: list[Proc] = []
        self._seq = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.teardown()

    # -- starting ---------------------------------------------------------------------------

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "FAULT_"))}
        env.update(
            FAULT_DB_URL=self.url,
            FAULT_LEDGER=str(self.ledger_path),
            FAULT_MARKERS=str(self.markers),
            FAULT_TAG=self.tag,
            PYTHONUNBUFFERED="1",
        )
        env.update(extra or {})
        return env

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        self._seq += 1
        stem = f"{self._seq:02d}-{name}"
        out, err = self.dir / f"{stem}.out", self.dir / f"{stem}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            popen = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                env=self.env(env),
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                start_new_session=True,  # our signals only, never the terminal's
            )
        proc = Proc(name, popen, out, err, time.time())
        self.procs.append(proc)
        return proc

    def worker(
        self, *options: str, name: str = "worker", env: dict[str, str] | None = None
    ) -> Proc:
        """``python -m conveyor -v worker tests.faults.apps.ledger:app <options>``."""
        argv = [sys.executable, "-m", "conveyor", "-v", "worker", APP, *options]
        return self.spawn(name, argv, env)

    # -- reading ----------------------------------------------------------------------------

    def ledger(self) -> list[tuple[str, int, int, float]]:
        return read_ledger(self.ledger_path)

    def starts(self, pid: int | None = None) -> list[tuple[str, int, int, float]]:
        return [e for e in self.ledger() if e[0] == "start" and (pid is None or e[2] == pid)]

    def sql(self) -> sqlite3.Connection:
        """A plain sqlite3 connection to the store (close it!)."""
        assert self.store == "sqlite", f"no SQL on {self.store}"
        return sqlite3.connect(self.db, timeout=30)

    def logs(self) -> str:
        """Every process's stderr, for assertion messages."""
        parts = []
        for p in self.procs:
            parts.append(f"--- {p.name} pid={p.pid} rc={p.popen.poll()} ---\n{p.stderr()[-3000:]}")
        return "\n".join(parts)

    # -- stopping ---------------------------------------------------------------------------

    def wait_exit(self, proc: Proc, timeout: float) -> int | None:
        """Wait up to `timeout` for `proc` to exit; its return code, or None if still alive."""
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, proc: Proc) -> None:
        """SIGKILL `proc` (and what it started) and reap it."""
        proc.remember_descendants()
        pids = [proc.pid, *proc.descendants]
        for pid in pids:
            _kill_pid(pid)
        proc.popen.wait(10)

    def teardown(self) -> None:
        for proc in self.procs:
            proc.remember_descendants()
        for proc in self.procs:
            if proc.alive():
                _kill_pid(proc.pid)
            for pid in proc.descendants:
                _kill_pid(pid)
        # Anything else carrying this test's tag (e.g. a supervisor's child that outlived it).
        for p in psutil.process_iter(["pid"]):
            if p.pid == os.getpid():
                continue
            try:
                if p.environ().get("FAULT_TAG") == self.tag:
                    _kill_pid(p.pid)
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
                continue
        for proc in self.procs:
            try:
                proc.popen.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a stuck zombie
                pass


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)  # a SIGSTOPped process dies just as well, but be tidy
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        psutil.Process(pid).wait(5)  # reaps only if it's our child; otherwise just waits
    except (psutil.NoSuchProcess, psutil.TimeoutExpired, ChildProcessError):
        pass


STORES = ("sqlite", "redis")
# Runs a test once per store: ``test_x[sqlite]``, ``test_x[redis]`` (`cluster` and `app` follow).
on_both_stores = pytest.mark.parametrize("cluster", STORES, indirect=True)


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """The test's processes on a SQLite file, or on Redis when parametrized with "redis"."""
    redis_url = None
    if getattr(request, "param", "sqlite") == "redis":
        # Skips locally without redis-server, fails under CI=true (tests/conftest.py).
        redis_url = request.getfixturevalue("redis_server").url
        flush(redis_url)
    with Cluster(tmp_path, redis_url) as c:
        yield c


@contextlib.asynccontextmanager
async def app_on(cluster: Cluster) -> AsyncIterator[conveyor.App]:
    """An App on the cluster's store with the workers' tasks, closed on exit."""
    a = build(cluster.url)
    try:
        yield a
    finally:
        await a.aclose()


@pytest.fixture
async def app(cluster: Cluster) -> AsyncIterator[conveyor.App]:
    """The test's own App on the cluster's store (same tasks as the workers')."""
    async with app_on(cluster) as a:
        yield a


async def until(
    pred: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll `pred` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def until_async(
    pred: Callable[[], object], timeout: float, what: str, interval: float = 0.1
) -> object:
    """`until` for an async predicate (a coroutine function)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await pred()  # type: ignore[misc]
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def ready(proc: Proc, timeout: float = 20.0) -> None:
    """Wait until a worker logged that it is claiming (it runs with -v)."""

    def started() -> bool:
        if not proc.alive():
            raise AssertionError(f"{proc} died during startup:\n{proc.stderr()}")
        return "starting: queues=" in proc.stderr()

    await until(started, timeout, f"{proc.name} to start")


def write_locked(db: Path) -> bool:
    """Whether some process holds the store's write lock right now."""
    conn = sqlite3.connect(db, timeout=0.05, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()
