"""The SQLite backend: a durable job store in one file, safe for many processes at once.

Writes take `BEGIN IMMEDIATE` and have two paths. The fast path runs the transaction inline
on the event loop with a connection whose busy timeout is zero: an uncontended SQLite write
takes tens of microseconds, far less than a hop to a thread. If another process holds the
write lock the fast path gives up at once (SQLITE_BUSY) and the slow path runs the same
transaction on the backend's own thread, which waits out the lock (SQLite's busy timeout plus
our bounded retry), so the event loop never blocks on a lock and "database is locked" never
reaches the user unless the file stays locked for `busy_timeout` seconds in a row. The fast
connection never checkpoints; the thread does (WAL checkpoints fsync).

Connections are per process: after `fork` a child opens its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from conveyor.backends._wake import Wakeup
from conveyor.backends.base import Backend, ClaimRequest, JobFilter, Page
from conveyor.backends.lanes import check_circuit_change
from conveyor.backends.sqlite import depend, flow, ops, shared
from conveyor.backends.sqlite.schema import migrate
from conveyor.capabilities import LaneInfo, LockInfo, Rollup, WorkerInfo
from conveyor.clock import Clock, SystemClock
from conveyor.errors import BackendError, ClosedError, ConfigError, StoreUnavailable
from conveyor.job import Job, JobState, Lease, Outcome
from conveyor.names import check_queue
from conveyor.rollup import check_rows

__all__ = ["SQLiteBackend"]

log = logging.getLogger("conveyor.backends.sqlite")

T = TypeVar("T")

# How often an idle `wait` looks for commits by other processes. PRAGMA data_version reads
# shared memory only, so this costs a few microseconds per look.
_POLL = 0.002


def _create_private(path: str) -> None:
    """Make sure the database file exists with mode 0600, whatever stands at `path`.

    A symlink (even a dangling one) is followed to its target, which is created 0600 if
    missing; SQLite gives the -wal and -shm files the database's mode. A file or directory
    that other users may write is logged as a warning: they could alter or swap the jobs.
    """
    real = os.path.realpath(path)
    try:
        fd = os.open(real, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        os.close(fd)
    except FileExistsError:
        pass  # it exists (or another process created it first): left as its owner made it
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot create the job database {path!r}: {exc.strerror}"
            + (f" (the path leads to {real!r})" if real != os.path.abspath(path) else "")
        ) from exc
    try:
        st = os.stat(real)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise StoreUnavailable(f"cannot open the job database {path!r}: not a regular file")
    parent = os.stat(os.path.dirname(real) or ".")
    if st.st_mode & stat.S_IWOTH:
        log.warning("the job database %r is writable by every user; chmod 600 it", real)
    elif parent.st_mode & stat.S_IWOTH and not parent.st_mode & stat.S_ISVTX:
        log.warning(
            "the job database's directory %r is writable by every user, who could replace "
            "the file; keep it in a private directory",
            os.path.dirname(real),
        )


class SQLiteBackend(Backend):
    """Jobs in a SQLite file (WAL mode). `App("sqlite:///jobs.db")` uses it.

    Args:
        path: the database file; created with mode 0600 if missing.
        clock: the time source (a `FakeClock` in tests).
        busy_timeout: seconds a write may wait for another process's lock before failing.
        synchronous: SQLite's `synchronous` pragma. "NORMAL" (default) survives process
            crashes; "FULL" also survives power loss, at a cost per commit.

    Example:
        async with SQLiteBackend("jobs.db") as backend:
            await backend.enqueue([job])
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        clock: Clock | None = None,
        *,
        busy_timeout: float = 30.0,
        synchronous: str = "NORMAL",
    ) -> None:
        self.path = os.fspath(path)
        self.clock = clock or SystemClock()
        self.busy_timeout = busy_timeout
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigError(
                f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}"
            )
        self.synchronous = synchronous.upper()
        self._pid = -1
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._watch: sqlite3.Connection | None = None
        self._watch_lock = threading.Lock()
        self._fast: sqlite3.Connection | None = None
        self._fast_lock = threading.Lock()
        self._fast_commits = 0
        self._checkpointing = False
        self._data_version = -1
        self._lock_freed = Wakeup()  # lock waiters (apart from job waiters: no spurious claims)
        self._open_lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            _create_private(self.path)
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA cache_size = -32000")
            migrate(conn)
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(
                f"cannot open the job database {self.path!r}: {exc}. Check that the path is a "
                "writable SQLite file (and that its directory is writable too, for the WAL)."
            ) from exc
        return conn

    def _ensure(self) -> ThreadPoolExecutor:
        if self._closed:
            raise ClosedError(f"the SQLite backend for {self.path!r} is closed")
        pid = os.getpid()
        if self._pid != pid:
            with self._open_lock:
                if self._pid != pid:
                    # After fork the parent's thread and connection are not ours: start afresh.
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-sqlite")
                    self._conn = None
                    self._watch = None
                    self._fast = None
                    self._pid = pid
        assert self._executor is not None
        return self._executor

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    async def _call(self, fn: Callable[[], T]) -> T:
        executor = self._ensure()
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one IMMEDIATE transaction, retrying while the file is busy."""
        conn = self._connection()
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                    return result
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() >= deadline:
                    raise BackendError(f"SQLite write to {self.path!r} failed: {exc}") from exc
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
            except sqlite3.DatabaseError as exc:
                raise BackendError(f"SQLite write to {self.path!r} failed: {exc}") from exc

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._connection())
        except sqlite3.DatabaseError as exc:
            raise BackendError(f"SQLite read from {self.path!r} failed: {exc}") from exc

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._ensure()
        if self._fast_lock.acquire(blocking=False):
            try:
                done, result = self._try_fast(fn)
            finally:
                self._fast_lock.release()
            if done:
                return result  # type: ignore[return-value]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(self._write, fn))

    def _try_fast(self, fn: Callable[[sqlite3.Connection], T]) -> tuple[bool, T | None]:
        """Run `fn` in a transaction inline if the write lock is free; (False, None) if not."""
        if self._fast is None:
            if self._conn is None and self._pid == os.getpid():
                return False, None  # first use: let the thread create and migrate the file
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0
            )
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the thread checkpoints
            self._fast = conn
        conn = self._fast
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False, None
            raise BackendError(f"SQLite write to {self.path!r} failed: {exc}") from exc
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                return False, None
            if isinstance(exc, sqlite3.DatabaseError):
                raise BackendError(f"SQLite write to {self.path!r} failed: {exc}") from exc
            raise
        self._fast_commits += 1
        if self._fast_commits % 256 == 0 and not self._checkpointing:
            self._checkpointing = True
            assert self._executor is not None
            self._executor.submit(self._checkpoint)
        return True, result

    def _checkpoint(self) -> None:
        try:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.DatabaseError:
            pass  # a busy checkpoint is retried after the next batch of commits
        finally:
            self._checkpointing = False

    async def _ro(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._call(functools.partial(self._read, fn))

    # -- the contract (storage hooks; `Backend` owns guards, `now` and wake-ups) ----------

    async def _enqueue(self, jobs: Sequence[Job], now: float) -> list[str]:
        return await self._tx(lambda c: ops.enqueue(c, jobs, now))

    async def _link(self, child: str, parents: Sequence[str], holds: int, now: float) -> bool:
        return await self._tx(lambda c: depend.link(c, child, parents, holds, now))

    async def _claim(self, request: ClaimRequest, now: float) -> list[Lease]:
        return await self._tx(lambda c: ops.claim(c, request, now))

    async def _extend(
        self, leases: Sequence[Lease], lease_for: float, now: float
    ) -> list[Lease | None]:
        return await self._tx(lambda c: ops.extend(c, leases, lease_for, now))

    async def _settle(self, outcomes: Sequence[tuple[Lease, Outcome]], now: float) -> list[bool]:
        return await self._tx(lambda c: ops.settle(c, outcomes, now))

    async def _release(self, leases: Sequence[Lease], now: float) -> list[bool]:
        return await self._tx(lambda c: ops.release(c, leases, now))

    async def _annotate(
        self, items: Sequence[tuple[Lease, Mapping[str, bytes | None]]], now: float
    ) -> list[bool]:
        return await self._tx(lambda c: ops.annotate(c, items))

    async def _promote(self, now: float) -> int:
        return await self._tx(lambda c: ops.promote(c, now))

    async def _rescue(self, now: float) -> int:
        return await self._tx(lambda c: ops.rescue(c, now))

    async def _purge(self, states: frozenset[JobState], before: float | None, now: float) -> int:
        return await self._tx(lambda c: ops.purge(c, states, before, now))

    async def _cancel(self, job_id: str, reason: str, now: float) -> JobState | None:
        return await self._tx(lambda c: ops.cancel(c, job_id, reason, now))

    async def _requeue(self, ids: Sequence[str], now: float) -> list[bool]:
        return await self._tx(lambda c: ops.requeue(c, ids, now))

    async def _delete(self, ids: Sequence[str], now: float) -> list[bool]:
        return await self._tx(lambda c: ops.delete(c, ids))

    async def _get(self, ids: Sequence[str]) -> list[Job | None]:
        return await self._ro(lambda c: ops.get(c, list(ids)))

    async def _counts(self, queue: str | None) -> dict[str, dict[JobState, int]]:
        return await self._ro(lambda c: ops.counts(c, queue))

    async def _query(self, filter: JobFilter, after: str | None, limit: int) -> Page:
        return await self._ro(lambda c: ops.query(c, filter, after, limit))

    async def _wait(self, queues: Sequence[str], timeout: float) -> None:
        # The baseline comes first: a commit that lands while we look (another process's
        # enqueue, or this worker's own settle releasing a waiting child) must wake us, not
        # fall between the look and the baseline and cost a whole idle wait. The file is
        # opened (created, migrated) before that: its own first commit is no news.
        if self._conn is None or self._pid != os.getpid():
            await self._ro(lambda c: None)
        self._changed()
        now = self.clock.now()
        due = await self._ro(lambda c: ops.next_due(c, queues, now))
        if due == 0.0:
            return
        if due is not None:
            timeout = min(timeout, due)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    # This store's enqueues and settles notify `local_wakeup` (`Backend._woke`);
                    # every other commit is seen by the data_version poll.
                    await self.local_wakeup.wait(_POLL)
                    if self._changed():
                        return

    # -- capabilities (see `conveyor.capabilities`) ----------------------------------------

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        """`Counters`: add to a fixed-window counter."""
        self._open()
        now = self.clock.now()
        return await self._tx(lambda c: shared.incr(c, key, amount, ttl, now))

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> int | None:
        """`Locks`: take a free or expired lock; its new fencing token."""
        self._open()
        now = self.clock.now()
        return await self._tx(lambda c: shared.acquire_lock(c, name, owner, ttl, now))

    async def extend_lock(self, name: str, token: int, ttl: float) -> bool:
        """`Locks`: hold for `ttl` more seconds if `token` still holds it."""
        self._open()
        now = self.clock.now()
        return await self._tx(lambda c: shared.extend_lock(c, name, token, ttl, now))

    async def release_lock(self, name: str, token: int) -> bool:
        """`Locks`: free the lock if `token` still holds it."""
        self._open()
        now = self.clock.now()
        freed = await self._tx(lambda c: shared.release_lock(c, name, token, now))
        if freed:
            self._lock_freed.notify()  # waiters in this process; others see data_version
        return freed

    async def wait_lock(self, name: str, timeout: float) -> None:
        """`Locks`: until the lock is free or expired, or `timeout`: woken at once by
        releases in this process, within `_POLL` by other processes' commits."""
        self._open()
        if self._conn is None or self._pid != os.getpid():
            await self._ro(lambda c: None)  # the thread creates (0600) and migrates the file
        seen = -1
        expires: float | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    version, expires = self._lock_look(name, seen, expires)
                    seen = version
                    if expires is None or expires <= self.clock.now():
                        return
                    await self._lock_freed.wait(min(_POLL, expires - self.clock.now()))

    async def locks(self) -> list[LockInfo]:
        """`Locks`: the locks held now."""
        self._open()
        now = self.clock.now()
        return await self._ro(lambda c: shared.locks(c, now))

    async def beat(self, worker: WorkerInfo, ttl: float) -> None:
        """`Presence`: record `worker` as alive for `ttl` seconds."""
        self._open()
        now = self.clock.now()
        await self._tx(lambda c: shared.beat(c, worker, ttl, now))

    async def workers(self) -> list[WorkerInfo]:
        """`Presence`: workers heard from within their ttl."""
        self._open()
        now = self.clock.now()
        return await self._tx(lambda c: shared.workers(c, now))

    async def leave(self, worker_id: str) -> None:
        """`Presence`: forget `worker_id`."""
        self._open()
        await self._tx(lambda c: shared.leave(c, worker_id))

    async def add_rollups(self, rows: Sequence[Rollup], keep_for: float) -> None:
        """`Rollups`: add each row's values to its minute's, in one transaction."""
        self._open()
        check_rows(rows, keep_for)
        if not rows:
            return
        now = self.clock.now()
        await self._tx(lambda c: shared.add_rollups(c, rows, keep_for, now))

    async def rollups(
        self, since: float, until: float | None = None, *, queue: str | None = None
    ) -> list[Rollup]:
        """`Rollups`: the rows of the minutes overlapping ``[since, until)``."""
        self._open()
        now = self.clock.now()
        end = now if until is None else until
        return await self._ro(lambda c: shared.rollups(c, since, end, queue, now))

    async def pause(self, queue: str) -> bool:
        """`QueueControl`: stop claims from `queue`; `True` if it was running."""
        self._open()
        check_queue(queue)
        now = self.clock.now()
        return await self._tx(lambda c: shared.pause(c, queue, now))

    async def resume(self, queue: str) -> bool:
        """`QueueControl`: claims take from `queue` again; `True` if it was paused. The
        commit wakes idle workers (this process's at once, others' by `data_version`)."""
        self._open()
        check_queue(queue)
        resumed = await self._tx(lambda c: shared.resume(c, queue))
        self._woke(resumed)
        return resumed

    async def paused(self) -> list[str]:
        """`QueueControl`: the paused queues, by name."""
        self._open()
        return await self._ro(shared.paused)

    async def lanes(self, queue: str | None = None) -> list[LaneInfo]:
        """`FlowControl`: the lanes kept (of `queue`, or of every queue), idle ones left out."""
        self._open()
        if queue is not None:
            check_queue(queue)
        now = self.clock.now()
        return await self._ro(lambda c: flow.lanes(c, queue, now))

    async def set_circuit(
        self, queue: str, lane: str, state: str, duration: float | None = None
    ) -> str:
        """`FlowControl`: open or close a lane's circuit by hand; the state it was in. A
        close wakes idle workers (this process's at once, others' by `data_version`)."""
        self._open()
        check_circuit_change(queue, lane, state, duration)
        now = self.clock.now()
        old = await self._tx(lambda c: flow.set_circuit(c, queue, lane, state, duration, now))
        self._woke(state == "closed")
        return old

    def _lock_look(self, name: str, seen: int, expires: float | None) -> tuple[int, float | None]:
        """`data_version` and, if it moved since `seen`, the expiry of `name`'s holding
        (`None`: free); both on the watch connection (shared memory and one indexed row)."""
        with self._watch_lock:
            if self._closed:
                return seen, None
            if self._watch is None or self._pid != os.getpid():
                self._watch = sqlite3.connect(self.path, check_same_thread=False)
            (version,) = self._watch.execute("PRAGMA data_version").fetchone()
            if version != seen:
                expires = shared.lock_expiry(self._watch, name)
            return int(version), expires

    def _changed(self) -> bool:
        """Whether any connection committed since the last look (cheap: no disk I/O)."""
        with self._watch_lock:
            if self._closed:
                return True
            if self._watch is None or self._pid != os.getpid():
                self._watch = sqlite3.connect(self.path, check_same_thread=False)
            (version,) = self._watch.execute("PRAGMA data_version").fetchone()
            changed = version != self._data_version
            self._data_version = version
            return bool(changed)

    async def _aclose(self) -> None:
        executor, conn = self._executor, self._conn
        if executor is not None and self._pid == os.getpid():
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            executor.shutdown(wait=False)
        with self._watch_lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
        with self._fast_lock:
            if self._fast is not None and self._pid == os.getpid():
                self._fast.close()
            self._fast = None
