"""Dependencies in SQL: the `edges` table, the release (or cancellation, cascading) of
waiting children when their parents end, and `Backend.link`.

An edge ``(parent, child)`` exists only while the child waits for that parent; counting it
deletes it, so a parent that ends again changes nothing. Every statement that ends a job
returns its ``has_children`` mark and only marked jobs come here (`count_ended`), so jobs
without children cost nothing. Each function runs in its caller's transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence

from conveyor.backends import rules
from conveyor.backends.sqlite.schema import DONE
from conveyor.errors import DependencyError
from conveyor.job import TERMINAL, JobState

__all__ = ["ENDED", "IN_CHUNK", "add_edges", "count_ended", "doomed", "link", "states"]

_KNOWN = frozenset(s.value for s in JobState)
ENDED = frozenset(s.value for s in TERMINAL)
IN_CHUNK = 500  # ids per `IN (...)`: well under SQLite's parameter limit


def doomed(parents: Iterable[str], states: Mapping[str, str], policy: str) -> str | None:
    """The `cancel_reason` a child gets from the first of `parents` that ended failed or
    cancelled (`None` if none did, or the child's policy is "run")."""
    if policy == "run":
        return None
    for parent in parents:
        state = states[parent]
        if state in ENDED and state != "completed":
            return f"parent {parent} {state}"
    return None


def add_edges(conn: sqlite3.Connection, parents: Sequence[str], child: str) -> None:
    """`child` waits for `parents` (live ones): an edge each, and their ends look them up."""
    if not parents:
        return
    conn.executemany(
        "INSERT OR IGNORE INTO edges (parent, child) VALUES (?, ?)",
        [(parent, child) for parent in parents],
    )
    for start in range(0, len(parents), IN_CHUNK):
        chunk = parents[start : start + IN_CHUNK]
        conn.execute(
            "UPDATE jobs SET has_children = 1 WHERE has_children = 0 "
            f"AND id IN ({','.join('?' * len(chunk))})",
            chunk,
        )


def states(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
    """The stored state of each of `ids` the file holds (an unknown state reads as failed);
    the caller names what is missing."""
    out: dict[str, str] = {}
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start : start + IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        for job_id, state in conn.execute(
            f"SELECT id, state FROM jobs WHERE id IN ({marks})", chunk
        ):
            out[job_id] = state if state in _KNOWN else "failed"
    return out


def link(
    conn: sqlite3.Connection, child: str, parents: Sequence[str], holds: int, now: float
) -> bool:
    """`Backend.link` in the caller's transaction: `False`, nothing written, if `child` is
    not waiting; a `DependencyError` (the caller rolls back) for a parent the file doesn't
    hold. New live parents get edges and count in `waiting_for`, ended ones count at once
    (a failed one may cancel the child, cascading); then the holds; at 0 it is released."""
    row = conn.execute(
        "SELECT state, waiting_for, parents, on_parent_failure, run_at, has_children "
        "FROM jobs WHERE id = ?",
        (child,),
    ).fetchone()
    if row is None or row[0] != "waiting":
        return False
    _, waiting_for, stored, policy, run_at, has_children = row
    found = states(conn, parents)
    if len(found) < len(parents):
        missing = next(p for p in parents if p not in found)
        raise DependencyError(
            f"job {child} can't wait for {missing}, which this store doesn't hold "
            "(unknown, or already purged); nothing was changed"
        )
    have = set(stored.split(",")) if stored else set()
    new = [p for p in parents if p not in have]
    ids = ",".join(filter(None, (stored, *new)))
    reason = doomed(new, found, policy)
    if reason is not None:
        conn.execute(
            f"UPDATE jobs SET state = 'cancelled', parents = ?, key_lock = NULL, {DONE}, "
            "meta = json_set(meta, '$.cancel_reason', ?) WHERE id = ?",
            (ids, now, now, reason, child),
        )
        conn.execute("DELETE FROM edges WHERE child = ?", (child,))
        if has_children:
            count_ended(conn, [(child, "cancelled")], now)
        return True
    live = [p for p in new if found[p] not in ENDED]
    left = max(0, waiting_for + len(live) + holds)
    if left:
        add_edges(conn, live, child)
        conn.execute(
            "UPDATE jobs SET waiting_for = ?, parents = ? WHERE id = ?", (left, ids, child)
        )
        return True
    # Released with parents still live (more holds given back than were taken): their
    # edges would count nothing, and the table keeps only waiting jobs' edges.
    conn.execute("DELETE FROM edges WHERE child = ?", (child,))
    conn.execute(
        "UPDATE jobs SET state = ?, waiting_for = 0, parents = ? WHERE id = ?",
        (rules.state_for_run_at(run_at, now).value, ids, child),
    )
    return True


class _Child:
    """A waiting child as `count_ended` sees it while it counts its parents' ends."""

    __slots__ = ("has_children", "policy", "run_at", "state", "waiting_for")

    def __init__(
        self, state: str, waiting_for: int, policy: str, run_at: float, has_children: int
    ) -> None:
        self.state, self.waiting_for, self.policy = state, waiting_for, policy
        self.run_at, self.has_children = run_at, has_children


def count_ended(conn: sqlite3.Connection, ended: Sequence[tuple[str, str]], now: float) -> None:
    """Each waiting child of the jobs that just ended (id, state) counts that end, in this
    transaction: runnable once every parent has ended, or cancelled (and so, in turn, its
    own waiting children) by a parent that failed or was cancelled. Counted edges are
    deleted, so a parent that ends again changes nothing.

    Callers pass only jobs marked `has_children` (the statement that ended them returns
    it), so jobs without children cost nothing here; one indexed read of `edges` for the
    batch, one more per job cancelled here. Parents are taken last-ended first and
    children in enqueue order, as the memory store does (it decides which parent a
    `cancel_reason` names when several end together).
    """
    found = _children_of(conn, [parent for parent, _ in ended])
    if not found:
        return
    stack = [(parent, state, False) for parent, state in ended]
    children: dict[str, _Child] = {}
    changed: dict[str, _Child] = {}
    reasons: dict[str, str] = {}
    while stack:
        parent, state, cascaded = stack.pop()
        rows = _children_of(conn, [parent]).get(parent, []) if cascaded else found.pop(parent, [])
        for child_id, child_state, waiting_for, policy, run_at, grandchildren in rows:
            child = children.get(child_id)
            if child is None:
                child = _Child(child_state, waiting_for, policy, run_at, grandchildren)
                children[child_id] = child
            if child.state != "waiting":
                continue
            changed[child_id] = child
            if state == "completed" or child.policy == "run":
                if child.waiting_for > 1:
                    child.waiting_for -= 1
                    continue
                child.state = rules.state_for_run_at(child.run_at, now).value
                child.waiting_for = 0
            else:
                child.state = "cancelled"
                reasons[child_id] = f"parent {parent} {state}"
                if child.has_children:
                    stack.append((child_id, "cancelled", True))
    conn.executemany(
        "UPDATE jobs SET state = ?, waiting_for = ? WHERE id = ?",
        [(c.state, c.waiting_for, i) for i, c in changed.items() if i not in reasons],
    )
    if reasons:
        conn.executemany(
            f"UPDATE jobs SET state = 'cancelled', waiting_for = ?, key_lock = NULL, {DONE}, "
            "meta = json_set(meta, '$.cancel_reason', ?) WHERE id = ?",
            [(changed[i].waiting_for, now, now, reason, i) for i, reason in reasons.items()],
        )
        # Their edges from parents still live would count nothing: the table keeps only
        # the edges of waiting jobs.
        conn.executemany("DELETE FROM edges WHERE child = ?", [(i,) for i in reasons])


_Row = tuple[str, str, int, str, float, int]
# The waiting children of some parents, by the edges' primary key (`EXPLAIN` in the tests).
# The casts read a poison count or run_at as 0 (their defaults, as `rows.decode_job` does):
# a corrupt child is released, and never fails its parent's settle or the rescue.
_CHILDREN = (
    "SELECT e.parent, j.id, j.state, CAST(j.waiting_for AS INTEGER), j.on_parent_failure, "
    "CAST(j.run_at AS REAL), j.has_children FROM edges AS e JOIN jobs AS j ON j.id = e.child "
    "WHERE e.parent IN ({marks}) ORDER BY j.seq"
)


def _children_of(conn: sqlite3.Connection, parents: Sequence[str]) -> dict[str, list[_Row]]:
    """Take the `edges` of `parents`: for each one that has some, its children as (id,
    state, waiting_for, on_parent_failure, run_at, has_children), in enqueue order. The
    edges are deleted (each is counted once)."""
    out: dict[str, list[_Row]] = {}
    for start in range(0, len(parents), IN_CHUNK):
        chunk = parents[start : start + IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            _CHILDREN.format(marks=marks),
            chunk,
        ).fetchall()
        if not rows:
            continue
        conn.execute(f"DELETE FROM edges WHERE parent IN ({marks})", chunk)
        for parent, *child in rows:
            out.setdefault(parent, []).append(tuple(child))
    return out
