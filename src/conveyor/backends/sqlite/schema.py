"""The SQLite schema, its version, and the migrations that move old files forward.

The `jobs` table's record columns derive from `conveyor.fields`: `COLUMNS` (what every
SELECT/RETURNING reads), `INSERTED` (what an enqueue writes) and, for a field added to `Job`
after a file was created, `sync_columns` adds its column on open. Columns only this store
needs (`seq`, `token`, `key_lock`, `lease_expires`, `expires_at`, `has_children`), the
indexes and the other tables (the capabilities', the dependency `edges`) are in the
migrations, which are history: never edit one, add the next.
"""

from __future__ import annotations

import sqlite3

from conveyor.errors import StoreUnavailable
from conveyor.fields import ENQUEUED, FIELDS, NAMES, Field, Kind

__all__ = [
    "COLUMNS",
    "DONE",
    "INSERTED",
    "SCHEMA_VERSION",
    "column_decl",
    "migrate",
    "sync_columns",
]

SCHEMA_VERSION = 4

#: Every SELECT/RETURNING reads `seq`, the record's fields in `fields.FIELDS` order, then
#: `token`; `ops.row_to_job` depends on it.
COLUMNS = ", ".join(("seq", *NAMES, "token"))
#: What every statement that ends a job sets (its parameters: now, now).
DONE = "finished_at = ?, expires_at = ? + keep_for, worker = NULL, lease_expires = NULL"
#: The columns an enqueue writes: the producer's fields (`fields.ENQUEUED`), then `state`
#: and `key_lock`.
INSERTED = (*(f.name for f in ENQUEUED), "state", "key_lock")

_SQL_TYPE = {
    Kind.TEXT: "TEXT NOT NULL",
    Kind.OPT_TEXT: "TEXT",
    Kind.INT: "INTEGER NOT NULL",
    Kind.FLOAT: "REAL NOT NULL",
    Kind.OPT_FLOAT: "REAL",
    Kind.BYTES: "BLOB NOT NULL",
    Kind.OPT_BYTES: "BLOB",
    Kind.FLAG: "INTEGER NOT NULL",
    Kind.STATE: "TEXT NOT NULL",
    Kind.META: "TEXT NOT NULL",
    Kind.ERRORS: "TEXT NOT NULL",
    Kind.IDS: "TEXT NOT NULL",
}


def column_decl(field: Field) -> str:
    """The column declaration of a record field (used for fields added after version 1)."""
    decl = f"{field.name} {_SQL_TYPE[field.kind]}"
    if field.kind.optional:
        return decl
    default = field.default
    if field.kind is Kind.META:
        return decl + " DEFAULT '{}'"
    if field.kind is Kind.ERRORS:
        return decl + " DEFAULT '[]'"
    if field.kind is Kind.IDS:
        return decl + " DEFAULT ''"
    if isinstance(default, bool):
        return decl + f" DEFAULT {int(default)}"
    if isinstance(default, int | float):
        return decl + f" DEFAULT {default!r}"
    if isinstance(default, str):
        return decl + " DEFAULT '" + default.replace("'", "''") + "'"
    return decl + " DEFAULT x''"


def sync_columns(conn: sqlite3.Connection) -> None:
    """Add the column of every record field the file lacks (a field added to `Job` since
    the file was made). Idempotent; safe to race (each ALTER runs in its own transaction)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for field in FIELDS:
        if field.name in have:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            if field.name not in have:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {column_decl(field)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


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

# Version 2: the optional capabilities' tables (`conveyor.capabilities`).
_V2 = """
CREATE TABLE counters (
    key        TEXT PRIMARY KEY,
    value      INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE locks (
    name       TEXT PRIMARY KEY,
    owner      TEXT,                               -- NULL while free
    token      INTEGER NOT NULL,                   -- fencing token: +1 on every acquire
    expires_at REAL
) WITHOUT ROWID;
CREATE TABLE presence (
    id         TEXT PRIMARY KEY,
    info       BLOB NOT NULL,                      -- the WorkerInfo record, JSON
    seen_at    REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""

# Version 3: paused queues (`QueueControl`); every claim reads this (small) table.
_V3 = """
CREATE TABLE paused (
    queue      TEXT PRIMARY KEY,
    paused_at  REAL NOT NULL
) WITHOUT ROWID;
"""

# Version 4: job dependencies. One row per parent→child edge not yet counted: written when a
# waiting child is enqueued, read (by parent, the primary key) and deleted in the transaction
# that ends the parent; a child cancelled meanwhile loses the rest of its edges. So the table
# holds exactly the uncounted edges of waiting jobs. `has_children` marks the jobs an edge
# ever named: the statement that ends a job returns it, and only those look up edges (jobs
# without children pay no extra statement, whatever else the file holds).
_V4 = """
ALTER TABLE jobs ADD COLUMN has_children INTEGER NOT NULL DEFAULT 0;
CREATE TABLE edges (
    parent     TEXT NOT NULL,                      -- a job that has not ended yet
    child      TEXT NOT NULL,                      -- a waiting job that counts its end
    PRIMARY KEY (parent, child)
) WITHOUT ROWID;
CREATE INDEX edges_child ON edges (child);         -- a cancelled child's uncounted edges go
"""

# MIGRATIONS[n] moves a file at version n to version n + 1.
MIGRATIONS: dict[int, str] = {0: _V1, 1: _V2, 2: _V3, 3: _V4}


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the file to `SCHEMA_VERSION`, one transaction per step. Safe to race."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version >= SCHEMA_VERSION:
                conn.execute("COMMIT")
                if version > SCHEMA_VERSION:
                    raise StoreUnavailable(
                        f"the job database has schema version {version}, newer than this "
                        f"Conveyor understands ({SCHEMA_VERSION}); upgrade Conveyor"
                    )
                break
            for statement in _statements(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    sync_columns(conn)


def _statements(script: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return [s for s in out if s]
