"""The SQL of each contract operation, as synchronous functions on one connection.

Each write runs in one `BEGIN IMMEDIATE` transaction (taken by the caller), so every
transition is atomic and writers queue for the lock up front instead of failing on upgrade.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from conveyor.backends import rules
from conveyor.backends.base import ClaimRequest, JobFilter, Page
from conveyor.backends.sqlite.schema import COLUMNS, INSERTED
from conveyor.fields import ENQUEUED, NAMES
from conveyor.job import (
    TERMINAL,
    AttemptError,
    Completed,
    Failed,
    Job,
    JobState,
    Lease,
    Outcome,
    Retrying,
)
from conveyor.rows import decode_job

_json = msgspec.json.Encoder()
_STATES = {s.value: s for s in JobState}
# Positions in a `COLUMNS` row: seq, the record's fields, token.
_PRIORITY, _RUN_AT = 1 + NAMES.index("priority"), 1 + NAMES.index("run_at")


def row_to_job(row: Sequence[object]) -> Job:
    """The `Job` of a `COLUMNS` row (a poison row decodes as `rows.decode_job` says)."""
    return decode_job(row[1:-1])


def _release_stale_key(conn: sqlite3.Connection, key: str, now: float) -> None:
    """Free a key whose holder no longer holds it (cancelled, or its window ended)."""
    conn.execute(
        "UPDATE jobs SET key_lock = NULL WHERE key_lock = ? AND (state = 'cancelled' OR "
        "(state IN ('completed', 'failed') AND unique_until IS NOT NULL AND unique_until <= ?))",
        (key, now),
    )


_INSERT = (
    f"INSERT {{verb}} INTO jobs ({', '.join(INSERTED)}) VALUES ({', '.join('?' * len(INSERTED))})"
)
_INSERT_PLAIN = _INSERT.format(verb="")
_INSERT_KEYED = _INSERT.format(verb="OR IGNORE")
_ENQUEUED = tuple(f.name for f in ENQUEUED)
# Encoded below, the rest stored as they are: meta (last) and the parents' ids (just before).
assert _ENQUEUED[-4:] == ("parents", "on_parent_failure", "feed", "meta")
_plain = operator.attrgetter(*_ENQUEUED[:-4])
_flow = operator.attrgetter("on_parent_failure", "feed")


def _insert_row(job: Job, now: float) -> tuple[object, ...]:
    meta = _json.encode(job.meta).decode() if job.meta else "{}"
    state = "scheduled" if job.run_at > now else "queued"
    return (*_plain(job), ",".join(job.parents), *_flow(job), meta, state, job.key)


def enqueue(conn: sqlite3.Connection, jobs: Sequence[Job], now: float) -> list[str]:
    if all(job.key is None for job in jobs):
        conn.executemany(_INSERT_PLAIN, [_insert_row(job, now) for job in jobs])
        return [job.id for job in jobs]
    out: list[str] = []
    for job in jobs:
        if job.key is None:
            conn.execute(_INSERT_PLAIN, _insert_row(job, now))
            out.append(job.id)
            continue
        _release_stale_key(conn, job.key, now)
        if conn.execute(_INSERT_KEYED, _insert_row(job, now)).rowcount == 1:
            out.append(job.id)
            continue
        holder = conn.execute("SELECT id FROM jobs WHERE key_lock = ?", (job.key,)).fetchone()
        out.append(job.id if holder is None else holder[0])
    return out


def promote(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute(
        "UPDATE jobs SET state = 'queued' WHERE state = 'scheduled' AND run_at <= ?", (now,)
    ).rowcount


_CLAIM = (
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, token = token + 1, "
    "lease_expires = ?, worker = ?, started_at = ? WHERE seq IN (SELECT seq FROM jobs "
    "WHERE state = 'queued' AND queue = ? ORDER BY priority DESC, run_at, seq LIMIT ?) "
    f"RETURNING {COLUMNS}"
)


def claim(conn: sqlite3.Connection, request: ClaimRequest, now: float) -> list[Lease]:
    promote(conn, now)
    # Paused queues are skipped in this transaction: a pause that committed before it
    # holds. One read of a table that is empty unless an operator paused something.
    paused = {q for (q,) in conn.execute("SELECT queue FROM paused")}
    expires = now + request.lease_for
    leases: list[Lease] = []
    for queue in request.queues:
        want = request.limit - len(leases)
        if want <= 0:
            break
        if queue in paused:
            continue
        rows = conn.execute(_CLAIM, (expires, request.worker, now, queue, want)).fetchall()
        # RETURNING gives no order guarantee; restore the claim order.
        rows.sort(key=lambda r: (-r[_PRIORITY], r[_RUN_AT], r[0]))
        leases.extend(Lease(row_to_job(r), r[-1], expires) for r in rows)
    return leases


def extend(
    conn: sqlite3.Connection, leases: Sequence[Lease], lease_for: float, now: float
) -> list[Lease | None]:
    out: list[Lease | None] = []
    expires = now + lease_for
    for lease in leases:
        updated = conn.execute(
            "UPDATE jobs SET lease_expires = ? WHERE id = ? AND state = 'running' AND token = ? "
            "AND cancel_requested = 0",
            (expires, lease.id, lease.token),
        ).rowcount
        if updated:
            out.append(Lease(lease.job, lease.token, expires))
            continue
        # A requested cancel lands here, fenced like any other transition.
        conn.execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?, expires_at = ? + keep_for, "
            "worker = NULL, lease_expires = NULL, key_lock = NULL "
            "WHERE id = ? AND state = 'running' AND token = ? AND cancel_requested = 1",
            (now, now, lease.id, lease.token),
        )
        out.append(None)
    return out


def _error_json(error: AttemptError) -> str:
    return _json.encode(error).decode()


_FENCE = "WHERE id = ? AND state = 'running' AND token = ?"
_DONE = "finished_at = ?, expires_at = ? + keep_for, worker = NULL, lease_expires = NULL"


def release(conn: sqlite3.Connection, leases: Sequence[Lease], now: float) -> list[bool]:
    """Unstarted leases back to queued, the attempt not counted (cancelled if requested)."""
    out: list[bool] = []
    for lease in leases:
        fence = (lease.id, lease.token)
        took = (
            conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = max(attempts - 1, 0), worker = NULL, "
                f"lease_expires = NULL, started_at = NULL {_FENCE} AND cancel_requested = 0",
                fence,
            ).rowcount
            or conn.execute(
                f"UPDATE jobs SET state = 'cancelled', {_DONE}, key_lock = NULL "
                f"{_FENCE} AND cancel_requested = 1",
                (now, now, *fence),
            ).rowcount
        )
        out.append(bool(took))
    return out


def annotate(
    conn: sqlite3.Connection, items: Sequence[tuple[Lease, Mapping[str, bytes | None]]]
) -> list[bool]:
    """Fenced writes of a running job's checkpoint and progress (see `Backend.annotate`)."""
    out: list[bool] = []
    for lease, values in items:
        sets: list[str] = []
        params: list[object] = []
        if "checkpoint" in values:
            sets.append("checkpoint = ?")
            params.append(values["checkpoint"])
        if "progress" in values:
            raw = values["progress"]
            sets.append("progress = ?")
            params.append("{}" if raw is None else raw.decode())
        if not sets:  # nothing to write: only the fence is checked
            sets.append("token = token")
        updated = conn.execute(
            f"UPDATE jobs SET {', '.join(sets)} {_FENCE}", (*params, lease.id, lease.token)
        ).rowcount
        out.append(bool(updated))
    return out


_COMPLETE_CHUNK = 400  # rows per statement: 3 parameters each, well under SQLite's limit


def _complete_many(
    conn: sqlite3.Connection, done: Sequence[tuple[Lease, Completed]], now: float
) -> set[tuple[str, int]]:
    """Complete many jobs in one statement per chunk, fenced per row; the (id, token) pairs
    that took."""
    took: set[tuple[str, int]] = set()
    for start in range(0, len(done), _COMPLETE_CHUNK):
        chunk = done[start : start + _COMPLETE_CHUNK]
        values = ",".join("(?, ?, ?)" for _ in chunk)
        args: list[object] = []
        for lease, outcome in chunk:
            args += (lease.id, lease.token, outcome.result)
        rows = conn.execute(
            f"UPDATE jobs SET state = 'completed', result = v.column3, finished_at = ?, "
            f"expires_at = ? + keep_for, worker = NULL, lease_expires = NULL "
            f"FROM (VALUES {values}) AS v WHERE jobs.id = v.column1 "
            f"AND jobs.token = v.column2 AND jobs.state = 'running' RETURNING jobs.id, jobs.token",
            (now, now, *args),
        ).fetchall()
        took.update((r[0], r[1]) for r in rows)
    return took


def settle(
    conn: sqlite3.Connection, outcomes: Sequence[tuple[Lease, Outcome]], now: float
) -> list[bool]:
    done = [(lease, o) for lease, o in outcomes if isinstance(o, Completed)]
    completed = _complete_many(conn, done, now) if done else set()
    out: list[bool] = []
    for lease, outcome in outcomes:
        fence = (lease.id, lease.token)
        if isinstance(outcome, Completed):
            out.append((lease.id, lease.token) in completed)
            continue
        if isinstance(outcome, Retrying):
            state = rules.state_for_run_at(outcome.run_at, now).value
            cur = conn.execute(
                "UPDATE jobs SET state = ?, run_at = ?, worker = NULL, lease_expires = NULL, "
                f"errors = json_insert(errors, '$[#]', json(?)) {_FENCE}",
                (state, outcome.run_at, _error_json(outcome.error), *fence),
            )
        elif isinstance(outcome, Failed):
            cur = conn.execute(
                f"UPDATE jobs SET state = 'failed', {_DONE}, "
                f"errors = json_insert(errors, '$[#]', json(?)) {_FENCE}",
                (now, now, _error_json(outcome.error), *fence),
            )
        else:
            cur = conn.execute(
                f"UPDATE jobs SET state = 'cancelled', key_lock = NULL, {_DONE}, "
                f"meta = json_set(meta, '$.cancel_reason', ?) {_FENCE}",
                (now, now, outcome.reason, *fence),
            )
        out.append(cur.rowcount == 1)
    return out


def rescue(conn: sqlite3.Connection, now: float) -> int:
    error = rules.lease_expired_error(0, now)
    return conn.execute(
        "UPDATE jobs SET "
        "state = CASE WHEN cancel_requested THEN 'cancelled' "
        "  WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END, "
        "errors = CASE WHEN cancel_requested THEN errors ELSE json_insert(errors, '$[#]', "
        "  json_object('attempt', attempts, 'type', ?, 'message', ?, 'traceback', '', 'at', ?)) "
        "  END, "
        "finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN ? END, "
        "expires_at = CASE WHEN cancel_requested OR attempts >= max_attempts "
        "  THEN ? + keep_for END, "
        "key_lock = CASE WHEN cancel_requested THEN NULL ELSE key_lock END, "
        "worker = NULL, lease_expires = NULL "
        "WHERE state = 'running' AND lease_expires <= ?",
        (error.type, error.message, now, now, now, now),
    ).rowcount


def purge(
    conn: sqlite3.Connection, states: Iterable[JobState], before: float | None, now: float
) -> int:
    wanted = sorted(s.value for s in set(states) & TERMINAL)
    marks = ",".join("?" * len(wanted))
    if before is None:
        sql = f"DELETE FROM jobs WHERE expires_at <= ? AND state IN ({marks})"
        return conn.execute(sql, (now, *wanted)).rowcount
    sql = f"DELETE FROM jobs WHERE finished_at < ? AND state IN ({marks})"
    return conn.execute(sql, (before, *wanted)).rowcount


def cancel(conn: sqlite3.Connection, job_id: str, reason: str, now: float) -> JobState | None:
    row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    state = _STATES.get(row[0], JobState.FAILED)  # an unknown state reads as failed
    if state in (JobState.SCHEDULED, JobState.QUEUED):
        conn.execute(
            f"UPDATE jobs SET state = 'cancelled', key_lock = NULL, {_DONE}, "
            "meta = json_set(meta, '$.cancel_reason', ?) WHERE id = ?",
            (now, now, reason, job_id),
        )
        return JobState.CANCELLED
    if state is JobState.RUNNING:
        conn.execute(
            "UPDATE jobs SET cancel_requested = 1, meta = json_set(meta, '$.cancel_reason', ?) "
            "WHERE id = ?",
            (reason, job_id),
        )
    return state


def requeue(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> list[bool]:
    return [_requeue_one(conn, job_id, now) for job_id in ids]


def _requeue_one(conn: sqlite3.Connection, job_id: str, now: float) -> bool:
    row = conn.execute("SELECT state, key FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None or row[0] not in ("failed", "cancelled"):
        return False
    if row[1] is not None:
        _release_stale_key(conn, row[1], now)
        holder = conn.execute("SELECT id FROM jobs WHERE key_lock = ?", (row[1],)).fetchone()
        if holder is not None and holder[0] != job_id:
            return False
    conn.execute(
        "UPDATE jobs SET state = 'queued', run_at = ?, attempts = 0, finished_at = NULL, "
        "expires_at = NULL, result = NULL, cancel_requested = 0, key_lock = key WHERE id = ?",
        (now, job_id),
    )
    return True


def get(conn: sqlite3.Connection, ids: Sequence[str]) -> list[Job | None]:
    found: dict[str, Job] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id IN ({marks})", chunk):
            job = row_to_job(row)
            found[job.id] = job
    return [found.get(i) for i in ids]


def counts(conn: sqlite3.Connection, queue: str | None) -> dict[str, dict[JobState, int]]:
    sql = "SELECT queue, state, count(*) FROM jobs"
    args: tuple[object, ...] = ()
    if queue is not None:
        sql += " WHERE queue = ?"
        args = (queue,)
    out: dict[str, dict[JobState, int]] = {}
    for q, state, n in conn.execute(sql + " GROUP BY queue, state", args):
        per = out.setdefault(q, {})
        st = _STATES.get(state, JobState.FAILED)  # an unknown state reads as failed
        per[st] = per.get(st, 0) + n
    return out


def query(conn: sqlite3.Connection, filter: JobFilter, after: str | None, limit: int) -> Page:
    where = ["seq > ?"]
    args: list[object] = [int(after) if after else 0]
    for column, value in (
        ("queue", filter.queue),
        ("state", filter.state.value if filter.state else None),
        ("task", filter.task),
        ("key", filter.key),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    sql = f"SELECT {COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
    rows = conn.execute(sql, (*args, limit + 1)).fetchall()
    nxt = str(rows[limit - 1][0]) if len(rows) > limit else None
    return Page([row_to_job(r) for r in rows[:limit]], nxt)


def next_due(conn: sqlite3.Connection, queues: Sequence[str], now: float) -> float | None:
    """Seconds until work may be ready in `queues`: 0 if some is queued, None if nothing waits."""
    marks = ",".join("?" * len(queues))
    ready = conn.execute(
        f"SELECT 1 FROM jobs WHERE state = 'queued' AND queue IN ({marks}) "
        "AND queue NOT IN (SELECT queue FROM paused) LIMIT 1",
        queues,
    ).fetchone()
    if ready:
        return 0.0
    (due,) = conn.execute("SELECT min(run_at) FROM jobs WHERE state = 'scheduled'").fetchone()
    return None if due is None else max(0.0, due - now)
