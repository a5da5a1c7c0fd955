"""The backend contract against SQLite, plus what only a file-backed store can show."""

import asyncio
import os
import signal
import sqlite3
import stat
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from conveyor.backends.base import ClaimRequest
from conveyor.backends.sqlite import SQLiteBackend, depend
from conveyor.backends.sqlite.schema import SCHEMA_VERSION
from conveyor.capabilities import Rollup
from conveyor.clock import FakeClock
from conveyor.errors import BackendError, DependencyError, StoreUnavailable
from conveyor.job import Completed, Failed, Job, JobState
from conveyor.testing.contract import (
    BackendContract,
    Corrupt,
    PoisonContract,
    err,
    make_job,
)


class TestSQLiteBackend(BackendContract, PoisonContract):
    @pytest.fixture
    async def backend(self, clock: FakeClock, tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
        async with SQLiteBackend(tmp_path / "jobs.db", clock=clock) as b:
            yield b

    @pytest.fixture
    def corrupt(self, tmp_path: Path) -> Corrupt:
        async def corrupt(job_id: str, field: str, raw: str) -> None:
            conn = sqlite3.connect(tmp_path / "jobs.db")
            with conn:
                conn.execute(f"UPDATE jobs SET {field} = ? WHERE id = ?", (raw, job_id))
            conn.close()

        return corrupt


async def test_file_is_private_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with SQLiteBackend(path) as b:
        await b.enqueue([make_job(FakeClock())])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_jobs_survive_reopen(tmp_path: Path) -> None:
    clock = FakeClock()
    job = make_job(clock, payload=b'{"n":1}')
    async with SQLiteBackend(tmp_path / "j.db", clock=clock) as b:
        await b.enqueue([job])
    async with SQLiteBackend(tmp_path / "j.db", clock=clock) as b:
        (got,) = await b.get([job.id])
        assert got is not None and got.payload == b'{"n":1}' and got.state is JobState.QUEUED


async def test_unopenable_path_is_a_clear_error(tmp_path: Path) -> None:
    async with SQLiteBackend(tmp_path / "missing-dir" / "jobs.db") as b:
        with pytest.raises(StoreUnavailable, match="cannot create the job database"):
            await b.counts()
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    async with SQLiteBackend(not_a_db) as b:
        with pytest.raises(StoreUnavailable, match="cannot open the job database"):
            await b.counts()


async def test_path_that_is_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    async with SQLiteBackend(tmp_path) as b:
        with pytest.raises(StoreUnavailable, match="cannot open the job database"):
            await b.enqueue([make_job(FakeClock())])


async def test_claim_uses_the_ready_index(tmp_path: Path) -> None:
    async with SQLiteBackend(tmp_path / "j.db") as b:
        await b.counts()
    conn = sqlite3.connect(tmp_path / "j.db")

    def plan(sql: str) -> str:
        return " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN " + sql))

    plain = plan(
        "SELECT seq FROM jobs WHERE state = 'queued' AND lane = '' AND queue = 'q' "
        "ORDER BY priority DESC, run_at, seq LIMIT 10"
    )
    # A lane's jobs: its own index, no scan of other lanes' jobs or sort.
    lane = plan(
        "SELECT seq FROM jobs WHERE state = 'queued' AND lane != '' AND queue = 'q' "
        "AND lane = 'a' ORDER BY priority DESC, run_at, seq LIMIT 10"
    )
    # A claim reads the lanes not parked (wake <= now) of a queue, by index.
    lanes = plan("SELECT lane FROM lanes WHERE queue = 'q' AND wake <= 5.0 AND ready > 0")
    conn.close()
    assert "jobs_ready" in plain and "TEMP B-TREE" not in plain
    assert "jobs_lane_ready" in lane and "TEMP B-TREE" not in lane
    assert "lanes_wake" in lanes and "wake<?" in lanes.replace(" ", "")


async def test_a_dangling_symlink_leads_to_a_private_file(tmp_path: Path) -> None:
    target = tmp_path / "real" / "jobs.db"
    target.parent.mkdir(mode=0o700)
    link = tmp_path / "jobs.db"
    link.symlink_to(target)  # dangling: the target does not exist yet
    old = os.umask(0o022)  # a permissive umask must not leak into the file's mode
    try:
        async with SQLiteBackend(link) as b:
            await b.enqueue([make_job(FakeClock())])
    finally:
        os.umask(old)
    assert link.is_symlink() and target.is_file()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


async def test_world_writable_files_and_directories_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by all, no sticky bit: anyone could swap the file
    with caplog.at_level("WARNING", "conveyor.backends.sqlite"):
        async with SQLiteBackend(shared / "jobs.db") as b:
            await b.counts()
    assert any("writable by every user" in r.getMessage() for r in caplog.records)
    caplog.clear()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    db = private / "jobs.db"
    db.touch(mode=0o666)
    db.chmod(0o666)
    with caplog.at_level("WARNING", "conveyor.backends.sqlite"):
        async with SQLiteBackend(db) as b:
            await b.counts()
    assert any("chmod 600" in r.getMessage() for r in caplog.records)


async def test_a_pause_survives_reopening_and_binds_other_processes(tmp_path: Path) -> None:
    clock = FakeClock()
    job = make_job(clock, queue="emails")
    async with SQLiteBackend(tmp_path / "j.db", clock=clock) as b:
        assert await b.pause("emails") is True
        await b.enqueue([job])
    async with (
        SQLiteBackend(tmp_path / "j.db", clock=clock) as b,
        SQLiteBackend(tmp_path / "j.db", clock=clock) as other,  # another process's view
    ):
        assert await b.paused() == ["emails"]
        assert await other.claim(ClaimRequest(["emails"], 10, 30.0, "w")) == []
        assert await b.resume("emails") is True
        (lease,) = await other.claim(ClaimRequest(["emails"], 10, 30.0, "w"))
        assert lease.id == job.id


async def test_a_version_2_file_gains_the_paused_table(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with SQLiteBackend(path) as b:
        await b.enqueue([make_job(FakeClock())])
    _as_version_3(path)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE paused")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    async with SQLiteBackend(path) as b:
        assert await b.pause("default") is True
        assert await b.claim(ClaimRequest(["default"], 10, 30.0, "w")) == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def _as_version_4(path: Path, lane_columns: bool = True) -> None:
    """Take a version 5 file back to version 4 (no lanes). With `lane_columns` the jobs
    keep the lane fields' columns, as a file that `sync_columns` opened with the fields
    but not the migration has them."""
    conn = sqlite3.connect(path)
    for trigger in ("jobs_lane_new", "jobs_lane_ready", "jobs_lane_claimed", "jobs_lane_left"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP TABLE lanes")
    conn.execute("DROP TABLE turns")
    conn.execute("DROP INDEX jobs_lane_ready")
    conn.execute("DROP INDEX jobs_ready")
    conn.execute(
        "CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at) WHERE state = 'queued'"
    )
    if not lane_columns:
        for column in ("lane", "weight", "concurrency", "rate", "burst", "circuit"):
            conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()


def _as_version_3(path: Path) -> None:
    """Take a version 5 file back to version 3 (no dependency edges, no lanes)."""
    _as_version_4(path, lane_columns=False)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE edges")
    conn.execute("ALTER TABLE jobs DROP COLUMN has_children")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("lane_columns", [False, True])
async def test_a_version_4_file_gains_the_lanes_and_its_jobs_are_claimed(
    tmp_path: Path, lane_columns: bool
) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    old = [make_job(clock, priority=i) for i in range(3)]
    async with SQLiteBackend(path, clock=clock) as b:
        await b.enqueue(old)
    _as_version_4(path, lane_columns)
    async with SQLiteBackend(path, clock=clock) as b:
        lane = [make_job(clock, lane="a", concurrency=1) for _ in range(2)]
        await b.enqueue(lane)
        got = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert sorted(lease.id for lease in got) == sorted([j.id for j in old] + [lane[0].id])
        assert [lease.id for lease in got if not lease.job.lane] == [j.id for j in old[::-1]]
        (info,) = await b.lanes("default")
        assert (info.lane, info.ready, info.running) == ("a", 1, 1)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_a_version_3_file_gains_the_edges_and_its_jobs_wait(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    old = make_job(clock)
    async with SQLiteBackend(path, clock=clock) as b:
        await b.enqueue([old])
    _as_version_3(path)
    async with SQLiteBackend(path, clock=clock) as b:
        child = make_job(clock, parents=(old.id,))
        assert await b.enqueue([child]) == [child.id]
        (lease,) = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert lease.id == old.id
        assert await b.settle([(lease, Completed(None))]) == [True]
        (got,) = await b.get([child.id])
        assert got is not None and got.state is JobState.QUEUED
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    conn.close()


async def test_a_version_5_file_gains_the_rollups_table(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    async with SQLiteBackend(path, clock=clock) as b:
        await b.enqueue([make_job(clock)])
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE rollups")
    conn.execute("PRAGMA user_version = 5")
    conn.commit()
    conn.close()
    async with SQLiteBackend(path, clock=clock) as b:
        minute = int(clock.now() // 60) * 60
        row = Rollup(minute=minute, queue="default", task="t", values={"completed": 2})
        await b.add_rollups([row], keep_for=3600)
        assert await b.rollups(minute) == [row]
        assert (await b.counts())["default"][JobState.QUEUED] == 1  # the jobs are intact
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


# -- dependencies: what only a file-backed store can show -----------------------------------


def _edges(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("SELECT parent, child FROM edges"))
    finally:
        conn.close()


async def test_a_release_survives_reopening_the_file(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    a = make_job(clock)
    b = make_job(clock, parents=(a.id,))
    c = make_job(clock, parents=(b.id,))
    async with SQLiteBackend(path, clock=clock) as first:
        assert await first.enqueue([a, b, c]) == [a.id, b.id, c.id]
        (lease,) = await first.claim(ClaimRequest(["default"], 10, 30.0, "w"))
    assert _edges(path) == sorted([(a.id, b.id), (b.id, c.id)])
    async with SQLiteBackend(path, clock=clock) as second:  # a restarted process
        got = await second.get([b.id, c.id])
        assert [j.state for j in got if j] == [JobState.WAITING, JobState.WAITING]
        assert await second.settle([(lease, Completed(b"1"))]) == [True]
        (got_b,) = await second.get([b.id])
        assert got_b is not None and got_b.state is JobState.QUEUED and got_b.waiting_for == 0
    assert _edges(path) == [(b.id, c.id)]  # the counted edge is gone
    async with SQLiteBackend(path, clock=clock) as third:
        (lease,) = await third.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert lease.id == b.id
        assert await third.settle([(lease, Completed(None))]) == [True]
        (lease,) = await third.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert lease.id == c.id
    assert _edges(path) == []


_HOLDER = """
import asyncio, sys, time
from conveyor.backends.base import ClaimRequest
from conveyor.backends.sqlite import SQLiteBackend, ops
from conveyor.job import Job

async def main():
    now = time.time()
    parent = Job(id=sys.argv[2], task="t", payload=b"{}", run_at=now, max_attempts=2)
    child = Job(id=sys.argv[3], task="t", payload=b"{}", run_at=now, parents=(parent.id,))
    backend = SQLiteBackend(sys.argv[1])
    await backend.enqueue([parent, child])
    (lease,) = await backend.claim(ClaimRequest(["default"], 1, 0.3, "doomed"))
    print(lease.id, flush=True)
    await asyncio.sleep(60)  # SIGKILLed here, holding the parent

asyncio.run(main())
"""


async def test_a_child_waits_out_its_parents_worker_being_killed(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    parent, child = "a" * 32, "b" * 32
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, str(path), parent, child, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.decode().strip() == parent
    finally:
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == -signal.SIGKILL
    async with SQLiteBackend(path) as b:
        (got,) = await b.get([child])
        assert got is not None and got.state is JobState.WAITING
        deadline = time.monotonic() + 5
        while await b.rescue() == 0:  # the killed worker's 0.3 s lease runs out
            assert time.monotonic() < deadline, "the parent's lease never expired"
            await asyncio.sleep(0.05)
        assert [j.state for j in await b.get([parent, child]) if j] == [
            JobState.QUEUED, JobState.WAITING,
        ]  # fmt: skip
        (lease,) = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert lease.id == parent
        assert await b.settle([(lease, Completed(None))]) == [True]
        (got,) = await b.get([child])
        assert got is not None and got.state is JobState.QUEUED


async def test_the_parents_end_and_its_childrens_release_are_one_transaction(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    parent = make_job(clock)
    child = make_job(clock, parents=(parent.id,))
    async with SQLiteBackend(path, clock=clock) as b:
        await b.enqueue([parent, child])
        (lease,) = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        conn = sqlite3.connect(path)
        with conn:  # the release fails inside the settle's transaction
            conn.execute(
                "CREATE TRIGGER refuse BEFORE UPDATE OF state ON jobs "
                "WHEN OLD.state = 'waiting' BEGIN SELECT RAISE(ABORT, 'release refused'); END"
            )
        with pytest.raises(BackendError, match="release refused"):
            await b.settle([(lease, Completed(None))])
        got = await b.get([parent.id, child.id])
        assert [j.state for j in got if j] == [JobState.RUNNING, JobState.WAITING]
        assert _edges(path) == [(parent.id, child.id)]
        with conn:
            conn.execute("DROP TRIGGER refuse")
        conn.close()
        assert await b.settle([(lease, Completed(None))]) == [True]
        got = await b.get([parent.id, child.id])
        assert [j.state for j in got if j] == [JobState.COMPLETED, JobState.QUEUED]


class _PurgedMeanwhile(SQLiteBackend):
    """A store whose parents are purged, by another connection, between the base's check
    and the write (the purge race)."""

    async def _check_dependencies(self, jobs: Sequence[Job]) -> None:
        await super()._check_dependencies(jobs)
        async with SQLiteBackend(self.path, clock=self.clock) as other:
            await other.purge([JobState.COMPLETED])


async def test_a_parent_purged_after_the_check_writes_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    async with _PurgedMeanwhile(tmp_path / "j.db", clock=clock) as b:
        gone = make_job(clock, keep_for=0.0)
        await b.enqueue([gone])
        (lease,) = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert await b.settle([(lease, Completed(None))]) == [True]
        sibling = make_job(clock)
        late = make_job(clock, parents=(sibling.id, gone.id))
        with pytest.raises(DependencyError, match=rf"{late.id} depends on {gone.id}.*purged"):
            await b.enqueue([sibling, late])
        assert await b.get([gone.id, sibling.id, late.id]) == [None, None, None]
    assert _edges(tmp_path / "j.db") == []


async def test_a_cancel_cascades_down_a_long_chain_in_one_step(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    chain = [make_job(clock)]
    for _ in range(299):
        chain.append(make_job(clock, parents=(chain[-1].id,)))
    side = make_job(clock, parents=(chain[5].id, chain[0].id), key="side")
    async with SQLiteBackend(path, clock=clock) as b:
        await b.enqueue([*chain, side])
        assert await b.cancel(chain[0].id, "stop") is JobState.CANCELLED
        got = await b.get([j.id for j in chain])
        assert all(j is not None and j.state is JobState.CANCELLED for j in got)
        for parent, job in zip(chain, got[1:], strict=False):
            assert job is not None and job.meta["cancel_reason"] == f"parent {parent.id} cancelled"
        (got_side,) = await b.get([side.id])
        assert got_side is not None and got_side.state is JobState.CANCELLED
        assert got_side.meta["cancel_reason"] == f"parent {chain[0].id} cancelled"
        again = make_job(clock, key="side")  # a cancelled child released its key
        assert await b.enqueue([again]) == [again.id]
    assert _edges(path) == []


async def test_a_cancelled_child_leaves_no_edges_behind(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    a, b_ = make_job(clock), make_job(clock)
    child = make_job(clock, parents=(a.id, b_.id))
    async with SQLiteBackend(path, clock=clock) as b:
        await b.enqueue([a, b_, child])
        assert len(_edges(path)) == 2
        assert await b.cancel(child.id) is JobState.CANCELLED
        assert _edges(path) == []  # its parents, still queued, have nothing left to count
        leases = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert {lease.id for lease in leases} == {a.id, b_.id}
        assert await b.settle([(lease, Completed(None)) for lease in leases]) == [True, True]
        (got,) = await b.get([child.id])
        assert got is not None and got.state is JobState.CANCELLED


async def test_the_edge_read_uses_the_primary_key(tmp_path: Path) -> None:
    async with SQLiteBackend(tmp_path / "j.db") as b:
        await b.counts()
    conn = sqlite3.connect(tmp_path / "j.db")
    plan = " ".join(
        str(r)
        for r in conn.execute(
            "EXPLAIN QUERY PLAN " + depend._CHILDREN.format(marks="?, ?"), ("a" * 32, "b" * 32)
        )
    )
    conn.close()
    assert "SEARCH e USING PRIMARY KEY (parent=?)" in plan
    assert "SEARCH j USING INDEX sqlite_autoindex_jobs_1 (id=?)" in plan


async def test_a_call_mixing_plain_keyed_and_waiting_jobs(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    async with SQLiteBackend(path, clock=clock) as b:
        failed = make_job(clock)
        await b.enqueue([failed])
        (lease,) = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert await b.settle([(lease, Failed(err()))]) == [True]
        a, c = make_job(clock), make_job(clock)
        child = make_job(clock, parents=(a.id, c.id))  # both plain, earlier in the call
        keyed = make_job(clock, key="k")
        doomed = make_job(clock, parents=(failed.id,), key="doomed")
        tail = make_job(clock, parents=(child.id,))
        jobs = [a, c, child, keyed, make_job(clock, key="k"), doomed, tail, make_job(clock)]
        ids = await b.enqueue(jobs)
        assert ids == [j.id for j in jobs[:4]] + [keyed.id] + [j.id for j in jobs[5:]]
        got = {j.id: j for j in await b.get(ids) if j}
        assert [got[j.id].state for j in (a, c, child, keyed, doomed, tail)] == [
            JobState.QUEUED, JobState.QUEUED, JobState.WAITING, JobState.QUEUED,
            JobState.CANCELLED, JobState.WAITING,
        ]  # fmt: skip
        assert got[child.id].waiting_for == 2
        assert got[doomed.id].meta["cancel_reason"] == f"parent {failed.id} failed"
        again = make_job(clock, key="doomed")  # stored cancelled, it never held its key
        assert await b.enqueue([again]) == [again.id]
    assert _edges(path) == sorted([(a.id, child.id), (c.id, child.id), (child.id, tail.id)])


# -- holds and link ------------------------------------------------------------------------


async def test_a_first_wait_on_a_new_file_creates_it_private_and_times_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    async with SQLiteBackend(path) as b:
        start = time.monotonic()
        await b.wait(["default"], timeout=0.2)  # the file's own creation is no news
        assert time.monotonic() - start >= 0.15
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_held_jobs_survive_reopening_and_another_process_links_them(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    held = make_job(clock, waiting_for=1, key="callback")
    plain = make_job(clock)
    async with SQLiteBackend(path, clock=clock) as first:
        assert await first.enqueue([plain, held]) == [plain.id, held.id]
    async with (
        SQLiteBackend(path, clock=clock) as b,
        SQLiteBackend(path, clock=clock) as other,  # another process's view of the file
    ):
        (got,) = await b.get([held.id])
        assert got is not None and got.state is JobState.WAITING and got.waiting_for == 1
        assert await b.enqueue([make_job(clock, key="callback")]) == [held.id]  # key held
        (lease,) = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert lease.id == plain.id
        assert await other.link(held.id, [plain.id])  # a live parent: an edge
        assert _edges(path) == [(plain.id, held.id)]
        waiter = asyncio.create_task(b.wait(["default"], timeout=10.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        assert await other.settle([(lease, Completed(None))]) == [True]
        (got,) = await b.get([held.id])
        assert got is not None and got.state is JobState.WAITING and got.waiting_for == 1
        start = time.monotonic()
        assert await other.link(held.id, holds=-1)  # the last hold: released
        await asyncio.wait_for(waiter, 2.0)  # woken by the other connection's commit
        assert time.monotonic() - start < 1.0
        (lease,) = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert lease.id == held.id and lease.job.parents == (plain.id,)
    assert _edges(path) == []


async def test_a_link_of_many_parents_in_one_call(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    async with SQLiteBackend(path, clock=clock) as b:
        done = [make_job(clock) for _ in range(300)]
        await b.enqueue(done)
        leases = await b.claim(ClaimRequest(["default"], 1000, 30.0, "w"))
        assert all(await b.settle([(lease, Completed(None)) for lease in leases]))
        live = [make_job(clock) for _ in range(900)]  # more than one `IN (...)` chunk
        held = make_job(clock, waiting_for=1)
        await b.enqueue([*live, held])
        parents = [j.id for j in done + live]
        assert await b.link(held.id, parents, holds=-1)
        (got,) = await b.get([held.id])
        assert got is not None and got.state is JobState.WAITING and got.waiting_for == 900
        assert got.parents == tuple(parents)
        assert len(_edges(path)) == 900
        leases = await b.claim(ClaimRequest(["default"], 1000, 30.0, "w"))
        assert {lease.id for lease in leases} == {j.id for j in live}
        assert all(await b.settle([(lease, Completed(None)) for lease in leases]))
        (got,) = await b.get([held.id])
        assert got is not None and got.state is JobState.QUEUED and got.waiting_for == 0
    assert _edges(path) == []


async def test_a_link_that_cancels_or_over_releases_leaves_no_edges(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    async with SQLiteBackend(path, clock=clock) as b:
        failed = make_job(clock)
        await b.enqueue([failed])
        (lease,) = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert await b.settle([(lease, Failed(err()))]) == [True]
        a, c = make_job(clock), make_job(clock)
        doomed = make_job(clock, parents=(a.id,), waiting_for=1, key="doomed")
        below = make_job(clock, parents=(doomed.id,))
        early = make_job(clock, parents=(c.id,), waiting_for=1)
        await b.enqueue([a, c, doomed, below, early])
        assert _edges(path) == sorted([(a.id, doomed.id), (doomed.id, below.id), (c.id, early.id)])
        assert await b.link(doomed.id, [failed.id])
        got = {j.id: j for j in await b.get([doomed.id, below.id]) if j}
        assert got[doomed.id].state is JobState.CANCELLED
        assert got[doomed.id].parents == (a.id, failed.id)
        assert got[below.id].meta["cancel_reason"] == f"parent {doomed.id} cancelled"
        assert await b.enqueue([again := make_job(clock, key="doomed")]) == [again.id]
        # More holds given back than were taken: released, its parent still queued.
        assert await b.link(early.id, holds=-5)
        (got_early,) = await b.get([early.id])
        assert got_early is not None and got_early.state is JobState.QUEUED
        assert _edges(path) == []
        leases = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert {lease.id for lease in leases} == {a.id, c.id, early.id, again.id}
        assert all(await b.settle([(lease, Completed(None)) for lease in leases]))


class _PurgedBeforeLink(SQLiteBackend):
    """A store whose completed jobs are purged, by another connection, between the base's
    link checks and the write."""

    async def _check_link(self, child: str, parents: list[str]) -> None:
        await super()._check_link(child, parents)
        async with SQLiteBackend(self.path, clock=self.clock) as other:
            await other.purge([JobState.COMPLETED])


async def test_a_parent_purged_after_the_link_check_changes_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    async with _PurgedBeforeLink(path, clock=clock) as b:
        gone, live = make_job(clock, keep_for=0.0), make_job(clock)
        await b.enqueue([gone])
        (lease,) = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert await b.settle([(lease, Completed(None))]) == [True]
        held = make_job(clock, waiting_for=1)
        await b.enqueue([live, held])
        with pytest.raises(DependencyError, match=rf"{held.id} can't wait for {gone.id}.*purged"):
            await b.link(held.id, [live.id, gone.id], holds=-1)
        (got,) = await b.get([held.id])
        assert got is not None and got.state is JobState.WAITING
        assert got.waiting_for == 1 and got.parents == ()
    assert _edges(path) == []


async def test_a_poison_child_is_released_and_its_parent_settles(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "j.db"
    async with SQLiteBackend(path, clock=clock) as b:
        parent = make_job(clock)
        child = make_job(clock, parents=(parent.id,))
        await b.enqueue([parent, child])
        conn = sqlite3.connect(path)
        with conn:  # unreadable values: they read as their defaults (0)
            conn.execute(
                "UPDATE jobs SET waiting_for = 'many', run_at = 'soon' WHERE id = ?", (child.id,)
            )
        conn.close()
        (lease,) = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert await b.settle([(lease, Completed(None))]) == [True]
        (got,) = await b.get([child.id])
        assert got is not None and got.state is JobState.QUEUED
        (lease,) = await b.claim(ClaimRequest(["default"], 10, 30.0, "w"))
        assert lease.id == child.id
