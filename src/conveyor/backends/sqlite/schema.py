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

SCHEMA_VERSION = 6

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

# Version 5: flow control (`Backend.claim`'s lanes). The lane fields of `Job` are added
# here, not by `sync_columns`, because the index and triggers name them (a file opened by
# a build with the fields but not this migration may have some: `_V5_COLUMNS` adds the
# missing ones first). `lanes` holds one row per (queue, lane) with ready or running jobs,
# or with state to keep (a bucket refilling, a circuit counting or not closed): the
# triggers below keep `ready` and `running` exact on every path that moves a lane job
# (enqueue, promote, retry, rescue, release, requeue, dependency release, cancel), and a
# claim's side of the turns (pass += 1 / weight, a token, the probe). `wake` parks a lane
# without capacity: claims read only lanes with `wake <= now` (0: not parked; a time: the
# next token or the end of a cooldown; SLOT (1e300): until a slot comes back, which the
# trigger does; HAND (2e300): opened by hand with no end). `turns` keeps each queue's
# virtual time (the pass of the last job served) and the plain jobs' pass.
_LANE_FIELDS = ("lane", "weight", "concurrency", "rate", "burst", "circuit")
_SLOT = "1e300"
_V5 = f"""
DROP INDEX jobs_ready;
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at) WHERE state = 'queued' AND lane = '';
CREATE INDEX jobs_lane_ready ON jobs (queue, lane, priority DESC, run_at, seq)
    WHERE state = 'queued' AND lane != '';
CREATE TABLE lanes (
    queue        TEXT NOT NULL,
    lane         TEXT NOT NULL,
    ready        INTEGER NOT NULL DEFAULT 0,      -- its queued jobs
    running      INTEGER NOT NULL DEFAULT 0,      -- its running jobs: the slots taken
    weight       INTEGER NOT NULL DEFAULT 1,
    concurrency  INTEGER NOT NULL DEFAULT 0,
    rate         REAL NOT NULL DEFAULT 0,
    burst        INTEGER NOT NULL DEFAULT 0,
    circuit      TEXT NOT NULL DEFAULT '',
    pass         REAL NOT NULL DEFAULT 0,
    active       INTEGER NOT NULL DEFAULT 0,      -- eligible at the last claim that looked
    tokens       REAL,                            -- NULL: full (a new lane)
    tokens_at    REAL,
    state        TEXT NOT NULL DEFAULT 'closed',  -- closed, open, half_open
    until        REAL,                            -- open: when it turns half-open
    window_start REAL,
    calls        INTEGER NOT NULL DEFAULT 0,
    failures     INTEGER NOT NULL DEFAULT 0,
    probe        TEXT,                            -- half-open: the job probing
    wake         REAL NOT NULL DEFAULT 0,         -- parked until (see above)
    PRIMARY KEY (queue, lane)
) WITHOUT ROWID;
CREATE INDEX lanes_wake ON lanes (queue, wake) WHERE ready > 0;
CREATE TABLE turns (
    queue        TEXT PRIMARY KEY,
    vtime        REAL NOT NULL,
    plain_pass   REAL NOT NULL,
    plain_active INTEGER NOT NULL
) WITHOUT ROWID;
-- A lane job becoming ready: counted, and it sets the lane's weight and limits (a lane
-- parked for a slot is looked at again when its limits change).
CREATE TRIGGER jobs_lane_new AFTER INSERT ON jobs WHEN new.lane != '' AND new.state = 'queued'
BEGIN
    INSERT INTO lanes (queue, lane, ready, weight, concurrency, rate, burst, circuit)
    VALUES (new.queue, new.lane, 1, max(1, new.weight), new.concurrency, new.rate, new.burst,
            new.circuit)
    ON CONFLICT (queue, lane) DO UPDATE SET ready = ready + 1,
        wake = CASE WHEN wake = {_SLOT} AND concurrency != excluded.concurrency THEN 0
            ELSE wake END,
        weight = excluded.weight, concurrency = excluded.concurrency, rate = excluded.rate,
        burst = excluded.burst, circuit = excluded.circuit,
        tokens = min(tokens, excluded.burst);
END;
CREATE TRIGGER jobs_lane_ready AFTER UPDATE OF state ON jobs
WHEN new.lane != '' AND new.state = 'queued' AND old.state != 'queued'
BEGIN
    INSERT INTO lanes (queue, lane, ready, weight, concurrency, rate, burst, circuit)
    VALUES (new.queue, new.lane, 1, max(1, new.weight), new.concurrency, new.rate, new.burst,
            new.circuit)
    ON CONFLICT (queue, lane) DO UPDATE SET ready = ready + 1,
        running = max(0, running - (old.state = 'running')),
        wake = CASE WHEN wake = {_SLOT} AND (old.state = 'running'
            OR concurrency != excluded.concurrency) THEN 0 ELSE wake END,
        weight = excluded.weight, concurrency = excluded.concurrency, rate = excluded.rate,
        burst = excluded.burst, circuit = excluded.circuit,
        tokens = min(tokens, excluded.burst);
END;
-- A lane job claimed: its turn (pass += 1 / weight), its token, (half-open) the probe.
CREATE TRIGGER jobs_lane_claimed AFTER UPDATE OF state ON jobs
WHEN new.lane != '' AND new.state = 'running' AND old.state = 'queued'
BEGIN
    UPDATE lanes SET ready = max(0, ready - 1), running = running + 1,
        pass = pass + 1.0 / weight,
        tokens = CASE WHEN rate > 0 THEN tokens - 1 ELSE tokens END,
        probe = CASE WHEN state = 'half_open' THEN new.id ELSE probe END,
        active = CASE WHEN ready <= 1 THEN 0 ELSE active END
    WHERE queue = new.queue AND lane = new.lane;
END;
-- A lane job leaving queued or running any other way (not to queued: `jobs_lane_ready`):
-- an exit from running gives the slot back and unparks the lane; a lane left with nothing
-- to keep is deleted.
CREATE TRIGGER jobs_lane_left AFTER UPDATE OF state ON jobs
WHEN new.lane != '' AND new.state NOT IN ('queued', 'running') AND old.state != new.state
    AND old.state IN ('queued', 'running')
BEGIN
    UPDATE lanes SET
        ready = max(0, ready - (old.state = 'queued')),
        running = max(0, running - (old.state = 'running')),
        wake = CASE WHEN wake = {_SLOT} AND old.state = 'running' THEN 0 ELSE wake END,
        active = CASE WHEN ready - (old.state = 'queued') <= 0 THEN 0 ELSE active END
    WHERE queue = new.queue AND lane = new.lane;
    DELETE FROM lanes WHERE queue = new.queue AND lane = new.lane AND ready = 0
        AND running = 0 AND state = 'closed' AND rate = 0 AND circuit = '' AND calls = 0;
END;
"""

# Version 6: job metrics over time (`Rollups`): one row per (minute, queue, task) holding its
# named sums as a JSON object, merged by the writes (workers, about once a second each); read
# by minute range in the primary key's order, so an hour of 20 tasks is 1,200 short rows.
# Rows past `expires_at` are deleted by the writes themselves.
_V6 = """
CREATE TABLE IF NOT EXISTS rollups (
    minute     INTEGER NOT NULL,                   -- epoch seconds, a multiple of 60
    queue      TEXT NOT NULL,
    task       TEXT NOT NULL,
    vals       BLOB NOT NULL,                      -- {"name": amount, ...} as JSON
    expires_at REAL NOT NULL,
    PRIMARY KEY (minute, queue, task)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollups_expiry ON rollups (expires_at);
"""

# MIGRATIONS[n] moves a file at version n to version n + 1.
MIGRATIONS: dict[int, str] = {0: _V1, 1: _V2, 2: _V3, 3: _V4, 4: _V5, 5: _V6}


def _add_lane_columns(conn: sqlite3.Connection) -> None:
    """Before `_V5`: the lane fields' columns the file lacks."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    by_name = {f.name: f for f in FIELDS}
    for name in _LANE_FIELDS:
        if name not in have:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {column_decl(by_name[name])}")


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
            if version == 4:
                _add_lane_columns(conn)
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
