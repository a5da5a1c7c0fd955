"""The SQLite schema, its version, and the migrations that move old files forward."""

from __future__ import annotations

import sqlite3

__all__ = ["COLUMNS", "SCHEMA_VERSION", "migrate"]

SCHEMA_VERSION = 1

# The order of the columns every SELECT/RETURNING uses; `row_to_job` depends on it.
COLUMNS = (
    "seq, id, task, queue, priority, state, payload, run_at, enqueued_at, attempts, "
    "max_attempts, timeout, deadline, key, unique_until, keep_for, meta, result, errors, "
    "started_at, finished_at, worker, cancel_requested, token"
)

_V1 = """
CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY,          -- enqueue order, and the query cursor
    id               TEXT NOT NULL UNIQUE,
    task             TEXT NOT NULL,
    queue            TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    state            TEXT NOT NULL,
    payload          BLOB NOT NULL,
    run_at           REAL NOT NULL,
    enqueued_at      REAL NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 1,
    timeout          REAL,
    deadline         REAL,
    key              TEXT,                         -- as given, kept for inspection
    key_lock         TEXT,                         -- the key while it is held; NULL once released
    unique_until     REAL,
    keep_for         REAL NOT NULL,
    meta             TEXT NOT NULL DEFAULT '{}',
    result           BLOB,
    errors           TEXT NOT NULL DEFAULT '[]',   -- JSON array of attempt errors
    started_at       REAL,
    finished_at      REAL,
    expires_at       REAL,                         -- finished_at + keep_for, for purge
    worker           TEXT,
    token            INTEGER NOT NULL DEFAULT 0,   -- fencing token, +1 on every claim
    lease_expires    REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
-- Partial indexes stay small however many finished jobs are retained.
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at) WHERE state = 'queued';
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_running ON jobs (lease_expires) WHERE state = 'running';
CREATE INDEX jobs_expires ON jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX jobs_queue_state ON jobs (queue, state);
CREATE UNIQUE INDEX jobs_key_lock ON jobs (key_lock) WHERE key_lock IS NOT NULL;
CREATE INDEX jobs_key ON jobs (key) WHERE key IS NOT NULL;
"""

# MIGRATIONS[n] moves a file at version n to version n + 1.
MIGRATIONS: dict[int, str] = {0: _V1}


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the file to `SCHEMA_VERSION`, one transaction per step. Safe to race."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version >= SCHEMA_VERSION:
                conn.execute("COMMIT")
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"the job database has schema version {version}, newer than this "
                        f"Conveyor understands ({SCHEMA_VERSION}); upgrade Conveyor"
                    )
                return
            for statement in _statements(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _statements(script: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return [s for s in out if s]
