"""The backend contract against SQLite, plus what only a file-backed store can show."""

import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.backends.base import ClaimRequest
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.backends.sqlite.schema import SCHEMA_VERSION
from conveyor.clock import FakeClock
from conveyor.errors import StoreUnavailable
from conveyor.job import JobState
from conveyor.testing.contract import BackendContract, Corrupt, PoisonContract, make_job


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
    plan = " ".join(
        str(r)
        for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM jobs WHERE state = 'queued' AND queue = 'q' "
            "ORDER BY priority DESC, run_at, seq LIMIT 10"
        )
    )
    conn.close()
    assert "jobs_ready" in plan and "TEMP B-TREE" not in plan


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
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE paused")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    async with SQLiteBackend(path) as b:
        assert await b.pause("default") is True
        assert await b.claim(ClaimRequest(["default"], 10, 30.0, "w")) == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    conn.close()
