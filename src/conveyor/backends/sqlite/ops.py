"""The SQL of each contract operation, as synchronous functions on one connection.

Each write runs in one `BEGIN IMMEDIATE` transaction (taken by the caller), so every
transition is atomic and writers queue for the lock up front instead of failing on upgrade.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Iterable, Mapping, Sequence

import msgspec
from msgspec.structs import replace

from conveyor.backends import rules
from conveyor.backends.base import ClaimRequest, JobFilter, Page
from conveyor.backends.sqlite import depend, flow
from conveyor.backends.sqlite.schema import COLUMNS, DONE, INSERTED
from conveyor.errors import DependencyError
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


_ENQUEUED = tuple(f.name for f in ENQUEUED)
# Encoded below, the rest stored as they are: meta (last) and the parents' ids.
assert _ENQUEUED[-5:] == ("parents", "on_parent_failure", "feed", "waiting_for", "meta")
_plain = operator.attrgetter(*_ENQUEUED[:-5])
_flow = operator.attrgetter("on_parent_failure", "feed")
# Plain and keyed jobs (no parents, no holds) leave `waiting_for` to its column default
# (0): one parameter fewer on the hot path. Jobs with parents or holds use `_INSERT_CHILD`.
_ROW = tuple(c for c in INSERTED if c != "waiting_for")
_INSERT = f"INSERT {{verb}} INTO jobs ({', '.join(_ROW)}) VALUES ({', '.join('?' * len(_ROW))})"
_INSERT_PLAIN = _INSERT.format(verb="")
_INSERT_KEYED = _INSERT.format(verb="OR IGNORE")


def _insert_row(job: Job, now: float) -> tuple[object, ...]:
    """The `_INSERT` row of a job without parents or holds."""
    meta = _json.encode(job.meta).decode() if job.meta else "{}"
    state = "scheduled" if job.run_at > now else "queued"
    return (*_plain(job), ",".join(job.parents), *_flow(job), meta, state, job.key)


def enqueue(conn: sqlite3.Connection, jobs: Sequence[Job], now: float) -> list[str]:
    """Store `jobs` (see `Backend.enqueue`): plain ones (no key, parents or holds) with
    one executemany, the others one at a time, in call order (parents before children)."""
    for job in jobs:  # a loop, not all(...): no generator to resume per job on the hot path
        if job.key is not None or job.parents or job.waiting_for:
            return _enqueue_mixed(conn, jobs, now)
    conn.executemany(_INSERT_PLAIN, [_insert_row(job, now) for job in jobs])
    return [job.id for job in jobs]


def _enqueue_mixed(conn: sqlite3.Connection, jobs: Sequence[Job], now: float) -> list[str]:
    """`enqueue` of a call with some keyed, dependent or held jobs: each run of plain jobs
    between them still goes in with one executemany."""
    out: list[str] = []
    renamed: dict[str, str] = {}  # a duplicate's id -> its key's holder
    plain: list[Job] = []  # a run of plain jobs, inserted together
    for job in jobs:
        key = job.key
        blocked = job.parents or job.waiting_for
        if key is None and not blocked:
            plain.append(job)
            out.append(job.id)
            continue
        if plain:
            conn.executemany(_INSERT_PLAIN, [_insert_row(j, now) for j in plain])
            plain.clear()
        if key is not None and not blocked:
            _release_stale_key(conn, key, now)
            got = job.id
            if conn.execute(_INSERT_KEYED, _insert_row(job, now)).rowcount != 1:
                holder = conn.execute("SELECT id FROM jobs WHERE key_lock = ?", (key,)).fetchone()
                got = job.id if holder is None else holder[0]
        else:
            got = _enqueue_child(conn, job, renamed, now)
        if got != job.id:
            renamed[job.id] = got
        out.append(got)
    if plain:
        conn.executemany(_INSERT_PLAIN, [_insert_row(j, now) for j in plain])
    return out


# A job with parents or holds is written with the columns the store would otherwise set
# later: its state, count and key as the parents' states make them, and, stored cancelled,
# its end.
_INSERT_CHILD = (
    f"INSERT OR IGNORE INTO jobs ({', '.join(INSERTED)}, finished_at, expires_at) "
    f"VALUES ({', '.join('?' * (len(INSERTED) + 2))})"
)


def _child_row(
    job: Job, state: str, waiting_for: int, key_lock: str | None, ended: float | None
) -> tuple[object, ...]:
    meta = _json.encode(job.meta).decode() if job.meta else "{}"
    expires = None if ended is None else ended + job.keep_for
    return (
        *_plain(job), ",".join(job.parents), job.on_parent_failure, job.feed, waiting_for,
        meta, state, key_lock, ended, expires,
    )  # fmt: skip


def _enqueue_child(
    conn: sqlite3.Connection, job: Job, renamed: Mapping[str, str], now: float
) -> str:
    """Store a job with parents or holds (see `Backend.enqueue`): waiting, with one `edges`
    row per parent that has not ended, `waiting_for` counting those and the holds; ready
    (no holds, every parent ended) or cancelled (a parent failed) at once otherwise. The id
    that holds its place."""
    if renamed and any(p in renamed for p in job.parents):
        job = replace(job, parents=tuple(renamed.get(p, p) for p in job.parents))
    states = depend.states(conn, job.parents)
    if len(states) < len(job.parents):
        missing = next(p for p in job.parents if p not in states)
        raise DependencyError(
            f"job {job.id} depends on {missing}, which this store doesn't hold "
            "(unknown, or already purged); nothing was written"
        )
    if job.key is not None:
        _release_stale_key(conn, job.key, now)
        holder = conn.execute("SELECT id FROM jobs WHERE key_lock = ?", (job.key,)).fetchone()
        if holder is not None:
            return str(holder[0])
    waiting = [p for p in job.parents if states[p] not in depend.ENDED]
    reason = depend.doomed(job.parents, states, job.on_parent_failure)
    if reason is not None:  # stored ended: it holds no key and waits for nothing
        job = replace(job, meta={**job.meta, "cancel_reason": reason})
        row = _child_row(job, "cancelled", job.waiting_for, None, now)
    elif waiting or job.waiting_for:
        row = _child_row(job, "waiting", len(waiting) + job.waiting_for, job.key, None)
    else:
        row = _child_row(job, rules.state_for_run_at(job.run_at, now).value, 0, job.key, None)
    if conn.execute(_INSERT_CHILD, row).rowcount != 1:
        return job.id  # stored already (a retried call): its edges were written then
    if reason is None:
        depend.add_edges(conn, waiting, job.id)
    return job.id


def promote(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute(
        "UPDATE jobs SET state = 'queued' WHERE state = 'scheduled' AND run_at <= ?", (now,)
    ).rowcount


_CLAIM_SET = (
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, token = token + 1, "
    "lease_expires = ?, worker = ?, started_at = ? "
)
# The plain claim (jobs without a lane, on their own partial index `jobs_ready`).
_CLAIM = (
    f"{_CLAIM_SET}WHERE seq IN (SELECT seq FROM jobs WHERE state = 'queued' AND lane = '' "
    f"AND queue = ? ORDER BY priority DESC, run_at, seq LIMIT ?) RETURNING {COLUMNS}"
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
        params = (expires, request.worker, now)
        # Lanes: the turns, or None when no lane of the queue is eligible (one indexed look).
        rows = flow.claim(conn, queue, want, _CLAIM, _CLAIM_SET, params, now)
        if rows is None:
            rows = conn.execute(_CLAIM, (*params, queue, want)).fetchall()
            # RETURNING gives no order guarantee; restore the claim order.
            rows.sort(key=lambda r: (-r[_PRIORITY], r[_RUN_AT], r[0]))
        leases.extend(Lease(row_to_job(r), r[-1], expires) for r in rows)
    return leases


def extend(
    conn: sqlite3.Connection, leases: Sequence[Lease], lease_for: float, now: float
) -> list[Lease | None]:
    out: list[Lease | None] = []
    ended: list[tuple[str, str]] = []
    left: list[flow.Exit] = []  # lane jobs with a circuit that left running
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
        row = conn.execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?, expires_at = ? + keep_for, "
            "worker = NULL, lease_expires = NULL, key_lock = NULL "
            "WHERE id = ? AND state = 'running' AND token = ? AND cancel_requested = 1 "
            "RETURNING has_children",
            (now, now, lease.id, lease.token),
        ).fetchone()
        if row is not None and row[0]:
            ended.append((lease.id, "cancelled"))
        if row is not None and lease.job.circuit:
            left.append((lease.job.queue, lease.job.lane, lease.id, None))
        out.append(None)
    if left:
        flow.exits(conn, left, now)
    if ended:
        depend.count_ended(conn, ended, now)
    return out


def _error_json(error: AttemptError) -> str:
    return _json.encode(error).decode()


_FENCE = "WHERE id = ? AND state = 'running' AND token = ?"


def release(conn: sqlite3.Connection, leases: Sequence[Lease], now: float) -> list[bool]:
    """Unstarted leases back to queued, the attempt not counted (cancelled if requested)."""
    out: list[bool] = []
    ended: list[tuple[str, str]] = []
    left: list[flow.Exit] = []  # lane jobs with a circuit: a probe lets the next one probe
    for lease in leases:
        fence = (lease.id, lease.token)
        took = conn.execute(
            "UPDATE jobs SET state = 'queued', attempts = max(attempts - 1, 0), worker = NULL, "
            f"lease_expires = NULL, started_at = NULL {_FENCE} AND cancel_requested = 0",
            fence,
        ).rowcount
        if not took:
            row = conn.execute(
                f"UPDATE jobs SET state = 'cancelled', {DONE}, key_lock = NULL "
                f"{_FENCE} AND cancel_requested = 1 RETURNING has_children",
                (now, now, *fence),
            ).fetchone()
            took = row is not None
            if took and row[0]:
                ended.append((lease.id, "cancelled"))
        if took and lease.job.circuit:
            left.append((lease.job.queue, lease.job.lane, lease.id, None))
        out.append(bool(took))
    if left:
        flow.exits(conn, left, now)
    if ended:
        depend.count_ended(conn, ended, now)
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
) -> dict[tuple[str, int], int]:
    """Complete many jobs in one statement per chunk, fenced per row; the (id, token) pairs
    that took, each with its `has_children` mark."""
    took: dict[tuple[str, int], int] = {}
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
            f"AND jobs.token = v.column2 AND jobs.state = 'running' "
            "RETURNING jobs.id, jobs.token, jobs.has_children",
            (now, now, *args),
        ).fetchall()
        took.update({(i, token): children for i, token, children in rows})
    return took


def settle(
    conn: sqlite3.Connection, outcomes: Sequence[tuple[Lease, Outcome]], now: float
) -> list[bool]:
    done = [(lease, o) for lease, o in outcomes if isinstance(o, Completed)]
    completed = _complete_many(conn, done, now) if done else {}
    out: list[bool] = []
    ended: list[tuple[str, str]] = []  # parents that ended, in outcome order
    left: list[flow.Exit] = []  # lane jobs with a circuit: it counts their outcomes
    for lease, outcome in outcomes:
        fence = (lease.id, lease.token)
        if isinstance(outcome, Completed):
            children = completed.get(fence)
            out.append(children is not None)
            if children:
                ended.append((lease.id, "completed"))
            if children is not None and lease.job.circuit:
                left.append((lease.job.queue, lease.job.lane, lease.id, "success"))
            continue
        if isinstance(outcome, Retrying):
            state = rules.state_for_run_at(outcome.run_at, now).value
            cur = conn.execute(
                "UPDATE jobs SET state = ?, run_at = ?, worker = NULL, lease_expires = NULL, "
                f"errors = json_insert(errors, '$[#]', json(?)) {_FENCE}",
                (state, outcome.run_at, _error_json(outcome.error), *fence),
            )
            out.append(cur.rowcount == 1)
            if cur.rowcount == 1 and lease.job.circuit:
                left.append((lease.job.queue, lease.job.lane, lease.id, "failure"))
            continue
        if isinstance(outcome, Failed):
            state = "failed"
            cur = conn.execute(
                f"UPDATE jobs SET state = 'failed', {DONE}, "
                f"errors = json_insert(errors, '$[#]', json(?)) {_FENCE} RETURNING has_children",
                (now, now, _error_json(outcome.error), *fence),
            )
        else:
            state = "cancelled"
            cur = conn.execute(
                f"UPDATE jobs SET state = 'cancelled', key_lock = NULL, {DONE}, "
                f"meta = json_set(meta, '$.cancel_reason', ?) {_FENCE} RETURNING has_children",
                (now, now, outcome.reason, *fence),
            )
        row = cur.fetchone()
        out.append(row is not None)
        if row is not None and row[0]:
            ended.append((lease.id, state))
        if row is not None and lease.job.circuit:
            result = "failure" if state == "failed" else None
            left.append((lease.job.queue, lease.job.lane, lease.id, result))
    if left:
        flow.exits(conn, left, now)
    if ended:
        depend.count_ended(conn, ended, now)
    return out


def rescue(conn: sqlite3.Connection, now: float) -> int:
    error = rules.lease_expired_error(0, now)
    rows = conn.execute(
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
        "WHERE state = 'running' AND lease_expires <= ? "
        "RETURNING seq, id, state, has_children, queue, lane, circuit",
        (error.type, error.message, now, now, now, now),
    ).fetchall()
    left: list[flow.Exit] = [
        (q, lane, i, None if s == "cancelled" else "failure")
        for _, i, s, _, q, lane, circuit in sorted(rows)
        if circuit
    ]
    if left:  # a rescue counts as a failure for its lane's circuit
        flow.exits(conn, left, now)
    ended = sorted((seq, i, s) for seq, i, s, children, *_ in rows if children and s != "queued")
    if ended:  # in enqueue order (RETURNING gives none)
        depend.count_ended(conn, [(i, state) for _, i, state in ended], now)
    return len(rows)


def purge(
    conn: sqlite3.Connection, states: Iterable[JobState], before: float | None, now: float
) -> int:
    flow.forget_idle(conn, now)  # lanes with nothing left to keep
    wanted = sorted(s.value for s in set(states) & TERMINAL)
    marks = ",".join("?" * len(wanted))
    if before is None:
        sql = f"DELETE FROM jobs WHERE expires_at <= ? AND state IN ({marks})"
        return conn.execute(sql, (now, *wanted)).rowcount
    sql = f"DELETE FROM jobs WHERE finished_at < ? AND state IN ({marks})"
    return conn.execute(sql, (before, *wanted)).rowcount


def delete(conn: sqlite3.Connection, ids: Sequence[str]) -> list[bool]:
    """`Backend.delete`: ended jobs by id (the row's triggers keep lanes and counts right)."""
    ended = tuple(s.value for s in TERMINAL)
    sql = "DELETE FROM jobs WHERE id = ? AND state IN (?, ?, ?)"
    return [conn.execute(sql, (job_id, *ended)).rowcount == 1 for job_id in ids]


def cancel(conn: sqlite3.Connection, job_id: str, reason: str, now: float) -> JobState | None:
    row = conn.execute("SELECT state, has_children FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    state = _STATES.get(row[0], JobState.FAILED)  # an unknown state reads as failed
    if state in (JobState.WAITING, JobState.SCHEDULED, JobState.QUEUED):
        conn.execute(
            f"UPDATE jobs SET state = 'cancelled', key_lock = NULL, {DONE}, "
            "meta = json_set(meta, '$.cancel_reason', ?) WHERE id = ?",
            (now, now, reason, job_id),
        )
        if state is JobState.WAITING:  # the edges of its parents would count nothing
            conn.execute("DELETE FROM edges WHERE child = ?", (job_id,))
        if row[1]:
            depend.count_ended(conn, [(job_id, "cancelled")], now)
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
        ("lane", filter.lane),
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
        f"SELECT 1 FROM jobs WHERE state = 'queued' AND lane = '' AND queue IN ({marks}) "
        "AND queue NOT IN (SELECT queue FROM paused) LIMIT 1",
        queues,
    ).fetchone()
    if ready:
        return 0.0
    lane = flow.next_wake(conn, queues, now)  # a lane with ready jobs: 0, or when it is due
    if lane == 0.0:
        return 0.0
    (due,) = conn.execute("SELECT min(run_at) FROM jobs WHERE state = 'scheduled'").fetchone()
    due = None if due is None else max(0.0, due - now)
    return lane if due is None else due if lane is None else min(due, lane)
