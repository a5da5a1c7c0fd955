"""The SQL of the optional capabilities (`conveyor.capabilities`): counters, locks, presence,
paused queues.

Each function runs inside the caller's `BEGIN IMMEDIATE` transaction, so each is atomic
across every process using the file. Times are the backend clock's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from conveyor.capabilities import LockInfo, Rollup, WorkerInfo

__all__ = [
    "acquire_lock",
    "beat",
    "extend_lock",
    "incr",
    "leave",
    "locks",
    "pause",
    "paused",
    "release_lock",
    "resume",
    "workers",
]

_encode = msgspec.json.Encoder().encode
_decode_worker = msgspec.json.Decoder(WorkerInfo).decode


def incr(conn: sqlite3.Connection, key: str, amount: int, ttl: float, now: float) -> int:
    (value,) = conn.execute(
        "INSERT INTO counters (key, value, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET "
        "value = CASE WHEN expires_at <= ? THEN excluded.value ELSE value + excluded.value END, "
        "expires_at = CASE WHEN expires_at <= ? THEN excluded.expires_at ELSE expires_at END "
        "RETURNING value",
        (key, amount, now + ttl, now, now),
    ).fetchone()
    # Expired windows of keys nobody increments again would stay forever: sweep a few.
    conn.execute(
        "DELETE FROM counters WHERE key IN (SELECT key FROM counters WHERE expires_at <= ? "
        "LIMIT 16)",
        (now,),
    )
    return int(value)


def acquire_lock(
    conn: sqlite3.Connection, name: str, owner: str, ttl: float, now: float
) -> int | None:
    row = conn.execute(
        "INSERT INTO locks (name, owner, token, expires_at) VALUES (?, ?, 1, ?) "
        "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, token = token + 1, "
        "expires_at = excluded.expires_at WHERE owner IS NULL OR expires_at <= ? "
        "RETURNING token",
        (name, owner, now + ttl, now),
    ).fetchone()
    return None if row is None else int(row[0])


def extend_lock(conn: sqlite3.Connection, name: str, token: int, ttl: float, now: float) -> bool:
    return (
        conn.execute(
            "UPDATE locks SET expires_at = ? WHERE name = ? AND token = ? "
            "AND owner IS NOT NULL AND expires_at > ?",
            (now + ttl, name, token, now),
        ).rowcount
        == 1
    )


def release_lock(conn: sqlite3.Connection, name: str, token: int, now: float) -> bool:
    # The row stays (owner NULL) so the next holder's token keeps growing.
    return (
        conn.execute(
            "UPDATE locks SET owner = NULL, expires_at = NULL WHERE name = ? AND token = ? "
            "AND owner IS NOT NULL AND expires_at > ?",
            (name, token, now),
        ).rowcount
        == 1
    )


def lock_expiry(conn: sqlite3.Connection, name: str) -> float | None:
    """When `name`'s holding expires; `None` if nobody holds it."""
    row = conn.execute(
        "SELECT expires_at FROM locks WHERE name = ? AND owner IS NOT NULL", (name,)
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def locks(conn: sqlite3.Connection, now: float) -> list[LockInfo]:
    rows = conn.execute(
        "SELECT name, owner, token, expires_at FROM locks "
        "WHERE owner IS NOT NULL AND expires_at > ? ORDER BY name",
        (now,),
    )
    return [LockInfo(name, owner, token, expires) for name, owner, token, expires in rows]


def beat(conn: sqlite3.Connection, worker: WorkerInfo, ttl: float, now: float) -> None:
    info = _encode(msgspec.structs.replace(worker, seen_at=now))
    conn.execute(
        "INSERT INTO presence (id, info, seen_at, expires_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET info = excluded.info, seen_at = excluded.seen_at, "
        "expires_at = excluded.expires_at",
        (worker.id, info, now, now + ttl),
    )


def workers(conn: sqlite3.Connection, now: float) -> list[WorkerInfo]:
    conn.execute("DELETE FROM presence WHERE expires_at <= ?", (now,))
    out: list[WorkerInfo] = []
    for (info,) in conn.execute("SELECT info FROM presence ORDER BY id"):
        try:
            out.append(_decode_worker(info))
        except msgspec.DecodeError:
            continue  # a row written by something else: not a worker we can show
    return out


def leave(conn: sqlite3.Connection, worker_id: str) -> None:
    conn.execute("DELETE FROM presence WHERE id = ?", (worker_id,))


def pause(conn: sqlite3.Connection, queue: str, now: float) -> bool:
    cur = conn.execute(
        "INSERT INTO paused (queue, paused_at) VALUES (?, ?) ON CONFLICT (queue) DO NOTHING",
        (queue, now),
    )
    return cur.rowcount == 1


def resume(conn: sqlite3.Connection, queue: str) -> bool:
    return conn.execute("DELETE FROM paused WHERE queue = ?", (queue,)).rowcount == 1


def paused(conn: sqlite3.Connection) -> list[str]:
    return [q for (q,) in conn.execute("SELECT queue FROM paused ORDER BY queue")]


def add_rollups(
    conn: sqlite3.Connection, rows: Sequence[Rollup], keep_for: float, now: float
) -> None:
    """`Rollups.add_rollups`, in the caller's transaction: drop expired minutes, then merge
    each row into its (minute, queue, task)'s stored sums."""
    conn.execute("DELETE FROM rollups WHERE expires_at <= ?", (now,))
    for row in rows:
        expires = row.minute + 60 + keep_for
        if expires <= now:
            continue
        key = (row.minute, row.queue, row.task)
        found = conn.execute(
            "SELECT vals, expires_at FROM rollups WHERE minute = ? AND queue = ? AND task = ?",
            key,
        ).fetchone()
        values = dict(row.values)
        if found is not None:
            for name, amount in _rollup_values.decode(found[0]).items():
                values[name] = values.get(name, 0.0) + amount
            expires = max(expires, found[1])
        conn.execute(
            "INSERT OR REPLACE INTO rollups (minute, queue, task, vals, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (*key, _rollup_json.encode(values), expires),
        )


def rollups(
    conn: sqlite3.Connection, since: float, until: float, queue: str | None, now: float
) -> list[Rollup]:
    """`Rollups.rollups`: the live rows of the minutes overlapping ``[since, until)``."""
    sql = (
        "SELECT minute, queue, task, vals FROM rollups "
        "WHERE minute >= ? AND minute < ? AND expires_at > ?"
    )
    args: list[object] = [int(since // 60) * 60, until, now]
    if queue is not None:
        sql += " AND queue = ?"
        args.append(queue)
    decode = _rollup_values.decode
    return [
        Rollup(minute=minute, queue=q, task=task, values=decode(vals))
        for minute, q, task, vals in conn.execute(sql + " ORDER BY minute, queue, task", args)
    ]


_rollup_json = msgspec.json.Encoder()
_rollup_values = msgspec.json.Decoder(dict[str, float])
